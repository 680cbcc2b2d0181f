"""RL for the flow-matching action expert: Flow-GRPO (SDE sampling), advantage-weighted FM and FPO.

Conventions are those of `ar1_jax.action.flow`: t = 0 is noise, t = 1 is data, x_t = t x + (1 - t) eps,
and the expert's `velocity_fn(x_t [N, A, 2], t [N]) -> [N, A, 2]` estimates E[x - eps | x_t] (any
trailing sample shape works: `[N, ...]`). Losses are pure functions of per-sample quantities, so an RL
trainer evaluates the expert under its new parameters inside its own jitted loss and passes the result.

**Flow-GRPO.** The Euler ODE sampler is deterministic, so it has no action log-probability. `sde_sample`
replaces it with an SDE that has the same marginals p_t, whose Euler-Maruyama steps are Gaussian:
  1. x_t | x ~ N(t x, (1 - t)^2 I), so the score is grad log p_t(x_t) = -E[eps | x_t] / (1 - t).
  2. From x_t = t x_hat + (1 - t) eps_hat and v = x_hat - eps_hat: eps_hat = x_t - t v, hence
     score(x_t, t) = -(x_t - t v) / (1 - t)   (= -(x_t - t x_hat) / (1 - t)^2 with x_hat = x_t + (1 - t) v).
  3. For any sigma_t >= 0, dx = [v + (sigma_t^2 / 2) score] dt + sigma_t dW has the same Fokker-Planck
     marginals as the ODE dx = v dt (the score term's diffusion cancels the added noise's).
  4. sigma_t = a sqrt((1 - t) / t) (a = `noise_level`): large near the noise end, 0 at the data end;
     drift = v - sigma_t^2 (x - t v) / (2 (1 - t)) = v - a^2 (x - t v) / (2 t) for unclamped t.
  5. Euler-Maruyama on the grid t_i = i / S: x_{i+1} ~ N(x_i + drift dt, sigma_{t_i}^2 dt I); sigma uses
     max(t_i, t_1) (t_0 = 0 would give infinite noise) while the score uses the true t_i (finite at 0:
     score = -x). Every step is stochastic; a -> 0 recovers `flow.euler_sample`.
Each step's Gaussian log-density (summed over the sample's dims) is the per-step log-prob, and
`flow_grpo_loss` clips the ratio exp(new - old) per step, PPO style.

**AWFM** (likelihood-free): the flow-matching loss on the sampled actions, weighted per sample by
w = exp(min(A / beta, log w_max)) ("exp", advantage-weighted regression) or max(A, 0) ("relu"),
self-normalised over the batch (sum w L / sum w). Positive weights only: bad samples are
down-weighted, never pushed away from, so the update stays a (weighted) supervised regression.

**FPO** (likelihood-free PPO): ratio = exp(L_old - L_new) of per-sample conditional flow-matching
losses on shared (t, eps) draws (a lower loss under the new params ~ a higher likelihood), clipped.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ar1_jax.action import flow
from ar1_jax.rl import grpo

VelocityFn = Callable[[Array, Array], Array]
_LOG_2PI = math.log(2.0 * math.pi)
_MIN_STD = 1e-20  # keeps the log-density finite at noise_level = 0 (where it means nothing)


class SDETrajectory(NamedTuple):
    """One batch of SDE rollouts (float32).

    x_final: `[N, ...]` the sample at t = 1 (= states[-1]).
    states: `[S + 1, N, ...]` x_0 (the starting noise) .. x_S.
    means: `[S, N, ...]` the Gaussian mean of each transition x_i -> x_{i+1}.
    stds: `[S]` the per-step std sigma_{t_i} sqrt(dt_i) (one scalar per step, shared by all dims).
    logp: `[N, S]` log N(x_{i+1}; mean_i, std_i^2 I), summed over the sample's dims (nats).
    t_grid: `[S + 1]` the times t_0 = 0 .. t_S = 1.
    """

    x_final: Array
    states: Array
    means: Array
    stds: Array
    logp: Array
    t_grid: Array


def time_grid(num_steps: int) -> Float[Array, "S1"]:
    """`[num_steps + 1]` uniform times i / num_steps (float32), as `flow.euler_sample` steps them."""
    return jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps


def sde_sigma(t: Float[Array, "*b"], t_min: Float[Array, ""], noise_level: float) -> Float[Array, "*b"]:
    """Diffusion coefficient a sqrt((1 - t) / t) with t clamped to [t_min, 1]."""
    tc = jnp.clip(jnp.asarray(t, jnp.float32), t_min, 1.0)
    return noise_level * jnp.sqrt((1.0 - tc) / tc)


def transition(
    velocity_fn: VelocityFn, x: Float[Array, "N ..."], t, dt, t_min, noise_level: float
) -> tuple[Float[Array, "N ..."], Float[Array, ""]]:
    """Gaussian of one SDE step from `x` at time `t` (scalar) over `dt`: (mean `[N, ...]`, std scalar)."""
    x = x.astype(jnp.float32)
    t = jnp.asarray(t, jnp.float32)
    v = velocity_fn(x, jnp.full(x.shape[:1], t, jnp.float32)).astype(jnp.float32)
    sigma = sde_sigma(t, t_min, noise_level)
    drift = v - (jnp.square(sigma) / (2.0 * (1.0 - t))) * (x - t * v)
    return x + drift * dt, sigma * jnp.sqrt(dt)


def gaussian_logp(y: Float[Array, "N ..."], mean: Float[Array, "N ..."], std) -> Float[Array, "N"]:
    """log N(y; mean, std^2 I) summed over every non-batch dim (nats), float32."""
    std = jnp.maximum(jnp.asarray(std, jnp.float32), _MIN_STD)
    z = (y.astype(jnp.float32) - mean.astype(jnp.float32)) / std
    per = -0.5 * jnp.square(z) - jnp.log(std) - 0.5 * _LOG_2PI
    return jnp.sum(per.reshape(per.shape[0], -1), axis=-1)


def sde_sample(
    velocity_fn: VelocityFn,
    noise: Float[Array, "N ..."],
    key: Array,
    num_steps: int,
    noise_level: float = 0.2,
) -> SDETrajectory:
    """Samples with the marginal-preserving SDE (module docstring) from `noise` at t = 0 to t = 1.

    Args:
      velocity_fn: `(x [N, ...], t [N]) -> v [N, ...]`, the expert's velocity (float32 out preferred).
      noise: `[N, ...]` the starting point x_0 (e.g. N(0, I) draws, `[N, A, 2]`).
      key: PRNG key for the per-step Gaussian noise.
      num_steps: S Euler-Maruyama steps (static).
      noise_level: a in sigma_t = a sqrt((1 - t) / t); 0 gives the Euler ODE (log-probs then meaningless).

    Returns:
      `SDETrajectory`; its `logp [N, S]` are the old-policy log-probs of each transition.
    """
    t_grid = time_grid(num_steps)
    x0 = jnp.asarray(noise, jnp.float32)
    keys = jax.random.split(key, num_steps)

    def step(x, inp):
        t, t_next, k = inp
        mean, std = transition(velocity_fn, x, t, t_next - t, t_grid[1], noise_level)
        x_next = mean + std * jax.random.normal(k, x.shape, jnp.float32)
        return x_next, (x_next, mean, std, gaussian_logp(x_next, mean, std))

    x_final, (xs, means, stds, logp) = jax.lax.scan(step, x0, (t_grid[:-1], t_grid[1:], keys))
    states = jnp.concatenate([x0[None], xs], axis=0)
    return SDETrajectory(x_final, states, means, stds, logp.T, t_grid)


def step_gaussians(
    velocity_fn: VelocityFn, states: Float[Array, "S1 N ..."], t_grid: Float[Array, "S1"], noise_level: float
) -> tuple[Float[Array, "S N ..."], Float[Array, "S"], Float[Array, "N S"]]:
    """Recomputes each stored transition's Gaussian under `velocity_fn`: (means, stds, logp `[N, S]`).

    Differentiable wrt whatever `velocity_fn` closes over (the new params). The steps run in a
    `lax.scan`, calling `velocity_fn` on `[N, ...]` at a time, as sampling did.
    """
    states = jnp.asarray(states, jnp.float32)
    t_grid = jnp.asarray(t_grid, jnp.float32)

    def step(_, inp):
        x, x_next, t, t_next = inp
        mean, std = transition(velocity_fn, x, t, t_next - t, t_grid[1], noise_level)
        return None, (mean, std, gaussian_logp(x_next, mean, std))

    _, (means, stds, logp) = jax.lax.scan(step, None, (states[:-1], states[1:], t_grid[:-1], t_grid[1:]))
    return means, stds, logp.T


def step_logp(
    velocity_fn: VelocityFn, states: Float[Array, "S1 N ..."], t_grid: Float[Array, "S1"], noise_level: float
) -> Float[Array, "N S"]:
    """Per-step log-probs `[N, S]` of the stored transitions under `velocity_fn` (see `step_gaussians`)."""
    return step_gaussians(velocity_fn, states, t_grid, noise_level)[2]


def gaussian_step_kl(
    mean_p: Float[Array, "S N ..."], mean_q: Float[Array, "S N ..."], stds: Float[Array, "S"]
) -> Float[Array, "N S"]:
    """KL(N(mean_p, std^2 I) || N(mean_q, std^2 I)) per sample and step: sum ||mean_p - mean_q||^2 / (2 std^2)."""
    d = mean_p.astype(jnp.float32) - mean_q.astype(jnp.float32)
    std = jnp.maximum(jnp.asarray(stds, jnp.float32), _MIN_STD).reshape((-1,) + (1,) * (d.ndim - 1))
    kl = 0.5 * jnp.square(d / std)
    return jnp.sum(kl.reshape(kl.shape[:2] + (-1,)), axis=-1).T


@dataclasses.dataclass(frozen=True)
class ExpertLossConfig:
    """Settings of the expert losses.

    eps_low, eps_high, dual_clip: the PPO clip of the per-step (Flow-GRPO) or per-sample (FPO) ratio,
      as in `grpo.PolicyLossConfig` (dual clip off by default).
    kl_beta: Flow-GRPO's weight of a per-step KL (e.g. `gaussian_step_kl` to a reference), 0 = off.
    max_log_ratio: the Flow-GRPO and FPO log-ratios are clamped to +-this before exp (no overflow; no
      gradient beyond).
    awfm_weighting: "exp" (exp(A / beta), capped at awfm_max_weight) or "relu" (max(A, 0)).
    awfm_beta, awfm_max_weight: the temperature and cap of the "exp" weights.
    """

    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: Optional[float] = None
    kl_beta: float = 0.0
    max_log_ratio: float = 20.0
    awfm_weighting: str = "exp"
    awfm_beta: float = 1.0
    awfm_max_weight: float = 20.0

    def __post_init__(self):
        if self.awfm_weighting not in ("exp", "relu"):
            raise ValueError(f"ExpertLossConfig: awfm_weighting {self.awfm_weighting!r} is not 'exp' or 'relu'")
        if self.awfm_beta <= 0:
            raise ValueError("ExpertLossConfig: awfm_beta must be > 0")

    @property
    def clip(self) -> grpo.PolicyLossConfig:
        return grpo.PolicyLossConfig(eps_low=self.eps_low, eps_high=self.eps_high, dual_clip=self.dual_clip)


def flow_grpo_loss(
    new_logp: Float[Array, "N S"],
    old_logp: Float[Array, "N S"],
    advantages: Float[Array, "N"],
    *,
    cfg: ExpertLossConfig = ExpertLossConfig(),
    step_mask: Optional[Array] = None,
    kl: Optional[Float[Array, "N S"]] = None,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """Flow-GRPO: clipped surrogate on each step's ratio exp(new - old), mean over counted steps.

    `step_mask` (`[N, S]` or `[S]`, optional) selects the trained steps; `kl` (`[N, S]`, optional) is
    added with `cfg.kl_beta`. Metrics: clip_frac (fraction of counted steps clipped), ratio_mean, kl.
    """
    new = new_logp.astype(jnp.float32)
    old = jax.lax.stop_gradient(old_logp.astype(jnp.float32))
    m = jnp.ones_like(new) if step_mask is None else jnp.broadcast_to(jnp.asarray(step_mask, jnp.float32), new.shape)
    log_r = jnp.clip(jnp.where(m > 0, new - old, 0.0), -cfg.max_log_ratio, cfg.max_log_ratio)
    ratio = jnp.exp(log_r)
    adv = jnp.asarray(advantages, jnp.float32)[:, None]
    per, clipped, dual = grpo.clipped_surrogate(ratio, adv, cfg.clip)
    kl_v = jnp.zeros_like(new) if kl is None else kl.astype(jnp.float32)
    if cfg.kl_beta:
        if kl is None:
            raise ValueError("flow_grpo_loss: cfg.kl_beta > 0 needs kl")
        per = per + cfg.kl_beta * kl_v
    metrics = {
        "clip_frac": _mean(clipped.astype(jnp.float32), m),
        "dual_clip_frac": _mean(dual.astype(jnp.float32), m),
        "ratio_mean": _mean(ratio, m),
        "kl": _mean(kl_v, m),
    }
    return _mean(per, m), metrics


def fm_per_sample(
    pred_velocity: Float[Array, "N ..."], x: Float[Array, "N ..."], eps: Float[Array, "N ..."]
) -> Float[Array, "N"]:
    """Per-sample flow-matching loss: mean over the sample's dims of (pred - (x - eps))^2, float32."""
    err = jnp.square(pred_velocity.astype(jnp.float32) - flow.target_velocity(x, eps).astype(jnp.float32))
    return jnp.mean(err.reshape(err.shape[0], -1), axis=-1)


def awfm_weights(
    advantages: Float[Array, "N"], cfg: ExpertLossConfig = ExpertLossConfig(), mask: Optional[Array] = None
) -> Float[Array, "N"]:
    """Non-negative AWFM weights, self-normalised to mean 1 over the counted samples (0 elsewhere).

    "exp": exp(min(A / beta, log max_weight)); "relu": max(A, 0). All-zero raw weights give all 0.
    """
    a = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))
    m = jnp.ones_like(a) if mask is None else jnp.asarray(mask, jnp.float32)
    if cfg.awfm_weighting == "exp":
        w = jnp.exp(jnp.minimum(a / cfg.awfm_beta, math.log(cfg.awfm_max_weight)))
    else:
        w = jnp.maximum(a, 0.0)
    w = w * m
    total = jnp.sum(w)
    return jnp.where(total > 0, w * jnp.sum(m) / jnp.where(total > 0, total, 1.0), 0.0)


def awfm_loss(
    pred_velocity: Float[Array, "N ..."],
    x: Float[Array, "N ..."],
    eps: Float[Array, "N ..."],
    advantages: Float[Array, "N"],
    *,
    cfg: ExpertLossConfig = ExpertLossConfig(),
    mask: Optional[Array] = None,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """Advantage-weighted flow matching on sampled actions `x` `[N, ...]`.

    The caller draws (t, eps) (e.g. `flow.noisy_inputs`) and evaluates `pred_velocity` =
    velocity_fn_new(interpolate(x, eps, t), t). Loss = sum_i w_i L_i / sum_i w_i with L_i =
    `fm_per_sample` and w = `awfm_weights` (constants). Metrics: weight_max, ess (effective sample
    size (sum w)^2 / sum w^2 over the counted count, in (0, 1]), fm (unweighted mean FM loss).
    """
    per = fm_per_sample(pred_velocity, x, eps)
    m = jnp.ones_like(per) if mask is None else jnp.asarray(mask, jnp.float32)
    w = awfm_weights(advantages, cfg, m)
    n = jnp.maximum(jnp.sum(m), 1.0)
    sw2 = jnp.sum(jnp.square(w))
    metrics = {
        "weight_max": jnp.max(w),
        "ess": jnp.where(sw2 > 0, jnp.square(jnp.sum(w)) / jnp.where(sw2 > 0, sw2, 1.0) / n, 0.0),
        "fm": _mean(per, m),
    }
    return jnp.sum(w * per) / n, metrics


def fpo_loss(
    new_fm: Float[Array, "N *M"],
    old_fm: Float[Array, "N *M"],
    advantages: Float[Array, "N"],
    *,
    cfg: ExpertLossConfig = ExpertLossConfig(),
    mask: Optional[Array] = None,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """FPO: ratio_i = exp(L_old_i - L_new_i), clipped PPO surrogate per sample, mean over samples.

    `new_fm`, `old_fm`: per-sample conditional FM losses (`fm_per_sample`) under the new and the
    rollout params on the SAME (t, eps) draws, `[N]` or `[N, M]` for M draws (averaged first).
    Metrics: clip_frac, ratio_mean.
    """
    new = new_fm.astype(jnp.float32).reshape(new_fm.shape[0], -1).mean(-1)
    old = jax.lax.stop_gradient(old_fm.astype(jnp.float32)).reshape(old_fm.shape[0], -1).mean(-1)
    m = jnp.ones_like(new) if mask is None else jnp.asarray(mask, jnp.float32)
    ratio = jnp.exp(jnp.clip(old - new, -cfg.max_log_ratio, cfg.max_log_ratio))
    per, clipped, _ = grpo.clipped_surrogate(ratio, jnp.asarray(advantages, jnp.float32), cfg.clip)
    metrics = {"clip_frac": _mean(clipped.astype(jnp.float32), m), "ratio_mean": _mean(ratio, m)}
    return _mean(per, m), metrics


EXPERT_LOSSES: dict[str, Callable] = {"flow_grpo": flow_grpo_loss, "awfm": awfm_loss, "fpo": fpo_loss}


def expert_loss_fn(name: str) -> Callable:
    """The expert loss registered as `name` ("flow_grpo", "awfm", "fpo"); ValueError listing the choices.

    Signatures differ by method (log-probs, velocities or FM losses in); each returns (loss, metrics).
    """
    return grpo._lookup(EXPERT_LOSSES, name, "expert loss")


def _mean(x, m) -> Array:
    return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)
