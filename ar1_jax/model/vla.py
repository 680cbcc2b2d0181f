"""Alpamayo-R1: the vision-language backbone plus the flow-matching action expert.

Parameters are `{vision, text, expert}`: the first two are exactly the backbone's (so the backbone's
pure functions apply to them unchanged), `expert` is `ActionExpert`'s.

SFT (`sft_loss`) is one teacher-forced pass over
    prompt (system, images, history tokens, instruction) <|cot_start|> reasoning <|cot_end|>
    <|traj_future_start|> 128 future-trajectory tokens <|traj_future_end|> ...
with cross-entropy on the reasoning and on the discrete trajectory tokens (weights from config),
and flow matching on the expert, which reads the backbone's per-layer keys/values of the prefix up
to and including `<|traj_future_start|>` (stop-gradient: the flow loss does not train the backbone).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ar1_jax.action import flow
from ar1_jax.config import Config
from ar1_jax.model import kv_cache as kv_lib
from ar1_jax.model import rope, text, vision
from ar1_jax.model.expert import ActionExpert, expert_velocity
from ar1_jax.model.layers import dtype_of
from ar1_jax.model.vlm import vlm_forward
from ar1_jax.text import tokenizer as tok

# Targets in these tokenizer segments count for the reasoning / the trajectory-token CE terms.
REASONING_TARGETS = (tok.SEG_REASONING, tok.SEG_FUTURE_START)
TRAJECTORY_TARGETS = (tok.SEG_FUTURE, tok.SEG_END)


class AR1(nnx.Module):
    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        if not cfg.is_vla:
            raise ValueError(f"config {cfg.name!r} has no action expert (expert.hidden_size = 0)")
        pd = dtype_of(cfg.model.param_dtype)
        self.vision = vision.VisionTower(cfg.model.vision, rngs=rngs, param_dtype=pd)
        self.text = text.TextDecoder(cfg.model.text, rngs=rngs, param_dtype=pd)
        self.expert = ActionExpert(cfg, rngs=rngs, param_dtype=pd)


def backbone_with_kv(params: dict, cfg: Config, input_ids, positions, kv_valid, media):
    """Teacher-forced backbone pass: logits `[B, T, V]` and a cache holding every layer's K/V."""
    b, t = input_ids.shape
    tc = cfg.model.text
    cache = kv_lib.init_cache(tc.num_layers, b, t, tc.num_kv_heads, tc.head_dim, dtype_of(cfg.model.dtype))
    return vlm_forward(params, cfg.model, input_ids, positions, kv_valid=kv_valid, media=media, cache=cache)


def prefix_mask(cache_valid, future_start_slot):
    """Slots the action tokens may read: valid and at or before `<|traj_future_start|>`."""
    slots = jnp.arange(cache_valid.shape[1], dtype=jnp.int32)[None]
    return cache_valid & (slots <= future_start_slot[:, None])


def _masked_mean(values, weights, total=None):
    """sum(values * weights) / total, where `total` defaults to sum(weights) (0 / 0 gives 0)."""
    weights = weights.astype(jnp.float32)
    total = jnp.sum(weights) if total is None else total
    return jnp.sum(values * weights) / jnp.where(total > 0, total, 1.0)


def sft_loss(params: dict, cfg: Config, batch: dict, rng) -> tuple[jax.Array, dict]:
    """Weighted SFT loss and its terms.

    `batch`: input_ids, targets `[B, T]` (next-token ids), positions `[3, B, T]`, kv_valid `[B, T]`,
    reasoning_mask / traj_mask `[B, T]` (which targets count for which CE term), media (or None),
    future_start_slot / action_position `[B]`, controls `[B, 64, 2]` normalised ground truth,
    controls_valid `[B]`. Optional `weight_totals`: for each key of `sft_loss.weight_keys`, the count
    its mean divides by, in place of this batch's own (gradient accumulation passes the whole batch's
    count / number of micro-batches, so the micro-batch mean of these losses is the whole batch's).
    """
    lc = cfg.loss
    totals = batch.get("weight_totals", {})
    logits, cache = backbone_with_kv(params, cfg, batch["input_ids"], batch["positions"], batch["kv_valid"],
                                     batch.get("media"))
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
    ce_reasoning = _masked_mean(nll, batch["reasoning_mask"], totals.get("reasoning_mask"))
    ce_traj = _masked_mean(nll, batch["traj_mask"], totals.get("traj_mask"))

    total = lc.reasoning_weight * ce_reasoning + lc.trajectory_token_weight * ce_traj
    fm = jnp.zeros((), jnp.float32)
    if lc.flow_weight:  # a static config value: with weight 0 the expert is not run at all
        k, v = cache.k, cache.v
        if lc.stop_gradient_kv:
            k, v = jax.lax.stop_gradient(k), jax.lax.stop_gradient(v)
        key_t, key_eps = jax.random.split(rng)
        x = batch["controls"].astype(jnp.float32)
        t = flow.sample_time(key_t, (x.shape[0],), cfg.action)
        eps = jax.random.normal(key_eps, x.shape, jnp.float32)
        x_t = flow.interpolate(x, eps, t[:, None, None])
        velocity = expert_velocity(params["expert"], cfg, x_t, t, k, v,
                                   prefix_mask(batch["kv_valid"], batch["future_start_slot"]),
                                   batch["action_position"], dtype=dtype_of(cfg.model.dtype),
                                   impl=cfg.model.attention_impl_for("expert"))
        valid, n_valid = batch.get("controls_valid"), totals.get("controls_valid")
        fm = flow.loss(velocity, x, eps, None if valid is None else valid[:, None, None],
                       denominator=None if n_valid is None else n_valid * math.prod(x.shape[1:]))
        total = total + lc.flow_weight * fm
    return total, {"loss": total, "ce_reasoning": ce_reasoning, "ce_trajectory": ce_traj, "flow": fm}


# The batch keys whose sums sft_loss's means divide by (see `weight_totals`).
sft_loss.weight_keys = ("reasoning_mask", "traj_mask", "controls_valid")


def build_sft_batch(cfg: Config, examples: list[dict], length: int | None = None) -> dict[str, Any]:
    """Host-side: packs examples into a right-padded SFT batch (numpy), computing M-RoPE positions.

    Each example: `input_ids [T_i]` and `segments [T_i]` (the `kind` codes of
    `ar1_jax.text.tokenizer.build_prompt`), optional `pixel_values` / `image_grid_thw`, and
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
    return dict(
        input_ids=ids, targets=targets, positions=positions, kv_valid=mask,
        reasoning_mask=np.isin(next_kind, REASONING_TARGETS) & mask,
        traj_mask=np.isin(next_kind, TRAJECTORY_TARGETS) & mask,
        future_start_slot=fs.astype(np.int32), action_position=(positions[0, np.arange(n), fs] + 1).astype(np.int32),
        controls=np.stack([e["controls"] for e in examples]).astype(np.float32),
        controls_valid=np.ones((n,), bool), media=media,
    )
