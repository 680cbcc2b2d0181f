"""HF transformers reference side of the Qwen2.5-VL / Qwen3-VL parity tests.

Helper module (not collected by pytest): builds tiny random HF models with O(1) logits,
saves them as hub-layout safetensors checkpoints, builds processor-format inputs and runs
HF forward / greedy generation.

Input format (what the HF processors produce and what the JAX side must consume too):

* ``input_ids`` [B, T] int64: text ids, with each image written as
  ``vision_start, image_token * (t*h*w/4), vision_end``.
* ``attention_mask`` [B, T] int64; padded batches are LEFT padded with token 0 / mask 0.
* ``pixel_values`` [num_patches, C * temporal_patch * patch * patch] float32: the patches of all
  images of the batch, concatenated in row order then image order.  Each image contributes
  t*h*w rows, frame-major, and inside a frame the patches are ordered in 2x2 spatial-merge
  blocks: (h/2, w/2, 2, 2) row-major.  Each row is a (C, temporal, patch, patch) block.
  Here the values are random normal (the layout only matters in that both sides read the
  same array).
* ``image_grid_thw`` [N, 3] int64: (t, h, w) in patches per image, same order.
* ``mm_token_type_ids`` [B, T] int64: 1 on image tokens, 0 elsewhere (also 0 on
  vision_start/vision_end and pads).  transformers 5 needs it to compute M-RoPE positions
  (Qwen3-VL raises without it when images are given; Qwen2.5-VL silently falls back to 1-D
  positions).
"""

from __future__ import annotations

import os

import numpy as np
import torch

FAMILIES = ("qwen2_5_vl", "qwen3_vl")
KINDS = ("text", "one_image", "images", "video", "padded")

VOCAB = 512
PAD_ID = 0
EOS_ID = 1
IMAGE_TOKEN_ID = 500
VIDEO_TOKEN_ID = 501
VISION_START_ID = 502
VISION_END_ID = 503
TEXT_ID_RANGE = (4, 400)

# Grids are (t, h, w) in patches.  Qwen2.5-VL window attention: window 56 px = 4 patches = 2
# merged units, so a merged dimension (h/2 or w/2) that is odd gives partial windows at the edge.
GRIDS = {
    "one_image": [(1, 8, 12)],  # merged 4x6: 2x3 full windows, non-square
    "images": [(1, 4, 6), (1, 10, 4), (1, 6, 10)],  # merged 2x3, 5x2, 3x5: partial windows
    "video": [(2, 6, 8)],  # 2-frame image (grid_t=2) passed as an image
    # padded: row 0 has one image, row 1 two images
    "padded": [[(1, 4, 6)], [(1, 6, 10), (1, 4, 4)]],
}


def _norm_family(family: str) -> str:
    f = family.lower().replace(".", "_").replace("-", "_")
    if f in ("qwen2_5_vl", "qwen25", "qwen2_5", "qwen25_vl"):
        return "qwen2_5_vl"
    if f in ("qwen3_vl", "qwen3"):
        return "qwen3_vl"
    raise ValueError(f"unknown family {family!r}")


def tiny_hf_config(family: str, *, tie_word_embeddings: bool = False, seed: int = 0):
    """A tiny transformers config for `family` ("qwen2_5_vl" or "qwen3_vl").

    `seed` is accepted for symmetry with `make_hf_model` and does not change the config.
    """
    del seed
    family = _norm_family(family)
    special = dict(
        image_token_id=IMAGE_TOKEN_ID,
        video_token_id=VIDEO_TOKEN_ID,
        vision_start_token_id=VISION_START_ID,
        vision_end_token_id=VISION_END_ID,
    )
    text_common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        max_position_embeddings=4096,
        pad_token_id=PAD_ID,
        dtype="float32",
    )
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        text = dict(
            text_common,
            bos_token_id=EOS_ID,
            eos_token_id=EOS_ID,
            rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[2, 3, 3]),
        )
        vision = dict(
            depth=4,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            hidden_act="silu",
            in_channels=3,
            patch_size=14,
            temporal_patch_size=2,
            spatial_merge_size=2,
            window_size=56,
            fullatt_block_indexes=[1, 3],
            tokens_per_second=2,
        )
        cfg = Qwen2_5_VLConfig(
            text_config=text,
            vision_config=vision,
            tie_word_embeddings=tie_word_embeddings,
            attn_implementation="eager",
            pad_token_id=PAD_ID,
            eos_token_id=EOS_ID,
            bos_token_id=EOS_ID,
            **special,
        )
    else:
        from transformers import Qwen3VLConfig

        text = dict(
            text_common,
            head_dim=16,
            attention_bias=False,
            rope_parameters=dict(
                rope_type="default", rope_theta=5e6, mrope_section=[2, 3, 3], mrope_interleaved=True
            ),
        )
        vision = dict(
            depth=3,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            hidden_act="gelu_pytorch_tanh",
            in_channels=3,
            patch_size=16,
            temporal_patch_size=2,
            spatial_merge_size=2,
            num_position_embeddings=64,
            deepstack_visual_indexes=[0, 1],
        )
        cfg = Qwen3VLConfig(
            text_config=text,
            vision_config=vision,
            tie_word_embeddings=tie_word_embeddings,
            attn_implementation="eager",
            pad_token_id=PAD_ID,
            eos_token_id=EOS_ID,
            bos_token_id=EOS_ID,
            **special,
        )
    cfg._attn_implementation = "eager"
    return cfg


def _model_class(family: str):
    if _norm_family(family) == "qwen2_5_vl":
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration
    from transformers import Qwen3VLForConditionalGeneration

    return Qwen3VLForConditionalGeneration


# Init scales (see `reinit_`).
WEIGHT_GAIN = 1.5  # std = gain / sqrt(fan_in) for linear / conv weights
LM_HEAD_STD = 0.6  # logits std ~ 0.6 * sqrt(64) ~ 5: greedy top-1 margins stay > 1e-2
EMBED_STD = 0.6  # embed_tokens (also the lm_head when tied)
POS_EMBED_STD = 1.0  # Qwen3-VL learned vision position table
NORM_STD = 0.1  # norm weights ~ 1 +- 0.1
BIAS_STD = 0.05
SPECIAL_ROW_SCALE = 0.1  # lm_head rows of ids >= IMAGE_TOKEN_ID are shrunk: never generated


@torch.no_grad()
def reinit_(model: torch.nn.Module, seed: int) -> None:
    """Re-initialise every parameter in place from a seeded torch generator.

    HF's std-0.02 init gives logits ~1e-2 and near-ties everywhere; this gives O(1) logits.
    Rows >= IMAGE_TOKEN_ID (the special vision ids 500..511) of the output projection are
    shrunk so greedy decoding never emits an image/vision token (which would make a
    re-run of prompt+generation ill-formed).
    """
    g = torch.Generator().manual_seed(int(seed))
    norm_param_ids = set()
    for mod in model.modules():
        if "norm" in type(mod).__name__.lower():
            for p in mod.parameters(recurse=False):
                norm_param_ids.add(id(p))

    def randn(p, std, mean=0.0):
        return torch.randn(p.shape, generator=g, dtype=torch.float32) * std + mean

    seen = set()
    for name, p in model.named_parameters(remove_duplicate=True):
        if id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in norm_param_ids:
            new = randn(p, NORM_STD, 1.0) if name.endswith("weight") else randn(p, BIAS_STD)
        elif name.endswith("bias"):
            new = randn(p, BIAS_STD)
        elif name.endswith("embed_tokens.weight"):
            new = randn(p, EMBED_STD)
        elif name.endswith("pos_embed.weight"):
            new = randn(p, POS_EMBED_STD)
        elif name == "lm_head.weight":
            new = randn(p, LM_HEAD_STD)
        else:
            fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else p.shape[0]
            new = randn(p, WEIGHT_GAIN / np.sqrt(fan_in))
        p.copy_(new.to(p.dtype))
    out = model.get_output_embeddings().weight
    out[IMAGE_TOKEN_ID:] *= SPECIAL_ROW_SCALE


def make_hf_model(family: str, out_dir, seed: int = 0, tie_word_embeddings: bool = False):
    """Build the tiny HF model, re-init it, save it to `out_dir` (model.safetensors +
    config.json) and return it in eval mode (float32, eager attention)."""
    cfg = tiny_hf_config(family, tie_word_embeddings=tie_word_embeddings, seed=seed)
    torch.manual_seed(seed)
    model = _model_class(family)(cfg)
    model = model.to(torch.float32)
    reinit_(model, seed)
    if tie_word_embeddings:
        assert model.lm_head.weight is model.get_input_embeddings().weight, "embeddings not tied"
    model.eval()
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    return model


def _image_tokens(grid) -> int:
    t, h, w = grid
    return t * h * w // 4


def _text(rng, n) -> list[int]:
    return rng.integers(TEXT_ID_RANGE[0], TEXT_ID_RANGE[1], size=n).tolist()


def _row(rng, grids, text_lens) -> tuple[list[int], list[int]]:
    """text_lens[0] text, then for each image: start, image tokens, end, text_lens[i+1] text."""
    assert len(text_lens) == len(grids) + 1
    ids = _text(rng, text_lens[0])
    types = [0] * len(ids)
    for grid, n_after in zip(grids, text_lens[1:]):
        n_img = _image_tokens(grid)
        ids += [VISION_START_ID] + [IMAGE_TOKEN_ID] * n_img + [VISION_END_ID]
        types += [0] + [1] * n_img + [0]
        after = _text(rng, n_after)
        ids += after
        types += [0] * len(after)
    return ids, types


def _patch_dim(cfg) -> int:
    v = cfg.vision_config
    return v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size


def make_inputs(family: str, cfg, kind: str, seed: int = 0) -> dict:
    """Processor-format numpy inputs for `kind` in KINDS (see module docstring)."""
    del family  # the layout only depends on cfg (patch size)
    rng = np.random.default_rng(seed)
    if kind == "text":
        rows = [(_text(rng, 20), [0] * 20)]
        grids_per_row = [[]]
    elif kind in ("one_image", "images", "video"):
        grids = GRIDS[kind]
        text_lens = [5] + [4] * (len(grids) - 1) + [6]
        rows = [_row(rng, grids, text_lens)]
        grids_per_row = [grids]
    elif kind == "padded":
        grids_per_row = GRIDS["padded"]
        rows = [_row(rng, grids_per_row[0], [3, 4]), _row(rng, grids_per_row[1], [5, 3, 4])]
    else:
        raise ValueError(f"unknown kind {kind!r}")

    T = max(len(ids) for ids, _ in rows)
    B = len(rows)
    input_ids = np.full((B, T), PAD_ID, np.int64)
    attention_mask = np.zeros((B, T), np.int64)
    mm = np.zeros((B, T), np.int64)
    for b, (ids, types) in enumerate(rows):
        n = len(ids)
        input_ids[b, T - n :] = ids
        attention_mask[b, T - n :] = 1
        mm[b, T - n :] = types

    all_grids = [g for grids in grids_per_row for g in grids]
    if all_grids:
        n_patches = sum(t * h * w for t, h, w in all_grids)
        pixel_values = rng.standard_normal((n_patches, _patch_dim(cfg))).astype(np.float32)
        image_grid_thw = np.asarray(all_grids, np.int64)
    else:
        pixel_values = None
        image_grid_thw = None
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pixel_values=pixel_values,
        image_grid_thw=image_grid_thw,
        mm_token_type_ids=mm,
    )


def row_inputs(inputs: dict, b: int) -> dict:
    """Row `b` of a (padded) batch, unpadded, with only its own images."""
    mask = inputs["attention_mask"][b].astype(bool)
    ids = inputs["input_ids"][b][mask][None]
    out = dict(
        input_ids=ids,
        attention_mask=np.ones_like(ids),
        mm_token_type_ids=inputs["mm_token_type_ids"][b][mask][None],
        pixel_values=None,
        image_grid_thw=None,
    )
    grids = inputs["image_grid_thw"]
    if grids is None:
        return out
    n_img = [int((r == VISION_START_ID).sum()) for r in inputs["input_ids"]]
    first = sum(n_img[:b])
    my = grids[first : first + n_img[b]]
    sizes = [int(np.prod(g)) for g in grids]
    start = sum(sizes[:first])
    stop = start + sum(sizes[first : first + n_img[b]])
    out["pixel_values"] = inputs["pixel_values"][start:stop]
    out["image_grid_thw"] = my if len(my) else None
    if not len(my):
        out["pixel_values"] = None
    return out


def _to_torch(inputs: dict) -> dict:
    out = {}
    for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"):
        v = inputs.get(k)
        if v is not None:
            out[k] = torch.from_numpy(np.ascontiguousarray(v))
    return out


def _reset_rope_state(model) -> None:
    # Qwen*-VL models cache `rope_deltas` between calls; start every call from a clean state.
    model.model.rope_deltas = None


@torch.no_grad()
def hf_logits(model, inputs: dict) -> np.ndarray:
    """Full-sequence logits [B, T, V] float32."""
    _reset_rope_state(model)
    out = model(**_to_torch(inputs), use_cache=False)
    return out.logits.float().numpy()


def greedy_generation_config(max_new_tokens: int = 16):
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        min_new_tokens=None,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=PAD_ID,
        temperature=None,
        top_k=None,
        top_p=None,
        repetition_penalty=None,
        use_cache=True,
    )


@torch.no_grad()
def hf_greedy(model, inputs: dict, max_new_tokens: int = 16) -> np.ndarray:
    """The `max_new_tokens` greedily generated tokens [B, max_new_tokens] int64 (eos disabled,
    so exactly that many are produced)."""
    _reset_rope_state(model)
    t = _to_torch(inputs)
    prompt_len = t["input_ids"].shape[1]
    # `eos_token_id=None` in the passed GenerationConfig means "unset" and generate() fills it
    # from model.generation_config (eos 1 from config.json), so unset it there for the call.
    saved_eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None
    try:
        seq = model.generate(**t, generation_config=greedy_generation_config(max_new_tokens))
    finally:
        model.generation_config.eos_token_id = saved_eos
    new = seq[:, prompt_len:].numpy()
    assert new.shape == (t["input_ids"].shape[0], max_new_tokens), new.shape
    return new.astype(np.int64)


def extend_with_generated(inputs: dict, new_tokens: np.ndarray) -> dict:
    """prompt + generated tokens as one forward input (mask 1, token type 0 on new tokens)."""
    new_tokens = np.asarray(new_tokens, np.int64)
    out = dict(inputs)
    out["input_ids"] = np.concatenate([inputs["input_ids"], new_tokens], 1)
    out["attention_mask"] = np.concatenate([inputs["attention_mask"], np.ones_like(new_tokens)], 1)
    out["mm_token_type_ids"] = np.concatenate(
        [inputs["mm_token_type_ids"], np.zeros_like(new_tokens)], 1
    )
    return out


def safetensors_keys(ckpt_dir) -> dict:
    """{key: shape} of `ckpt_dir/model.safetensors`."""
    from safetensors import safe_open

    out = {}
    with safe_open(os.path.join(os.fspath(ckpt_dir), "model.safetensors"), framework="np") as f:
        for k in f.keys():
            out[k] = tuple(f.get_slice(k).get_shape())
    return out
