"""Flow matching for the action expert (the release's `diffusion/flow_matching.py` conventions).

t = 0 is noise and t = 1 is data: `x_t = t x + (1 - t) eps`, eps ~ N(0, I); the model regresses the
velocity `x - eps` (MSE). Training times are `t = flow_time_scale * (1 - s)`, s ~ Beta(flow_beta_a,
flow_beta_b) (0.999 and Beta(1.5, 1) in the release: t in [0, 0.999], weighted towards noise).
Sampling integrates dx/dt = v(x, t) from t = 0 to 1 with `num_steps` Euler steps at t_i = i / num_steps.

Times broadcast against the data from the left: `t` of shape `[B]` (or any leading batch shape)
multiplies `x` of shape `[B, ...]`; a scalar applies to every sample.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ar1_jax.config import ActionConfig

VelocityFn = Callable[[Array, Array], Array]


def interpolate(x: Float[Array, "B ..."], eps: Float[Array, "B ..."], t: Float[Array, "*b"]) -> Float[Array, "B ..."]:
    """The noisy point `t x + (1 - t) eps`; `t` is a scalar or a leading-batch array (`[B]`)."""
    t = _expand(t, x)
    return (t * x + (1.0 - t) * eps).astype(x.dtype)


def target_velocity(x: Float[Array, "B ..."], eps: Float[Array, "B ..."]) -> Float[Array, "B ..."]:
    """The regression target `x - eps` (the velocity of the straight path from eps to x)."""
    return x - eps


def sample_time(key: Array, shape: tuple[int, ...], cfg: ActionConfig) -> Float[Array, "*shape"]:
    """Training times `flow_time_scale * (1 - s)`, s ~ Beta(flow_beta_a, flow_beta_b), float32."""
    s = jax.random.beta(key, cfg.flow_beta_a, cfg.flow_beta_b, shape, jnp.float32)
    return cfg.flow_time_scale * (1.0 - s)


def noisy_inputs(
    key: Array, x: Float[Array, "B ..."], cfg: ActionConfig
) -> tuple[Float[Array, "B ..."], Float[Array, "B"], Float[Array, "B ..."]]:
    """One training draw for clean `x` `[B, ...]`: (x_t, t `[B]`, eps), with t from `sample_time`."""
    k_t, k_eps = jax.random.split(key)
    t = sample_time(k_t, x.shape[:1], cfg)
    eps = jax.random.normal(k_eps, x.shape, jnp.float32).astype(x.dtype)
    return interpolate(x, eps, t), t, eps


def loss(
    pred_velocity: Float[Array, "B ..."],
    x: Float[Array, "B ..."],
    eps: Float[Array, "B ..."],
    mask: Array | None = None,
    denominator: Array | None = None,
) -> Float[Array, ""]:
    """Mean squared error between `pred_velocity` and `x - eps`, in float32.

    `mask` (optional, bool or float) broadcasts against the data from the left (e.g. `[B]` per sample
    or `[B, T]` per step); the mean is over the masked elements (0 when none is). `denominator`
    (optional, with `mask`) replaces the masked element count the sum is divided by: gradient
    accumulation passes the whole batch's count so that micro-batch losses add up to its mean.
    """
    err = jnp.square(pred_velocity.astype(jnp.float32) - target_velocity(x, eps).astype(jnp.float32))
    if mask is None:
        return jnp.mean(err)
    m = jnp.broadcast_to(_expand(jnp.asarray(mask, jnp.float32), err), err.shape)
    den = jnp.sum(m) if denominator is None else denominator
    return jnp.sum(err * m) / jnp.where(den > 0, den, 1.0)


def euler_sample(
    velocity_fn: VelocityFn,
    x_shape: tuple[int, ...],
    key: Array | None,
    num_steps: int,
    dtype=jnp.float32,
    noise: Array | None = None,
    batch_ndim: int = 1,
) -> Array:
    """Integrates dx/dt = velocity_fn(x, t) from noise at t = 0 to data at t = 1 with Euler steps.

    Args:
      velocity_fn: `(x_t [x_shape], t) -> v [x_shape]`; `t` is a float32 array of shape
        `x_shape[:batch_ndim]` filled with the current time (per batch element, as the expert takes it;
        `batch_ndim=0` passes a scalar).
      x_shape: shape of the sample, batch dims first (e.g. `[B, 64, 2]`).
      key: PRNG key for the starting noise N(0, I) (unused when `noise` is given).
      num_steps: Euler steps (static); t_i = i / num_steps, step 1 / num_steps.
      dtype: dtype of the state and of the noise.
      noise: optional `x_shape` starting point (replaces the draw from `key`).
      batch_ndim: leading dims of `x_shape` that `t` carries.

    Returns:
      `x_shape` sample at t = 1. Jittable (a `lax.fori_loop`); jit the caller with `num_steps` static.
    """
    if noise is None:
        if key is None:
            raise ValueError("euler_sample: pass a PRNG `key` or the starting `noise`")
        noise = jax.random.normal(key, x_shape, jnp.float32)
    x = jnp.asarray(noise).astype(dtype)
    if x.shape != tuple(x_shape):
        raise ValueError(f"euler_sample: noise has shape {x.shape}, expected x_shape {tuple(x_shape)}")
    t_shape = tuple(x_shape[:batch_ndim])
    dt = 1.0 / num_steps

    def body(i, x):
        t = jnp.full(t_shape, i.astype(jnp.float32) / num_steps, jnp.float32)
        v = velocity_fn(x, t)
        return (x.astype(jnp.float32) + dt * v.astype(jnp.float32)).astype(dtype)

    return jax.lax.fori_loop(0, num_steps, body, x)


def _expand(t, x) -> Array:
    """Right-pads `t` with singleton dims so it broadcasts against `x` from the left."""
    t = jnp.asarray(t, jnp.float32)
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))
