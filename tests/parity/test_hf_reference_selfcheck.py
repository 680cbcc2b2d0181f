"""Self-checks of the HF reference side (tests/parity/hf_reference.py) on its own, no JAX.

These make sure the reference numbers the JAX parity tests compare against are meaningful:
O(1), deterministic logits; greedy decoding without near-ties; left-padded batches that agree
with their rows run alone; checkpoints written in the hub layout.
"""

import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import hf_reference as H  # noqa: E402  (tests/parity is put on sys.path by conftest.py)

pytestmark = pytest.mark.parity

MODEL_FIXTURES = ["hf_qwen25", "hf_qwen3", "hf_qwen25_tied", "hf_qwen3_tied"]
FAMILY_OF = {
    "hf_qwen25": "qwen2_5_vl",
    "hf_qwen25_tied": "qwen2_5_vl",
    "hf_qwen3": "qwen3_vl",
    "hf_qwen3_tied": "qwen3_vl",
}
N_NEW = 16


def _model(request, fixture):
    model, ckpt = request.getfixturevalue(fixture)
    return model, ckpt, FAMILY_OF[fixture]


def _valid_max_abs_diff(a, b, mask):
    d = np.abs(a - b).max(-1)
    return float((d * mask).max())


@pytest.mark.parametrize("kind", H.KINDS)
@pytest.mark.parametrize("fixture", MODEL_FIXTURES)
def test_logits_finite_o1_deterministic(request, fixture, kind):
    model, _, family = _model(request, fixture)
    inputs = H.make_inputs(family, model.config, kind, seed=0)
    B, T = inputs["input_ids"].shape
    logits = H.hf_logits(model, inputs)
    assert logits.shape == (B, T, H.VOCAB) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    valid = logits[inputs["attention_mask"].astype(bool)]
    std = float(valid.std())
    assert 0.5 < std < 20.0, std
    assert np.abs(valid).max() < 100.0
    # the per-position spread is O(1) too (not a constant offset)
    assert float(valid.std(-1).min()) > 0.5
    again = H.hf_logits(model, inputs)
    np.testing.assert_array_equal(logits, again)
    # inputs are deterministic too
    inputs2 = H.make_inputs(family, model.config, kind, seed=0)
    for k, v in inputs.items():
        if v is None:
            assert inputs2[k] is None
        else:
            np.testing.assert_array_equal(v, inputs2[k])


@pytest.mark.parametrize("kind", H.KINDS)
@pytest.mark.parametrize("fixture", MODEL_FIXTURES)
def test_greedy_margins_and_consistency(request, fixture, kind):
    model, _, family = _model(request, fixture)
    inputs = H.make_inputs(family, model.config, kind, seed=0)
    B, T = inputs["input_ids"].shape
    gen = H.hf_greedy(model, inputs, max_new_tokens=N_NEW)
    assert gen.shape == (B, N_NEW) and gen.dtype == np.int64
    assert (gen < H.IMAGE_TOKEN_ID).all(), "greedy emitted a vision special token"
    np.testing.assert_array_equal(gen, H.hf_greedy(model, inputs, max_new_tokens=N_NEW))

    # Re-running prompt + generation in one forward: argmax at each step == generated token
    # (no logits processors / eos suppression, and decode positions agree with full forward).
    full = H.hf_logits(model, H.extend_with_generated(inputs, gen))
    steps = full[:, T - 1 : T - 1 + N_NEW]
    np.testing.assert_array_equal(steps.argmax(-1), gen)
    top2 = np.sort(steps, -1)[..., -2:]
    margin = float((top2[..., 1] - top2[..., 0]).min())
    assert margin > 1e-3, f"near-tie in greedy decoding: margin {margin}"

    # the prompt part of that forward equals the prompt-only forward at valid positions
    prompt = H.hf_logits(model, inputs)
    assert _valid_max_abs_diff(full[:, :T], prompt, inputs["attention_mask"]) == 0.0


@pytest.mark.parametrize("fixture", MODEL_FIXTURES)
def test_padded_rows_match_unpadded(request, fixture):
    model, _, family = _model(request, fixture)
    inputs = H.make_inputs(family, model.config, "padded", seed=0)
    mask = inputs["attention_mask"].astype(bool)
    assert inputs["input_ids"].shape[0] == 2
    assert mask[0].sum() < mask[1].sum() and not mask[0, 0] and mask[:, -1].all()
    assert (inputs["input_ids"][~mask] == H.PAD_ID).all()
    logits = H.hf_logits(model, inputs)
    gen = H.hf_greedy(model, inputs, max_new_tokens=N_NEW)
    for b in range(2):
        row = H.row_inputs(inputs, b)
        alone = H.hf_logits(model, row)[0]
        batched = logits[b][mask[b]]
        scale = float(np.abs(alone).max())
        rel = float(np.abs(batched - alone).max()) / scale
        assert rel < 1e-4, (b, rel)
        np.testing.assert_array_equal(gen[b], H.hf_greedy(model, row, max_new_tokens=N_NEW)[0])


def test_image_grid_t2_rope_positions(hf_qwen25, hf_qwen3):
    """An *image* with grid_t=2 is accepted; its M-RoPE temporal index is start+frame (no
    tokens_per_second scaling for images), h/w indices start+row/col, and the text after it
    resumes at start + max(h, w)/2 (t is not counted)."""
    import torch

    for model, _ in (hf_qwen25, hf_qwen3):
        inputs = H.make_inputs("", model.config, "video", seed=0)
        t, h, w = (int(x) for x in inputs["image_grid_thw"][0])
        assert t == 2
        tt = {k: torch.from_numpy(v) for k, v in inputs.items() if v is not None}
        pos, delta = model.model.get_rope_index(
            tt["input_ids"],
            mm_token_type_ids=tt["mm_token_type_ids"],
            image_grid_thw=tt["image_grid_thw"],
            attention_mask=tt["attention_mask"],
        )
        pos = pos[:, 0].numpy()
        img = np.nonzero(inputs["mm_token_type_ids"][0])[0]
        s = img[0]  # text before the image has positions 0..s-1, so the image starts at s
        gt, gh, gw = np.meshgrid(np.arange(t), np.arange(h // 2), np.arange(w // 2), indexing="ij")
        np.testing.assert_array_equal(pos[0, img], s + gt.ravel())
        np.testing.assert_array_equal(pos[1, img], s + gh.ravel())
        np.testing.assert_array_equal(pos[2, img], s + gw.ravel())
        after = img[-1] + 1  # vision_end
        assert (pos[:, after] == s + max(h, w) // 2).all()
        T = inputs["input_ids"].shape[1]
        assert int(delta[0, 0]) == int(pos.max()) + 1 - T


def test_mm_token_type_ids_needed(hf_qwen25, hf_qwen3):
    """Without mm_token_type_ids, Qwen3-VL raises and Qwen2.5-VL silently uses 1-D positions."""
    model25, _ = hf_qwen25
    inputs = H.make_inputs("qwen2_5_vl", model25.config, "one_image", seed=0)
    with_tt = H.hf_logits(model25, inputs)
    without = H.hf_logits(model25, {**inputs, "mm_token_type_ids": None})
    assert np.abs(with_tt - without).max() > 1e-2

    model3, _ = hf_qwen3
    inputs = H.make_inputs("qwen3_vl", model3.config, "one_image", seed=0)
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        H.hf_logits(model3, {**inputs, "mm_token_type_ids": None})


@pytest.mark.parametrize("fixture", MODEL_FIXTURES)
def test_checkpoint_written(request, fixture):
    model, ckpt, family = _model(request, fixture)
    assert os.path.isfile(os.path.join(ckpt, "model.safetensors"))
    assert os.path.isfile(os.path.join(ckpt, "config.json"))
    with open(os.path.join(ckpt, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model_type"] == family
    tied = fixture.endswith("_tied")
    assert bool(cfg.get("tie_word_embeddings", False)) == tied
    keys = H.safetensors_keys(ckpt)
    # Every parameter is saved once (tied ones once).  Names are the hub layout, which for
    # Qwen2.5-VL differs from the in-memory module names (model.visual.* -> visual.*,
    # model.language_model.* -> model.*); compare the shapes as multisets.
    params = dict(model.named_parameters(remove_duplicate=True))
    assert sorted(keys.values()) == sorted(tuple(p.shape) for p in params.values())
    if family == "qwen3_vl":
        assert set(keys) == set(params)
    if family == "qwen2_5_vl":
        assert "model.embed_tokens.weight" in keys
        assert any(k.startswith("visual.blocks.") for k in keys)
        assert any(k.startswith("visual.merger.") for k in keys)
    else:
        assert "model.language_model.embed_tokens.weight" in keys
        assert "model.visual.pos_embed.weight" in keys
        assert any(k.startswith("model.visual.deepstack_merger_list.") for k in keys)
    # lm_head is written iff embeddings are untied (transformers 5.24, both families)
    assert ("lm_head.weight" in keys) == (not tied)
