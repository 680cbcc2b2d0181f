"""Kinematics of a trajectory and the nuPlan comfort bounds, shared by RL rewards and evaluation.

Trajectories are `[N, T, 2]` metres in the ego frame at t0 (x forward, y left; one row per `dt` s,
t0 excluded); v0 `[N]` m/s is the speed at t0. Jittable jnp (`dt` and `window` static).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ar1_jax.action.unicycle import unwrap
from ar1_jax.world.planner import STOP_SPEED

__all__ = ["COMFORT_BOUNDS", "HOLD_SPEED", "COMFORT_WINDOW", "SG_ORDER", "trajectory_headings", "kinematics",
           "comfort_checks", "comfort"]

# jaxtyping shapes as aliases (pyflakes reads strings inside annotations as Python). XY: metres, ego0.
XY = Float[Array, "N T 2"]
PerSample = Float[Array, "N"]
Flags = Bool[Array, "N"]
Headings = Float[Array, "N T"]


#: Comfort bounds (nuPlan, AR1_FACTS), name -> (low, high) in m/s^2, m/s^3, rad/s, rad/s^2.
COMFORT_BOUNDS: dict[str, tuple[float, float]] = {
    "lon_accel": (-4.05, 2.40), "lat_accel": (-4.89, 4.89), "jerk": (-np.inf, 8.37),
    "lon_jerk": (-4.13, 4.13), "yaw_rate": (-0.95, 0.95), "yaw_accel": (-1.93, 1.93),
}
#: Below this speed (m/s) the direction of travel is noise: the heading is held (the planner's stop speed).
HOLD_SPEED = STOP_SPEED
#: Savitzky-Golay window (points at `dt`) of the comfort derivatives, polynomial order SG_ORDER. Raw
#: 0.1 s differences turn centimetre noise into jerks of tens of m/s^3 and flag the expert's own braking
#: onsets (9 points: 11 of 96 generated expert drives fail a bound, against 45 with plain differences);
#: NAVSIM also smooths its comfort signals with Savitzky-Golay filters. Window 3: central differences.
COMFORT_WINDOW, SG_ORDER = 9, 2


@functools.lru_cache(maxsize=32)
def _savgol_matrix(k: int, window: int, dt: float) -> np.ndarray:
    """`[K, K]` first derivative (per second) by least-squares polynomials of order SG_ORDER over
    `window` points centred on each row; the first and last rows use the first and last full window
    (scipy's mode "interp"). Exact for polynomials up to SG_ORDER."""
    if window < SG_ORDER + 1:
        raise ValueError(f"comfort: window must be at least {SG_ORDER + 1} points, got {window}")
    window = min(window | 1, k if k % 2 else k - 1)  # odd, at most K
    half = window // 2
    out = np.zeros((k, k))
    for i in range(k):
        s = min(max(i - half, 0), k - window)
        tau = (np.arange(s, s + window) - i) * dt
        out[i, s:s + window] = np.linalg.pinv(np.vander(tau, SG_ORDER + 1, increasing=True))[1]
    return out.astype(np.float32)


def _deriv(x: Array, window: int, dt: float) -> Array:
    """Savitzky-Golay first derivative of `x` along its last axis (same length)."""
    return jnp.einsum("ij,...j->...i", jnp.asarray(_savgol_matrix(x.shape[-1], window, float(dt))), x)


def _velocities(xy: XY, v0: PerSample, dt: float) -> Array:
    """Velocities `[N, T+1, 2]` at t = 0, dt, .., T dt: (v0, 0) at t0, central differences of the positions
    (t0 at the origin) inside, a second-order one-sided difference at the end. Exact for quadratic motion."""
    xy = jnp.asarray(xy, jnp.float32)
    p = jnp.concatenate([jnp.zeros_like(xy[..., :1, :]), xy], axis=-2)
    first = jnp.stack([jnp.asarray(v0, jnp.float32), jnp.zeros(xy.shape[:-2], jnp.float32)], -1)[..., None, :]
    last = (3 * p[..., -1:, :] - 4 * p[..., -2:-1, :] + p[..., -3:-2, :]) / (2 * dt)
    return jnp.concatenate([first, (p[..., 2:, :] - p[..., :-2, :]) / (2 * dt), last], axis=-2)


def _held_heading(vel: Array) -> Array:
    """Direction of travel of velocities whose first row is the t0 velocity (heading 0 by definition);
    rows slower than HOLD_SPEED repeat the last faster row's heading. Unwrapped."""
    raw = jnp.arctan2(vel[..., 1], vel[..., 0]).at[..., 0].set(0.0)
    idx = jnp.arange(raw.shape[-1])
    moving = (jnp.linalg.norm(vel, axis=-1) >= HOLD_SPEED) | (idx == 0)
    last = jax.lax.cummax(jnp.where(moving, idx, 0), axis=raw.ndim - 1)
    return unwrap(jnp.take_along_axis(raw, last, axis=-1))


def trajectory_headings(xy: XY, dt: float = 0.1) -> Headings:
    """The heading (rad, ego0, unwrapped) at each of the T future points: the direction of travel
    (`_velocities`; v0 does not enter), held while slower than HOLD_SPEED; 0 at t0."""
    xy = jnp.asarray(xy, jnp.float32)
    return _held_heading(_velocities(xy, jnp.zeros(xy.shape[:-2]), dt))[..., 1:]


def kinematics(xy: XY, v0: PerSample, dt: float = 0.1, window: int = COMFORT_WINDOW) -> dict[str, Array]:
    """Derivatives of a trajectory started at the origin heading +x at speed v0, each `[N, T+1]` at
    t = 0, dt, .., T dt.

    V: velocities by finite differences with V_0 = (v0, 0) (`_velocities`); speed |V|; heading psi the
    direction of V (held below HOLD_SPEED). D: the Savitzky-Golay first derivative along time (`window`
    points, order 2; window 3 is central differences).
      lon_accel  m/s^2    D(speed), the rate of change of speed
      yaw_rate   rad/s    D(psi)
      lat_accel  m/s^2    speed x yaw_rate (centripetal)
      jerk       m/s^3    D(hypot(lon_accel, lat_accel)), the rate of change of the acceleration's size
      lon_jerk   m/s^3    D(lon_accel)
      yaw_accel  rad/s^2  D(yaw_rate)
    """
    vel = _velocities(xy, v0, dt)
    speed = jnp.linalg.norm(vel, axis=-1)
    lon_accel = _deriv(speed, window, dt)
    yaw_rate = _deriv(_held_heading(vel), window, dt)
    lat_accel = speed * yaw_rate
    return dict(lon_accel=lon_accel, lat_accel=lat_accel, jerk=_deriv(jnp.hypot(lon_accel, lat_accel), window, dt),
                lon_jerk=_deriv(lon_accel, window, dt), yaw_rate=yaw_rate, yaw_accel=_deriv(yaw_rate, window, dt))


def comfort_checks(xy: XY, v0: PerSample, dt: float = 0.1, window: int = COMFORT_WINDOW) -> dict[str, Flags]:
    """Per `COMFORT_BOUNDS` name, bool `[N]`: the quantity of `kinematics` stays within its bounds at
    every step; a trajectory or v0 with a NaN or inf fails every bound."""
    kin = kinematics(xy, v0, dt, window)
    finite = jnp.all(jnp.isfinite(jnp.asarray(xy)), axis=(-2, -1)) & jnp.isfinite(jnp.asarray(v0))
    return {k: finite & jnp.all((kin[k] >= lo) & (kin[k] <= hi), axis=-1) for k, (lo, hi) in COMFORT_BOUNDS.items()}


def comfort(xy: XY, v0: PerSample, dt: float = 0.1, window: int = COMFORT_WINDOW) -> PerSample:
    """Fraction of the six comfort bounds satisfied over the whole horizon, `[N]` in {0, 1/6, .., 1}."""
    checks = comfort_checks(xy, v0, dt, window)
    return jnp.mean(jnp.stack([c.astype(jnp.float32) for c in checks.values()], -1), axis=-1)
