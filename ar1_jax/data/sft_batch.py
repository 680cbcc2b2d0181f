"""The SFT batch: its spec (`SFT_SPEC`) and the host-side builder (`build_sft_batch`).

One row per scene, right-padded to a bucket length T:

    input_ids, targets   [B, T] int32     tokens and next-token targets (pad id past the end)
    positions            [3, B, T] int32  M-RoPE (temporal, height, width) positions, 0 past the end
    kv_valid             [B, T] bool      real tokens
    reasoning_mask       [B, T] bool      targets of the reasoning CE term
    traj_mask            [B, T] bool      targets of the trajectory-token CE term
    future_start_slot    [B] int32        index of <|traj_future_start|>
    action_position      [B] int32        M-RoPE position of the first action token
    controls             [B, A, 2] f32    normalised ground-truth (acceleration, curvature), A = 64
    controls_valid       [B] bool         rows whose controls count in the flow loss
    media.image.pixel_values [B, P, D] f32  one scene's patches per row (P patches of dim D)
    media.image.layout   shared           one scene's vision layout (every scene has the same rig)

`ar1_jax.model.vla.sft_loss` reads it; the grain pipeline, the trainer's shardings and
micro-batches and the memory estimate all read `SFT_SPEC`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ar1_jax.config import Config
from ar1_jax.data.spec import BatchSpec, Field
from ar1_jax.model import rope, vision
from ar1_jax.text import prompt

# Targets in these prompt segments count for the reasoning / the trajectory-token CE terms.
REASONING_TARGETS = (prompt.SEG_REASONING, prompt.SEG_FUTURE_START)
TRAJECTORY_TARGETS = (prompt.SEG_FUTURE, prompt.SEG_END)

_TOKENS = ("batch", "seq")
SFT_SPEC = BatchSpec("sft", {
    "input_ids": Field(("B", "T"), "int32", _TOKENS, pad="pad_id"),
    "targets": Field(("B", "T"), "int32", _TOKENS, pad="pad_id"),
    "positions": Field((3, "B", "T"), "int32", (None, "batch", "seq"), pad=0),
    "kv_valid": Field(("B", "T"), "bool", _TOKENS, pad=False),
    "reasoning_mask": Field(("B", "T"), "bool", _TOKENS, pad=False, weight=True),
    "traj_mask": Field(("B", "T"), "bool", _TOKENS, pad=False, weight=True),
    "future_start_slot": Field(("B",), "int32", ("batch",)),
    "action_position": Field(("B",), "int32", ("batch",)),
    "controls": Field(("B", "A", 2), "float32", ("batch", None, None)),
    "controls_valid": Field(("B",), "bool", ("batch",), weight=True),
    "media.image.pixel_values": Field(("B", "P", "D"), "float32", ("batch", None, None), optional=True),
    "media.image.layout": Field(shared=True, optional=True),
}, tokens="kv_valid")


def build_sft_batch(cfg: Config, examples: list[dict], length: int | None = None) -> dict[str, Any]:
    """Host-side: packs examples into a right-padded SFT batch (numpy), computing M-RoPE positions.

    Each example: `input_ids [T_i]` and `segments [T_i]` (the `kind` codes of
    `ar1_jax.text.prompt.build_prompt`), optional `pixel_values` / `image_grid_thw`, and
    `controls [64, 2]` (normalised). When every example has images of the same grid (a fixed camera
    rig), `media.image.pixel_values` is per scene, `[B, patches per scene, D]` with one scene's
    `layout`; otherwise all examples' patches are concatenated in order (`[patches, D]`, the HF
    processor's form) with the layout of all of them. `vlm.encode_media` takes either.
    """
    n = len(examples)
    t = length or max(len(e["input_ids"]) for e in examples)
    if any(len(e["input_ids"]) > t for e in examples):
        raise ValueError(f"an example is longer than the bucket length {t}")
    ids = np.full((n, t), cfg.tokens.pad_id, np.int32)
    kind = np.full((n, t), -1, np.int32)
    for i, e in enumerate(examples):
        if len(e["segments"]) != len(e["input_ids"]):
            raise ValueError(f"example {i}: {len(e['segments'])} segment codes for {len(e['input_ids'])} tokens")
        if e.get("pixel_values") is not None and np.ndim(e["pixel_values"]) != 2:
            raise ValueError(f"example {i}: pixel_values must be one scene's [patches, D], got shape "
                             f"{np.shape(e['pixel_values'])}")
        ids[i, :len(e["input_ids"])] = e["input_ids"]
        kind[i, :len(e["segments"])] = e["segments"]
    mask = kind >= 0
    pvs = [e["pixel_values"] for e in examples if e.get("pixel_values") is not None]
    grids = [e["image_grid_thw"] for e in examples if e.get("image_grid_thw") is not None]
    grid = np.concatenate(grids, 0) if grids else None
    positions, _ = rope.get_rope_index(ids, family=cfg.model.family, image_token_id=cfg.model.image_token_id,
                                       video_token_id=cfg.model.video_token_id,
                                       spatial_merge_size=cfg.model.vision.spatial_merge_size,
                                       image_grid_thw=grid, attention_mask=mask)
    targets = np.concatenate([ids[:, 1:], np.full((n, 1), cfg.tokens.pad_id, np.int32)], 1)
    next_kind = np.concatenate([kind[:, 1:], np.full((n, 1), -1, np.int32)], 1)
    fs = np.argmax(ids == cfg.tokens.traj_future_start_id, axis=1)
    if not np.all(ids[np.arange(n), fs] == cfg.tokens.traj_future_start_id):
        raise ValueError("every SFT example needs a <|traj_future_start|> token")
    media = None
    if pvs and len(pvs) == n and all(np.array_equal(g, grids[0]) for g in grids):
        # Every scene has the same cameras and sizes: per-scene format (see vlm.encode_media).
        media = {"image": {"pixel_values": np.stack(pvs, 0).astype(np.float32),
                           "layout": vision.vision_layout(cfg.model.vision, grids[0])}}
    elif pvs:
        media = {"image": {"pixel_values": np.concatenate(pvs, 0).astype(np.float32),
                           "layout": vision.vision_layout(cfg.model.vision, grid)}}
    batch = dict(
        input_ids=ids, targets=targets, positions=positions, kv_valid=mask,
        reasoning_mask=np.isin(next_kind, REASONING_TARGETS) & mask,
        traj_mask=np.isin(next_kind, TRAJECTORY_TARGETS) & mask,
        future_start_slot=fs.astype(np.int32), action_position=(positions[0, np.arange(n), fs] + 1).astype(np.int32),
        controls=np.stack([e["controls"] for e in examples]).astype(np.float32),
        controls_valid=np.ones((n,), bool), media=media,
    )
    flat = media is not None and media["image"]["pixel_values"].ndim == 2  # inference's HF form, not a train batch
    if not flat:
        SFT_SPEC.check(batch)  # what the trainer, the shardings and the micro-batches will assume
    return batch
