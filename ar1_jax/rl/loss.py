"""The RL objective of both heads, one jitted loss over an RL batch (`rl.batch.RL_SPEC`).

One teacher-forced backbone pass over every rollout gives the log-probs of the sampled reasoning
and trajectory tokens under the current parameters, with the distributions they were drawn from
(logits / temperature; trajectory ids banned while reasoning, only future-trajectory ids allowed for
trajectory tokens). The token head's loss is `cfg.rl.token_loss` (GRPO / DAPO / GSPO, clip
`eps_low` / `eps_high`, dual clip, optional k3 KL to `ref_logp`) with `token_adv`. The expert reads
the pass's keys/values of each rollout's prefix (stop-gradient, as in SFT) and takes
`cfg.rl.expert_loss` with `expert_adv`:
  flow_grpo  per-step log-probs of the stored SDE chain under the current parameters, clipped ratio;
  awfm       flow matching on the sampled controls, weighted by exp(advantage / awfm_beta);
  fpo        ratio exp(L_old - L_new) of flow-matching losses on one (t, eps) draw per rollout; one
             update per rollout batch means L_old is L_new at the rollout parameters (stop-gradient).
total = token_weight * token loss + expert_weight * expert loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ar1_jax.action import flow
from ar1_jax.config import Config
from ar1_jax.infer import sampling
from ar1_jax.model.vla import backbone_with_kv, prefix_velocity
from ar1_jax.rl import flow_policy, grpo
from ar1_jax.rl.batch import REWARD_COLUMNS


def policy_logits(cfg: Config, logits, traj_mask):
    """The sampling distributions' logits `[B, T, V]` float32: / temperature, trajectory ids banned at
    reasoning positions, only future-trajectory ids at trajectory positions (`traj_mask [B, T]`)."""
    off, a = cfg.tokens.traj_token_offset, cfg.action
    x = logits.astype(jnp.float32)
    if cfg.rl.temperature > 0:
        x = x / cfg.rl.temperature
    # The rollout's own masks (`sampling.decode`'s ban while reasoning, allow for trajectory tokens).
    return jnp.where(traj_mask[..., None], sampling.allow_range(x, off, off + a.future_bins),
                     sampling.ban_range(x, off, off + a.future_bins + a.history_bins))


def sequence_logp(params: dict, cfg: Config, batch: dict):
    """(log-probs `[B, T]` of each target under `params`' sampling distributions, 0 where neither
    mask counts; the policy logits; the backbone's cache)."""
    logits, cache = backbone_with_kv(params, cfg, batch["input_ids"], batch["positions"], batch["kv_valid"],
                                     batch.get("media"))
    pl = policy_logits(cfg, logits, batch["traj_mask"])
    mask = batch["reasoning_mask"] | batch["traj_mask"]
    return grpo.masked_token_logp(pl, batch["targets"], mask), pl, cache


def _expert_terms(params: dict, cfg: Config, batch: dict, cache, rng):
    rl = cfg.rl
    k, v = jax.lax.stop_gradient(cache.k), jax.lax.stop_gradient(cache.v)
    velocity = prefix_velocity(params, cfg, k, v, batch["kv_valid"], batch["future_start_slot"],
                               batch["action_position"])

    ecfg = flow_policy.ExpertLossConfig(eps_low=rl.expert_eps, eps_high=rl.expert_eps, awfm_beta=rl.awfm_beta)
    adv, keep = batch["expert_adv"], batch["controls_valid"]
    if rl.expert_loss == "flow_grpo":
        states = jnp.moveaxis(batch["sde_states"], 1, 0)  # [S+1, B, H, 2]
        t_grid = flow_policy.time_grid(states.shape[0] - 1)
        new = flow_policy.step_logp(velocity, states, t_grid, rl.sde_noise_level)
        mask = jnp.broadcast_to(keep[:, None], new.shape)
        return flow_policy.flow_grpo_loss(new, batch["sde_logp"], adv, cfg=ecfg, step_mask=mask)
    x = batch["controls"].astype(jnp.float32)
    x_t, t, eps = flow.noisy_inputs(rng, x, cfg.action)
    pred = velocity(x_t, t)
    if rl.expert_loss == "awfm":
        return flow_policy.awfm_loss(pred, x, eps, adv, cfg=ecfg, mask=keep)
    new = flow_policy.fm_per_sample(pred, x, eps)
    return flow_policy.fpo_loss(new, jax.lax.stop_gradient(new), adv, cfg=ecfg, mask=keep)


def rl_loss(params: dict, cfg: Config, batch: dict, rng) -> tuple[jax.Array, dict]:
    """The RL loss of both heads on an RL batch and its metrics (module docstring)."""
    rl = cfg.rl
    logp, pl, cache = sequence_logp(params, cfg, batch)
    mask = batch["reasoning_mask"] | batch["traj_mask"]
    pcfg = grpo.PolicyLossConfig(eps_low=rl.eps_low, eps_high=rl.eps_high, dual_clip=rl.dual_clip or None,
                                 kl_beta=rl.kl_beta)
    if rl.token_loss == "gspo":
        pcfg = grpo.GSPO_CONFIG
    metrics = {}
    total = jnp.zeros((), jnp.float32)
    if rl.token_loss != "none":
        token_loss, tm = grpo.policy_loss_fn(rl.token_loss)(logp, batch["old_logp"], batch["token_adv"], mask,
                                                            cfg=pcfg, ref_logp=batch.get("ref_logp"))
        total = total + rl.token_weight * token_loss
        metrics.update(token_loss=token_loss, clip_frac=tm["clip_frac"], kl=tm["kl"], ratio=tm["ratio_mean"])
    metrics["entropy"] = jax.lax.stop_gradient(grpo.token_entropy(jnp.where(jnp.isfinite(pl), pl, -1e30), mask))
    if rl.expert_loss != "none":
        expert_loss, em = _expert_terms(params, cfg, batch, cache, rng)
        total = total + rl.expert_weight * expert_loss
        metrics.update(expert_loss=expert_loss, **{f"expert_{k}": v for k, v in em.items()})
    rewards = batch["rewards"]
    for i, name in enumerate(REWARD_COLUMNS):
        key = "groups_kept" if name == "kept" else f"reward/{name}"
        metrics[key] = jnp.mean(rewards[:, i])
    metrics["consistency_rate"] = metrics["reward/consistency"]
    metrics["loss"] = total
    return total, metrics
