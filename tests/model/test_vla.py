"""AR1 model: SFT losses train, the expert reads (only) the right part of the backbone's cache,
knowledge insulation holds."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ar1_fixtures as F
from ar1_jax.action import flow
from ar1_jax.data import sft_batch
from ar1_jax.model import vla
from ar1_jax.model.expert import expert_velocity


@pytest.fixture(scope="module")
def setup():
    tok = F.tiny_tokenizer()
    cfg, params = F.tiny_ar1(int(np.random.default_rng().integers(100)))
    F.check_layout(cfg, tok)
    return cfg, params, tok


def _batch(cfg, tok, rng, n=2, controls=None):
    examples = []
    for _ in range(n):
        future = rng.integers(0, 3000, 128).tolist()
        ids, seg, pv, grid = F.scene_inputs(cfg, tok, rng, cot="Stop to yield to the pedestrian crossing ahead.",
                                            future_bins=future)
        examples.append(dict(input_ids=ids, segments=seg.kind, pixel_values=pv, image_grid_thw=grid,
                             controls=(rng.standard_normal((64, 2)) if controls is None else controls
                                       ).astype(np.float32)))
    return sft_batch.build_sft_batch(cfg, examples)


def test_batch_masks_and_positions(setup):
    cfg, _, tok = setup
    b = _batch(cfg, tok, np.random.default_rng())
    ids = b["input_ids"]
    # Reasoning CE covers the CoT text, <|cot_end|> and <|traj_future_start|>; trajectory CE the 128 bins.
    assert (ids[0][1:][b["reasoning_mask"][0][:-1]] == cfg.tokens.traj_future_start_id).sum() == 1
    traj_targets = b["targets"][b["traj_mask"]]
    in_range = (traj_targets >= cfg.tokens.traj_token_offset) & (traj_targets < cfg.tokens.traj_token_offset + 3000)
    assert in_range.sum() == 2 * 128
    fs = b["future_start_slot"]
    assert np.all(ids[np.arange(2), fs] == cfg.tokens.traj_future_start_id)
    assert np.all(b["action_position"] == b["positions"][0, np.arange(2), fs] + 1)


def test_per_scene_images_give_the_flat_forms_loss_and_gradients(setup):
    """build_sft_batch gives a fixed camera rig's images per scene ([B, P, D], one scene's layout; the
    tower vmapped over scenes); the HF-style flat form (all patches, one layout of every image) must
    give the same loss terms and gradients."""
    from ar1_jax.model import vision

    cfg, params, tok = setup
    rng = np.random.default_rng()
    per_scene = _batch(cfg, tok, rng, n=3)
    pv = per_scene["media"]["image"]["pixel_values"]
    assert pv.ndim == 3 and pv.shape[0] == 3
    images = cfg.scene.num_cameras * cfg.scene.num_frames
    assert per_scene["media"]["image"]["layout"]["rope_hw"].shape[0] == pv.shape[1]  # one scene's patches
    grid_one = np.asarray([[1, cfg.scene.image_height // cfg.model.vision.patch_size,
                            cfg.scene.image_width // cfg.model.vision.patch_size]] * images)
    flat = dict(per_scene, media={"image": {"pixel_values": pv.reshape(-1, pv.shape[-1]),
                                            "layout": vision.vision_layout(cfg.model.vision, np.tile(grid_one, (3, 1)))}})
    key = jax.random.key(int(rng.integers(1000)))
    grad = jax.jit(jax.value_and_grad(lambda p, b: vla.sft_loss(p, cfg, b, key), has_aux=True))
    (loss_a, terms_a), g_a = grad(params, per_scene)
    (loss_b, terms_b), g_b = grad(params, flat)
    for k in terms_a:
        np.testing.assert_allclose(terms_a[k], terms_b[k], rtol=1e-5, err_msg=k)
    for a, b in zip(jax.tree.leaves(g_a), jax.tree.leaves(g_b)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_sft_training_reduces_every_loss_term(setup):
    cfg, params, tok = setup
    rng = np.random.default_rng()
    # One smooth control profile for the batch: learnable in a few steps (random per-scene targets
    # would need the expert to memorise scenes through attention).
    profile = np.stack([np.linspace(-1.0, 1.5, 64), 0.8 * np.sin(np.linspace(0, 3, 64))], -1)
    batch = _batch(cfg, tok, rng, controls=profile)
    opt = optax.adam(5e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state, key):
        (loss, metrics), grads = jax.value_and_grad(vla.sft_loss, has_aux=True)(params, cfg, batch, key)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, metrics, grads

    eval_keys = jax.random.split(jax.random.key(123), 8)  # fixed (t, eps) draws for a fair comparison

    @jax.jit
    def evaluate(params):
        terms = jax.vmap(lambda k: vla.sft_loss(params, cfg, batch, k)[1])(eval_keys)
        return {k: jnp.mean(v) for k, v in terms.items()}

    before = {k: float(v) for k, v in evaluate(params).items()}
    key = jax.random.key(0)
    for i in range(20):
        params, state, metrics, grads = step(params, state, jax.random.fold_in(key, i))
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    after = {k: float(v) for k, v in evaluate(params).items()}
    assert after["ce_reasoning"] < 0.5 * before["ce_reasoning"], (before, after)
    assert after["ce_trajectory"] < before["ce_trajectory"], (before, after)
    assert after["flow"] < 0.9 * before["flow"], (before, after)


def test_flow_loss_does_not_train_the_backbone(setup):
    cfg, params, tok = setup
    batch = _batch(cfg, tok, np.random.default_rng())

    def flow_only(p):
        return vla.sft_loss(p, cfg, batch, jax.random.key(1))[1]["flow"]

    grads = jax.jit(jax.grad(flow_only))(params)  # jitted: op by op, the backward pass took ~15 s
    backbone = jax.tree.leaves({"vision": grads["vision"], "text": grads["text"]})
    assert all(float(jnp.abs(g).max()) == 0.0 for g in backbone)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads["expert"])) > 0


def _denoise(cfg, params, batch, noise, steps=3):
    logits, cache = vla.backbone_with_kv(params, cfg, batch["input_ids"], batch["positions"], batch["kv_valid"],
                                         batch["media"])
    valid = vla.prefix_mask(batch["kv_valid"], batch["future_start_slot"])
    fn = lambda x, t: expert_velocity(params["expert"], cfg, x, t, cache.k, cache.v, valid, batch["action_position"])
    return np.asarray(flow.euler_sample(fn, noise.shape, None, steps, noise=noise))


def test_expert_reads_images_but_not_tokens_after_the_prefix(setup):
    cfg, params, tok = setup
    rng = np.random.default_rng()
    batch = _batch(cfg, tok, rng, n=1)
    noise = rng.standard_normal((1, 64, 2)).astype(np.float32)
    base = _denoise(cfg, params, batch, noise)

    other_image = dict(batch, media={"image": dict(batch["media"]["image"])})
    pv = other_image["media"]["image"]["pixel_values"].copy()
    pv[0, : pv.shape[1] // 16] = rng.standard_normal(pv[0, : pv.shape[1] // 16].shape)  # first camera frame
    other_image["media"]["image"]["pixel_values"] = pv
    assert np.abs(_denoise(cfg, params, other_image, noise) - base).max() > 1e-4

    # Tokens after <|traj_future_start|> (the discrete future) are outside the expert's prefix.
    later = dict(batch, input_ids=batch["input_ids"].copy())
    fs = int(batch["future_start_slot"][0])
    later["input_ids"][0, fs + 1:fs + 40] = rng.integers(0, 500, 39)
    np.testing.assert_allclose(_denoise(cfg, params, later, noise), base, rtol=1e-5, atol=1e-5)

    # A padded-out slot is ignored whatever token it holds.
    padded = sft_batch.build_sft_batch(cfg, [dict(input_ids=batch["input_ids"][0][batch["kv_valid"][0]],
                                            segments=np.zeros(int(batch["kv_valid"][0].sum()), np.int32) + 5,
                                            pixel_values=batch["media"]["image"]["pixel_values"][0],
                                            image_grid_thw=np.asarray([[1, 4, 6]] * 16),
                                            controls=np.zeros((64, 2), np.float32))],
                                 length=batch["input_ids"].shape[1] + 8)
    out_a = _denoise(cfg, params, padded, noise)
    padded["input_ids"][0, -8:] = rng.integers(0, 500, 8)
    np.testing.assert_allclose(_denoise(cfg, params, padded, noise), out_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out_a, base, rtol=1e-4, atol=1e-4)  # padding itself changes nothing


def test_prefix_mask_element_by_element():
    rng = np.random.default_rng()
    valid = rng.random((3, 12)) > 0.2
    fs = np.array([0, 5, 11], np.int32)
    got = np.asarray(vla.prefix_mask(jnp.asarray(valid), jnp.asarray(fs)))
    for b in range(3):
        for s in range(12):
            assert got[b, s] == (valid[b, s] and s <= fs[b])
