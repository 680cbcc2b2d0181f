"""Analytic SFT FLOPs against what JAX and XLA compute: the exact matmul count of the traced program
(forward, and forward + backward under every frozen set), XLA's cost analysis, peak FLOP/s and MFU."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.extend import core as jcore

import ar1_fixtures as F
from ar1_jax.config import get_config
from ar1_jax.data import sft_batch
from ar1_jax.model import vision, vla
from ar1_jax.train import flops

# ar1_tiny with matmul-dominated sizes (head dim 64, wider MLPs) and one layer / block: XLA's cost
# analysis counts a scanned layer stack's body once, so the comparison with it needs depth 1.
WIDE_ONE_LAYER = [
    "model.text.hidden_size=256", "model.text.head_dim=64", "model.text.mrope_section=8,12,12",
    "model.text.intermediate_size=1024", "model.text.num_layers=1", "model.vision.out_hidden_size=256",
    "model.vision.hidden_size=128", "model.vision.intermediate_size=512", "model.vision.depth=1",
    "model.vision.deepstack_visual_indexes=0", "expert.hidden_size=128", "expert.intermediate_size=512",
    "expert.action_in_hidden=128",
]


def dot_flops(jaxpr) -> float:
    """2 x multiply-adds of every `dot_general` in a jaxpr, scan bodies times their length, the
    costliest branch of a `cond`."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
            continue
        subs = [dot_flops(x.jaxpr if isinstance(x, jcore.ClosedJaxpr) else x)
                for v in eqn.params.values() for x in (v if isinstance(v, (tuple, list)) else (v,))
                if isinstance(x, (jcore.ClosedJaxpr, jcore.Jaxpr))]
        if subs:
            inner = max(subs) if eqn.primitive.name == "cond" else sum(subs)
            total += inner * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
    return total


def abstract_params(cfg):
    return nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: vla.AR1(cfg, rngs=nnx.Rngs(0))), nnx.Param))


def real_batch(cfg, n=2):
    tok = F.tiny_tokenizer()
    F.check_layout(cfg, tok)
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(n):
        ids, seg, pv, grid = F.scene_inputs(cfg, tok, rng, cot="Stop to yield to the pedestrian crossing ahead.",
                                            future_bins=rng.integers(0, 3000, 128).tolist())
        examples.append(dict(input_ids=ids, segments=seg.kind, pixel_values=pv, image_grid_thw=grid,
                             controls=rng.standard_normal((cfg.action.horizon, 2)).astype(np.float32)))
    return sft_batch.build_sft_batch(cfg, examples)


def shape_of(batch):
    b, t = batch["input_ids"].shape
    return dict(batch_size=b, seq_len=t, num_patches=int(np.prod(batch["media"]["image"]["pixel_values"].shape[:-1])))


def step_fn(cfg, frozen):
    """Loss and gradients with the frozen modules stop-gradiented (as the training loop does)."""
    def fn(params, batch, key):
        def loss(p):
            p = {m: jax.lax.stop_gradient(v) if m in frozen else v for m, v in p.items()}
            return vla.sft_loss(p, cfg, batch, key)[0]
        return jax.value_and_grad(loss)(params)
    return fn


@pytest.fixture(scope="module")
def tiny():
    cfg = get_config("ar1_tiny")
    return cfg, abstract_params(cfg), real_batch(cfg)


def test_forward_equals_the_traced_matmul_count(tiny):
    cfg, params, batch = tiny
    jaxpr = jax.make_jaxpr(lambda p, b, k: vla.sft_loss(p, cfg, b, k)[0])(params, batch, jax.random.key(0))
    ours = flops.sft_forward_flops(cfg, **shape_of(batch))
    assert set(ours) == {"vision", "text", "lm_head", "expert", "total"}
    assert ours["total"] == pytest.approx(sum(v for k, v in ours.items() if k != "total"))
    assert ours["total"] == pytest.approx(dot_flops(jaxpr.jaxpr), rel=1e-12)


@pytest.mark.parametrize("frozen,overrides", [
    ((), ()), (("vision",), ()), (("text",), ()), (("expert",), ()), (("vision", "text"), ()),
    (("text", "expert"), ()), (("expert",), ("loss.stop_gradient_kv=false",)),
    (("vision", "text", "expert"), ("loss.stop_gradient_kv=false",)), ((), ("loss.flow_weight=0",)),
], ids=str)
def test_step_equals_the_traced_matmul_count(tiny, frozen, overrides):
    cfg, params, batch = tiny
    cfg = get_config("ar1_tiny", list(overrides))
    jaxpr = jax.make_jaxpr(step_fn(cfg, frozen))(params, batch, jax.random.key(0))
    ours = flops.sft_step_flops(cfg, **shape_of(batch), frozen=frozen)
    assert ours["total"] == pytest.approx(dot_flops(jaxpr.jaxpr), rel=1e-12)


def test_qwen2_5_family_and_window_segments():
    """ar1_0p5b (Qwen2.5-VL ViT, tied embeddings, q/k/v biases), traced abstractly. The window
    blocks sit behind a `lax.cond` whose costlier branch is the full one, so the exact check makes
    every block full; the window segments are checked against the model's own layout."""
    # remat off: MFU counts model FLOPs, not the forward recomputed in the backward pass.
    cfg = get_config("ar1_0p5b", ["model.vision.fullatt_block_indexes=" + ",".join(map(str, range(12))),
                                  "model.text.remat=none", "model.vision.remat=none"])
    b, t, frames = 2, 256, 2
    h, w = flops.default_frame_hw(cfg)
    grid = np.array([[1, h, w]] * (b * frames))
    n = b * frames * h * w
    S = jax.ShapeDtypeStruct
    batch = dict(input_ids=S((b, t), jnp.int32), targets=S((b, t), jnp.int32), positions=S((3, b, t), jnp.int32),
                 kv_valid=S((b, t), bool), reasoning_mask=S((b, t), bool), traj_mask=S((b, t), bool),
                 future_start_slot=S((b,), jnp.int32), action_position=S((b,), jnp.int32),
                 controls=S((b, cfg.action.horizon, 2), jnp.float32), controls_valid=S((b,), bool),
                 media={"image": {"pixel_values": S((n, cfg.model.vision.patch_dim), jnp.float32),
                                  "layout": vision.vision_layout(cfg.model.vision, grid)}})
    jaxpr = jax.make_jaxpr(step_fn(cfg, ()))(abstract_params(cfg), batch, jax.random.key(0))
    ours = flops.sft_step_flops(cfg, batch_size=b, seq_len=t, num_patches=n)
    assert ours["total"] == pytest.approx(dot_flops(jaxpr.jaxpr), rel=1e-12)

    v = get_config("ar1_0p5b").model.vision  # windows of 4x4 merged units over 20x32-patch frames
    layout = vision.vision_layout(v, grid)
    assert flops._vision_segments(v, b * frames, (h, w)) == [
        (len(v.fullatt_block_indexes), *layout["full_gather"].shape),
        (v.depth - len(v.fullatt_block_indexes), *layout["window_gather"].shape)]


def test_close_to_xla_cost_analysis():
    """XLA counts every matmul we count plus the elementwise work (norms, softmax, activations,
    losses, masks; transcendentals apart), so ours is a little below: about 1.2% here, where
    matmuls dominate. 0.95 leaves room for XLA versions counting elementwise ops differently."""
    cfg = get_config("ar1_tiny", WIDE_ONE_LAYER)
    batch = real_batch(cfg)
    params = abstract_params(cfg)
    compiled = jax.jit(lambda p, b, k: vla.sft_loss(p, cfg, b, k)[0]).lower(params, batch, jax.random.key(0)).compile()
    cost = compiled.cost_analysis()
    xla = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
    ours = flops.sft_forward_flops(cfg, **shape_of(batch))["total"]
    assert 0.95 < ours / xla <= 1.0, (ours, xla, ours / xla)


def test_scaling_with_batch_and_patches():
    cfg = get_config("ar1_tiny")
    one = flops.sft_forward_flops(cfg, batch_size=2, seq_len=448, num_patches=768)
    two = flops.sft_forward_flops(cfg, batch_size=4, seq_len=448, num_patches=1536)
    for part in ("vision", "text", "lm_head", "expert", "total"):
        assert two[part] == pytest.approx(2 * one[part], rel=1e-12), part
    longer = flops.sft_forward_flops(cfg, batch_size=2, seq_len=896, num_patches=768)
    assert 2 * one["text"] < longer["text"] < 4 * one["text"]  # projections linear, attention quadratic
    assert longer["vision"] == one["vision"]
    assert flops.sft_forward_flops(cfg, batch_size=2, seq_len=448, num_patches=0)["vision"] == 0
    with pytest.raises(ValueError, match="num_patches=100"):
        flops.sft_forward_flops(cfg, batch_size=2, seq_len=448, num_patches=100)


def test_frozen_parts_reduce_the_step_as_documented():
    cfg = get_config("ar1_tiny")
    kw = dict(batch_size=2, seq_len=448, num_patches=768)
    fwd = flops.sft_forward_flops(cfg, **kw)
    step = lambda *frozen: flops.sft_step_flops(cfg, **kw, frozen=frozen)
    full = step()
    assert 2.9 * fwd["total"] < full["total"] < 3 * fwd["total"]  # ~3x; first-layer input grads skipped
    assert step("vision", "text", "expert")["total"] == fwd["total"]
    assert step("vision")["vision"] == fwd["vision"] and step("vision")["text"] == full["text"]
    assert step("expert")["expert"] == fwd["expert"]  # stop-gradient KV: nothing flows through it
    # A frozen text with a trained vision passes gradients through (input gradients, attention).
    assert fwd["text"] < step("text")["text"] < full["text"]
    assert step("vision", "text")["text"] == fwd["text"] and step("vision", "text")["lm_head"] == fwd["lm_head"]
    assert full["total"] > step("expert")["total"] > step("vision", "expert")["total"]
    # Dotted entries freeze part of a module, which still needs its whole backward.
    assert step("text.embed", "vision.merger")["total"] == full["total"]
    with pytest.raises(ValueError, match="decoder"):
        step("decoder")


def test_peak_flops_and_mfu():
    assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert flops.peak_flops("NVIDIA H200") == 989e12
    assert flops.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert flops.peak_flops("NVIDIA B200") == 2.25e15
    assert flops.peak_flops("TPU v4") == 275e12
    assert flops.peak_flops("TPU v5 lite") == 197e12
    assert flops.peak_flops("TPU v5") == 459e12
    assert flops.peak_flops("TPU v6 lite") == 918e12
    assert flops.peak_flops(jax.devices("cpu")[0]) is None
    assert flops.peak_flops(jax.devices("cpu")[0], 100e12) == 100e12
    assert flops.peak_flops("some new chip") is None
    assert flops.mfu(989e12, 1.0, 2, 989e12) == pytest.approx(0.5)
    assert flops.mfu(1e12, 1.0, 1, None) is None and flops.mfu(1e12, 0.0, 1, 1e12) is None
