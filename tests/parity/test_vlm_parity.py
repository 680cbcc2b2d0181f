"""Our Qwen2.5-VL / Qwen3-VL against transformers: logits, greedy generation, import/export.

Tiny random HF models (tests/parity/hf_reference.py) are saved with `save_pretrained`, loaded with
`hf.load`, and compared in float32 on text-only, one image, several non-square images, a
two-frame image, real video inputs and a left-padded batch.
"""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import hf_reference as H  # noqa: E402  (tests/parity is on sys.path via conftest)

from ar1_jax.convert import hf  # noqa: E402
from ar1_jax.convert.safetensors_io import CheckpointReader, write_checkpoint  # noqa: E402

pytestmark = pytest.mark.parity

FIXTURES = {"qwen2_5_vl": "hf_qwen25", "qwen3_vl": "hf_qwen3"}


@pytest.fixture(scope="module", params=sorted(FIXTURES))
def pair(request):
    torch_model, ckpt = request.getfixturevalue(FIXTURES[request.param])
    return request.param, torch_model, ckpt, hf.load(ckpt, dtype=jnp.float32)


def _ours(model, inputs):
    return np.asarray(model(inputs["input_ids"], pixel_values=inputs["pixel_values"],
                            image_grid_thw=inputs["image_grid_thw"], attention_mask=inputs["attention_mask"]))


def _assert_logits_close(ours, ref, mask):
    valid = mask.astype(bool)
    diff = np.abs(ours - ref)[valid].max()
    scale = np.abs(ref[valid]).max()
    assert diff <= 1e-4 * scale, f"max |diff| {diff:.3g} > 1e-4 * max |logit| {scale:.3g}"


@pytest.mark.parametrize("kind", H.KINDS)
def test_logits_match_transformers(pair, kind):
    family, torch_model, _, model = pair
    inputs = H.make_inputs(family, torch_model.config, kind, seed=np.random.default_rng().integers(1 << 20))
    _assert_logits_close(_ours(model, inputs), H.hf_logits(torch_model, inputs), inputs["attention_mask"])


@pytest.mark.parametrize("kind", H.KINDS)
def test_greedy_generation_identical(pair, kind):
    family, torch_model, _, model = pair
    inputs = H.make_inputs(family, torch_model.config, kind, seed=np.random.default_rng().integers(1 << 20))
    want = H.hf_greedy(torch_model, inputs, max_new_tokens=16)
    got = model.generate(inputs["input_ids"], pixel_values=inputs["pixel_values"],
                         image_grid_thw=inputs["image_grid_thw"], attention_mask=inputs["attention_mask"],
                         max_new_tokens=16)
    np.testing.assert_array_equal(got, want)


def test_real_video_inputs(pair):
    """`pixel_values_videos` + `video_grid_thw` (+ seconds per grid for Qwen2.5's temporal positions)."""
    family, torch_model, _, model = pair
    cfg = torch_model.config
    rng = np.random.default_rng()
    grid = np.array([[2, 4, 6]])
    pv = rng.standard_normal((int(grid.prod()), H._patch_dim(cfg))).astype(np.float32)
    frame_tokens = int(grid[0, 1] * grid[0, 2]) // 4
    if family == "qwen3_vl":  # its processor writes each frame as its own block after a timestamp
        body = []
        for f in range(grid[0, 0]):
            body += [20 + f, cfg.vision_start_token_id] + [cfg.video_token_id] * frame_tokens + [cfg.vision_end_token_id]
    else:
        body = [cfg.vision_start_token_id] + [cfg.video_token_id] * frame_tokens * int(grid[0, 0]) + \
               [cfg.vision_end_token_id]
    ids = np.array([[7, 8] + body + [9, 10, 11]])
    mm = (ids == cfg.video_token_id).astype(np.int64) * 2
    kwargs = dict(pixel_values_videos=pv, video_grid_thw=grid)
    extra = {}
    if family == "qwen2_5_vl":
        extra = dict(second_per_grid_ts=np.array([1.5]))
    H._reset_rope_state(torch_model)
    with torch.no_grad():
        ref = torch_model(input_ids=torch.tensor(ids), mm_token_type_ids=torch.tensor(mm),
                          **{k: torch.tensor(v) for k, v in {**kwargs, **extra}.items()}).logits.numpy()
    ours = np.asarray(model(ids, **kwargs, **extra))
    _assert_logits_close(ours, ref, np.ones_like(ids))


@pytest.mark.parametrize("fixture", ["hf_qwen25_tied", "hf_qwen3_tied"])
def test_tied_embeddings(request, fixture):
    torch_model, ckpt = request.getfixturevalue(fixture)
    model = hf.load(ckpt)
    assert model.cfg.text.tie_word_embeddings and "lm_head" not in model.pure_params["text"]
    family = model.cfg.family
    for kind in ("text", "one_image"):
        inputs = H.make_inputs(family, torch_model.config, kind, seed=3)
        _assert_logits_close(_ours(model, inputs), H.hf_logits(torch_model, inputs), inputs["attention_mask"])


def test_export_round_trip_through_transformers(pair, tmp_path):
    family, torch_model, ckpt, model = pair
    out = hf.export(model, tmp_path / "exported")
    # Same names and bit-identical tensors as the checkpoint transformers wrote.
    with CheckpointReader(ckpt) as a, CheckpointReader(out) as b:
        assert a.keys() == b.keys()
        for k in a.keys():
            np.testing.assert_array_equal(a.get(k), b.get(k), err_msg=k)
    cls = type(torch_model)
    reloaded = cls.from_pretrained(out, attn_implementation="eager").eval()
    inputs = H.make_inputs(family, torch_model.config, "images", seed=5)
    _assert_logits_close(H.hf_logits(reloaded, inputs), _ours(model, inputs), inputs["attention_mask"])


def test_sharded_checkpoint_and_bf16(pair, tmp_path):
    family, torch_model, ckpt, model = pair
    d = tmp_path / "sharded"
    d.mkdir()
    with CheckpointReader(ckpt) as r:
        tensors = {k: np.array(r.get(k)) for k in r.keys()}
    write_checkpoint(d, tensors, max_shard_bytes=200_000)
    shutil.copy(ckpt / "config.json", d / "config.json")
    assert (d / "model.safetensors.index.json").exists()
    sharded = hf.load(d)
    inputs = H.make_inputs(family, torch_model.config, "one_image", seed=1)
    np.testing.assert_array_equal(_ours(sharded, inputs), _ours(model, inputs))
    bf16 = hf.load(d, dtype=jnp.bfloat16)
    assert all(v.dtype == jnp.bfloat16 for v in __import__("jax").tree.leaves(bf16.pure_params))
    ours16 = _ours(bf16, inputs)
    ref = _ours(model, inputs)
    # bf16 drifts on these high-gain random weights; ours must drift no more than transformers' own bf16.
    hf16 = type(torch_model).from_pretrained(ckpt, attn_implementation="eager", dtype=torch.bfloat16).eval()
    ref16 = H.hf_logits(hf16, inputs)
    err_ours = np.abs(ours16 - ref).mean()
    err_hf = np.abs(ref16 - ref).mean()
    assert err_ours <= 1.5 * err_hf + 1e-3, f"bf16 error {err_ours:.4f} vs transformers' {err_hf:.4f}"


def _corrupt(ckpt, tmp_path, edit):
    d = tmp_path / "corrupt"
    d.mkdir(exist_ok=True)
    with CheckpointReader(ckpt) as r:
        tensors = {k: np.array(r.get(k)) for k in r.keys()}
    edit(tensors)
    write_checkpoint(d, tensors)
    shutil.copy(ckpt / "config.json", d / "config.json")
    return d


def test_bad_checkpoints_name_the_key(pair, tmp_path):
    family, _, ckpt, _ = pair
    layer_key = next(k for k in CheckpointReader(ckpt).keys() if "layers.1.mlp.up_proj.weight" in k)

    d = _corrupt(ckpt, tmp_path, lambda t: t.pop(layer_key))
    with pytest.raises(hf.CheckpointMismatch, match="missing.*" + layer_key.replace(".", r"\.")):
        hf.load(d)
    d = _corrupt(ckpt, tmp_path, lambda t: t.update({"model.extra_head.weight": np.zeros((2, 2), np.float32)}))
    with pytest.raises(hf.CheckpointMismatch, match="extra_head"):
        hf.load(d)
    d = _corrupt(ckpt, tmp_path, lambda t: t.update({layer_key: t[layer_key][:, :-1]}))
    with pytest.raises(hf.CheckpointMismatch, match=layer_key.replace(".", r"\.") + ".*shape"):
        hf.load(d)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_type"] = "llava"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="llava"):
        hf.load(d)
