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
import jax
import jax.numpy as jnp
from flax import nnx

from ar1_jax.action import flow
from ar1_jax.config import Config
from ar1_jax.model import kv_cache as kv_lib
from ar1_jax.model import text, vision
from ar1_jax.model.expert import ActionExpert, expert_velocity
from ar1_jax.model.layers import dtype_of
from ar1_jax.model.vlm import vlm_forward

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


def prefix_velocity(params: dict, cfg: Config, k, v, kv_valid, future_start_slot, action_position):
    """The expert's velocity `(x_t [N, A, 2], t [N] or scalar) -> [N, A, 2]` reading the backbone's cached
    keys/values `k, v [L, N, S, K, D]` of each row's prefix: the valid slots (`kv_valid [N, S]`) up to
    `future_start_slot [N]`; action tokens from rotary position `action_position [N]`. SFT, inference,
    RL rollouts and the RL update all run the expert through it."""
    valid = prefix_mask(kv_valid, future_start_slot)
    n = future_start_slot.shape[0]

    def velocity(x_t, t):
        return expert_velocity(params["expert"], cfg, x_t, jnp.broadcast_to(t, (n,)), k, v, valid, action_position,
                               dtype=dtype_of(cfg.model.dtype), impl=cfg.model.attention_impl_for("expert"))

    return velocity


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
    controls_valid `[B]` (`ar1_jax.data.sft_batch.SFT_SPEC`). Optional `weight_totals`: for each of the
    spec's `weight_keys`, the count its mean divides by, in place of this batch's own (gradient
    accumulation passes the whole batch's count / number of micro-batches, so the micro-batch mean of
    these losses is the whole batch's).
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
        velocity = prefix_velocity(params, cfg, k, v, batch["kv_valid"], batch["future_start_slot"],
                                   batch["action_position"])(x_t, t)
        valid, n_valid = batch.get("controls_valid"), totals.get("controls_valid")
        fm = flow.loss(velocity, x, eps, None if valid is None else valid[:, None, None],
                       denominator=None if n_valid is None else n_valid * math.prod(x.shape[1:]))
        total = total + lc.flow_weight * fm
    return total, {"loss": total, "ce_reasoning": ce_reasoning, "ce_trajectory": ce_traj, "flow": fm}
