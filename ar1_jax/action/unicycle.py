"""AR1's action space: a unicycle driven by (acceleration, curvature) controls at a fixed step.

Controls `[..., T, 2]` are (a in m/s^2, k in 1/m) for the T steps after t0. The state starts at the
origin of the ego frame at t0 with heading 0 and speed v0, and advances per step (paper Eq. 5, the
release's `UnicycleAccelCurvatureActionSpace.action_to_traj`):

    v+       = v + a dt
    heading+ = heading + k v dt + k a dt^2 / 2          (exact for constant a, k over the step)
    x+       = x + dt/2 (v cos heading + v+ cos heading+)   (trapezoid rule; y likewise with sin)

`fit_controls` is the inverse used to label ground truth: the release fits, in four small
Tikhonov-regularised least-squares problems each solved with a Cholesky factorisation,
  1. the heading (smoothed; third-order penalty, heading at t0 pinned to 0),
  2. the speed from the trapezoid relation dp_t = dt/2 (v_t u_t + v_t+1 u_t+1), u = (cos, sin) of
     the heading (third-order penalty, v0 pinned),
  3. the acceleration from speed differences (second-order penalty),
  4. the curvature from heading differences, k_t (v_t dt + a_t dt^2 / 2) = dheading_t (second-order
     penalty).
A penalty of weight `lam` on the n-th difference is scaled by 1 / dt^(2n), so that it penalises the
n-th time derivative. The release reads the heading from the pose rotations; when only positions
are given we fit the heading from the chord directions instead (see `fit_heading`).

Everything is float32, jittable and batched over leading dims `...`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.scipy.linalg import cho_factor, cho_solve
from jaxtyping import Array, Float

from ar1_jax.config import ActionConfig

# Regularisation of the four least-squares fits, as in the release (lambda on the n-th difference, ridge
# on the unknowns). `fit_controls(smoothness=...)` sets the acceleration and curvature lambdas.
HEADING_LAMBDA = 1e-6  # third-order
HEADING_RIDGE = 1e-8
SPEED_LAMBDA = 1e-6  # third-order
SPEED_RIDGE = 1e-4
ACCEL_RIDGE = 1e-4  # second-order, lambda = smoothness
CURVATURE_RIDGE = 1e-4  # second-order, lambda = smoothness
# Heading from positions only (not in the release, which has rotations): chords shorter than this
# (metres) carry little weight, and a small floor keeps the system well posed when standing still.
CHORD_SCALE_M = 1e-2
CHORD_WEIGHT_FLOOR = 1e-4
# Gauss-Newton refinement on positions (not in the release): controls are scaled to z = c / scale, the
# step is damped by REFINE_DAMPING and the objective carries REFINE_SMOOTHNESS |D2 z|^2.
REFINE_SCALE = (1.0, 0.03)  # m/s^2, 1/m
REFINE_DAMPING = 1e-2
REFINE_SMOOTHNESS = 1e-3


@struct.dataclass
class Trajectory:
    """The T future states after t0 (t0 itself excluded), in the ego frame at t0.

    xy: `[..., T, 2]` metres; heading: `[..., T]` radians (unwrapped, 0 = ego x axis at t0);
    speed: `[..., T]` m/s (signed along the heading).
    """

    xy: Float[Array, "... T 2"]
    heading: Float[Array, "... T"]
    speed: Float[Array, "... T"]


# ----------------------------------------------------------------------------------------------------
# Forward model.


def integrate(
    controls: Float[Array, "... T 2"],
    v0: Float[Array, "..."],
    dt: float = 0.1,
    x0: Float[Array, "... 3"] | None = None,
) -> Trajectory:
    """Rolls the unicycle forward from speed `v0`.

    Args:
      controls: `[..., T, 2]` (acceleration m/s^2, curvature 1/m) per step, physical units.
      v0: `[...]` m/s, the speed at t0.
      dt: seconds per step.
      x0: optional `[..., 3]` start pose (x m, y m, heading rad); default the origin with heading 0
        (the ego frame at t0, as AR1 uses it).

    Returns:
      `Trajectory` of the T states after t0: xy `[..., T, 2]` m, heading `[..., T]` rad,
      speed `[..., T]` m/s.
    """
    controls = jnp.asarray(controls, jnp.float32)
    accel, curv = controls[..., 0], controls[..., 1]
    v0 = jnp.broadcast_to(jnp.asarray(v0, jnp.float32), accel.shape[:-1])
    speed = v0[..., None] + jnp.cumsum(accel * dt, axis=-1)  # [..., T], v_1..v_T
    v_prev = jnp.concatenate([v0[..., None], speed[..., :-1]], axis=-1)  # v_0..v_{T-1}
    dheading = curv * v_prev * dt + curv * accel * (0.5 * dt * dt)
    if x0 is None:
        h0 = jnp.zeros_like(v0)
        p0 = jnp.zeros(v0.shape + (2,), jnp.float32)
    else:
        x0 = jnp.asarray(x0, jnp.float32)
        h0 = jnp.broadcast_to(x0[..., 2], v0.shape)
        p0 = jnp.broadcast_to(x0[..., :2], v0.shape + (2,))
    heading = h0[..., None] + jnp.cumsum(dheading, axis=-1)
    h_prev = jnp.concatenate([h0[..., None], heading[..., :-1]], axis=-1)
    vel = speed[..., None] * _unit(heading)  # [..., T, 2]
    vel_prev = v_prev[..., None] * _unit(h_prev)
    xy = p0[..., None, :] + jnp.cumsum((0.5 * dt) * (vel_prev + vel), axis=-2)
    return Trajectory(xy=xy, heading=heading, speed=speed)


# ----------------------------------------------------------------------------------------------------
# Inverse model: ground-truth controls from positions.


def fit_controls(
    xy: Float[Array, "... T 2"],
    v0: Float[Array, "..."],
    dt: float = 0.1,
    smoothness: float = 1e-4,
    heading: Float[Array, "... T"] | None = None,
    refine_steps: int = 1,
) -> Float[Array, "... T 2"]:
    """Least-squares controls whose `integrate` reproduces `xy` (the release's `traj_to_action`).

    The four linear fits of the release (module docstring) leave a few centimetres of drift over
    6.4 s, mostly where the car is slow and the curvature is smoothed towards its neighbours. With
    `refine_steps > 0` we then take that many damped Gauss-Newton steps on the positions themselves,
    `min |integrate(c).xy - xy|^2 + mu |D2 c|^2` (c in scaled units, damping on the step, Cholesky
    solve), which brings the round trip to millimetres; `refine_steps=0` gives the release's labels.

    Args:
      xy: `[..., T, 2]` metres, the T future positions in the ego frame at t0 (t0 at the origin,
        heading 0 there, excluded).
      v0: `[...]` m/s, the speed at t0 (see `estimate_v0`).
      dt: seconds per step.
      smoothness: lambda of the second-order penalty on the acceleration and on the curvature.
      heading: optional `[..., T]` radians, the heading at each future pose (the release reads it
        from the pose rotations). When None it is fitted from the chord directions of `xy`.
      refine_steps: Gauss-Newton steps on the positions after the release's fits (0 = none; a
        Python int, static under jit). A step whose solve is not finite is dropped.

    Returns:
      `[..., T, 2]` (acceleration m/s^2, curvature 1/m), physical units (not normalised, not clipped).
    """
    xy = jnp.asarray(xy, jnp.float32)
    v0 = jnp.broadcast_to(jnp.asarray(v0, jnp.float32), xy.shape[:-2])
    full = jnp.concatenate([jnp.zeros_like(xy[..., :1, :]), xy], axis=-2)  # [..., T+1, 2], t0 first
    dxy = full[..., 1:, :] - full[..., :-1, :]  # [..., T, 2]
    if heading is None:
        theta = fit_heading(dxy, anchor_first=True, dt=dt)  # [..., T+1], theta_0 = 0
    else:
        theta = _smooth_heading(unwrap(jnp.asarray(heading, jnp.float32)), dt)
    v = _fit_speed(dxy, theta, dt, v0)  # [..., T+1]
    a = _fit_accel(v, dt, smoothness)  # [..., T]
    k = _fit_curvature(theta, v, a, dt, smoothness)  # [..., T]
    controls = jnp.stack([a, k], axis=-1)
    if refine_steps > 0:
        controls = _refine(controls, xy, v0, dt, refine_steps)
    return controls


def estimate_v0(
    history_xy: Float[Array, "... H 2"],
    dt: float = 0.1,
    history_heading: Float[Array, "... H"] | None = None,
) -> Float[Array, "..."]:
    """Speed at t0 from the past poses (the release's `estimate_t0_states`).

    Fits the speeds at all H history poses by least squares on the trapezoid relation
    `dp_t = dt/2 (v_t u_t + v_t+1 u_t+1)` with a third-order smoothness penalty (no pinned value)
    and returns the last one.

    Args:
      history_xy: `[..., H, 2]` metres, past positions at `dt` spacing, t0 last (any common frame).
      dt: seconds per step.
      history_heading: optional `[..., H]` radians, the pose headings (the release uses the pose
        rotations); when None they are fitted from the chord directions.

    Returns:
      `[...]` m/s.
    """
    history_xy = jnp.asarray(history_xy, jnp.float32)
    dxy = history_xy[..., 1:, :] - history_xy[..., :-1, :]  # [..., H-1, 2]
    if history_heading is None:
        theta = fit_heading(dxy, anchor_first=False, dt=dt)
    else:
        theta = unwrap(jnp.asarray(history_heading, jnp.float32))
    return _fit_speed(dxy, theta, dt, None)[..., -1]


def fit_heading(
    dxy: Float[Array, "... N 2"], anchor_first: bool = True, dt: float = 0.1
) -> Float[Array, "... N+1"]:
    """Headings at the N + 1 poses joined by the chords `dxy`, from positions alone.

    For a constant-curvature step the chord points along the mean of the end headings, so we solve
    `min sum_t w_t ((theta_t + theta_t+1) / 2 - c_t)^2 + |D3 theta|^2 (lambda = HEADING_LAMBDA)`,
    c_t the unwrapped chord angles, w_t = |d_t|^2 / (|d_t|^2 + CHORD_SCALE_M^2) + floor (chords of a
    standing vehicle have no direction). With `anchor_first` theta_0 is pinned to 0 (the ego heading
    at t0, for future trajectories). Exact for constant speed and curvature. Not in the release,
    which takes headings from the pose rotations.

    Args:
      dxy: `[..., N, 2]` metres, consecutive position differences.
      anchor_first: pin theta_0 = 0.
      dt: seconds per step (scales the smoothness penalty).

    Returns:
      `[..., N + 1]` radians, unwrapped.
    """
    dxy = jnp.asarray(dxy, jnp.float32)
    n = dxy.shape[-2]
    sq = jnp.sum(dxy * dxy, axis=-1)  # [..., N]
    w = sq / (sq + CHORD_SCALE_M**2) + CHORD_WEIGHT_FLOOR
    moving = sq > (0.1 * CHORD_SCALE_M) ** 2
    c = _unwrap_chords(jnp.arctan2(dxy[..., 1], dxy[..., 0]), moving)  # [..., N]
    avg = 0.5 * (np.eye(n, n + 1, dtype=np.float32) + np.eye(n, n + 1, k=1, dtype=np.float32))  # [N, N+1]
    avg = jnp.asarray(avg)
    lhs = jnp.einsum("ti,...t,tj->...ij", avg, w, avg) + _gram(n + 1, 3, HEADING_LAMBDA, dt)
    rhs = jnp.einsum("ti,...t->...i", avg, w * c)
    if anchor_first:
        theta = _spd_solve(lhs[..., 1:, 1:] + HEADING_RIDGE * jnp.eye(n), rhs[..., 1:])
        return jnp.concatenate([jnp.zeros_like(theta[..., :1]), theta], axis=-1)
    return _spd_solve(lhs + HEADING_RIDGE * jnp.eye(n + 1), rhs)


# ----------------------------------------------------------------------------------------------------
# Bounds and normalisation.


def clip_controls(
    controls: Float[Array, "... T 2"], accel_bound: float = 9.8, curvature_bound: float = 0.2
) -> Float[Array, "... T 2"]:
    """Clips (a, k) `[..., T, 2]` to |a| <= accel_bound m/s^2 and |k| <= curvature_bound 1/m."""
    bound = jnp.asarray([accel_bound, curvature_bound], jnp.float32)
    return jnp.clip(jnp.asarray(controls, jnp.float32), -bound, bound)


def within_bounds(
    controls: Float[Array, "... T 2"], accel_bound: float = 9.8, curvature_bound: float = 0.2
) -> Array:
    """`[...]` bool: every step of physical controls `[..., T, 2]` is inside the bounds (the release's
    `is_within_bounds`, which takes normalised controls; here they are physical)."""
    bound = jnp.asarray([accel_bound, curvature_bound], jnp.float32)
    return jnp.all(jnp.abs(controls) <= bound, axis=(-2, -1))


def normalize(controls: Float[Array, "... T 2"], cfg: ActionConfig) -> Float[Array, "... T 2"]:
    """Physical (a m/s^2, k 1/m) `[..., T, 2]` -> z-scores with the dataset statistics in `cfg`."""
    mean, std = _stats(cfg)
    return (jnp.asarray(controls, jnp.float32) - mean) / std


def denormalize(controls: Float[Array, "... T 2"], cfg: ActionConfig) -> Float[Array, "... T 2"]:
    """Z-scores `[..., T, 2]` -> physical (a m/s^2, k 1/m); the inverse of `normalize`."""
    mean, std = _stats(cfg)
    return jnp.asarray(controls, jnp.float32) * std + mean


def unwrap(angle: Float[Array, "... N"]) -> Float[Array, "... N"]:
    """Unwraps angles along the last axis so consecutive differences lie in [-pi, pi]."""
    d = _wrap(jnp.diff(angle, axis=-1))
    return jnp.concatenate([angle[..., :1], angle[..., :1] + jnp.cumsum(d, axis=-1)], axis=-1)


# ----------------------------------------------------------------------------------------------------
# The least-squares pieces.


def _smooth_heading(heading: Float[Array, "... N"], dt: float) -> Float[Array, "... N+1"]:
    """Release step 1: theta_1..theta_N close to `heading`, theta_0 = 0, third-order penalty."""
    n = heading.shape[-1]
    g = _gram(n + 1, 3, HEADING_LAMBDA, dt)
    lhs = jnp.eye(n) * (1.0 + HEADING_RIDGE) + g[1:, 1:]
    theta = _spd_solve(jnp.broadcast_to(lhs, heading.shape + (n,)), heading)
    return jnp.concatenate([jnp.zeros_like(theta[..., :1]), theta], axis=-1)


def _fit_speed(
    dxy: Float[Array, "... N 2"], theta: Float[Array, "... N+1"], dt: float, v0: Float[Array, "..."] | None
) -> Float[Array, "... N+1"]:
    """Release step 2: speeds at the N + 1 poses from `2 dp_t / dt = v_t u_t + v_t+1 u_t+1`.

    The normal matrix of the data term is tridiagonal: 1 or 2 on the diagonal (how many chords touch
    the pose) and cos(theta_t+1 - theta_t) beside it. With `v0` the first speed is pinned.
    """
    n = dxy.shape[-2]
    u = _unit(theta)  # [..., N+1, 2]
    g = (2.0 / dt) * dxy  # [..., N, 2]
    proj_lo = jnp.sum(u[..., :-1, :] * g, axis=-1)  # u_t . g_t, [..., N]
    proj_hi = jnp.sum(u[..., 1:, :] * g, axis=-1)  # u_t+1 . g_t
    pad = jnp.zeros_like(proj_lo[..., :1])
    rhs = jnp.concatenate([proj_lo, pad], -1) + jnp.concatenate([pad, proj_hi], -1)  # [..., N+1]
    count = np.full(n + 1, 2.0, np.float32)
    count[0] = count[-1] = 1.0
    off = jnp.cos(jnp.diff(theta, axis=-1))  # [..., N]
    ata = (jnp.asarray(np.diag(count)) + _offdiag(off, 1) + _offdiag(off, -1))
    lhs = ata + _gram(n + 1, 3, SPEED_LAMBDA, dt)
    if v0 is None:
        return _spd_solve(lhs + SPEED_RIDGE * jnp.eye(n + 1), rhs)
    rhs = rhs[..., 1:] - lhs[..., 1:, 0] * v0[..., None]
    v = _spd_solve(lhs[..., 1:, 1:] + SPEED_RIDGE * jnp.eye(n), rhs)
    return jnp.concatenate([v0[..., None], v], axis=-1)


def _fit_accel(v: Float[Array, "... N+1"], dt: float, lam: float) -> Float[Array, "... N"]:
    """Release step 3: a_t close to (v_t+1 - v_t) / dt, second-order penalty."""
    n = v.shape[-1] - 1
    lhs = jnp.eye(n) * (1.0 + ACCEL_RIDGE) + _gram(n, 2, lam, dt)
    y = jnp.diff(v, axis=-1) / dt
    return _spd_solve(jnp.broadcast_to(lhs, y.shape + (n,)), y)


def _fit_curvature(
    theta: Float[Array, "... N+1"], v: Float[Array, "... N+1"], a: Float[Array, "... N"], dt: float, lam: float
) -> Float[Array, "... N"]:
    """Release step 4: k_t s_t close to theta_t+1 - theta_t, s_t = v_t dt + a_t dt^2 / 2 (the arc
    length of the step), second-order penalty."""
    n = a.shape[-1]
    s = v[..., :-1] * dt + a * (0.5 * dt * dt)
    lhs = _diag(s * s) + _gram(n, 2, lam, dt) + CURVATURE_RIDGE * jnp.eye(n)
    return _spd_solve(lhs, s * jnp.diff(theta, axis=-1))


def _refine(
    controls: Float[Array, "... T 2"], xy: Float[Array, "... T 2"], v0: Float[Array, "..."], dt: float, steps: int
) -> Float[Array, "... T 2"]:
    """Damped Gauss-Newton steps on `|integrate(c, v0).xy - xy|^2 + mu |D2 z|^2`, z = c / scale."""
    t = controls.shape[-2]
    scale = jnp.asarray(REFINE_SCALE, jnp.float32)
    # z is flattened a0 k0 a1 k1 ...; D2 acts on each channel separately.
    smooth = jnp.kron(_gram(t, 2, REFINE_SMOOTHNESS, 1.0), jnp.eye(2, dtype=jnp.float32))
    damping = REFINE_DAMPING * jnp.eye(2 * t, dtype=jnp.float32)

    def one(c, target, speed0):
        def positions(z):
            return integrate(z.reshape(t, 2) * scale, speed0, dt).xy.reshape(-1)

        def step(z, _):
            resid = positions(z) - target.reshape(-1)
            jac = jax.jacfwd(positions)(z)  # [2T, 2T]
            lhs = jac.T @ jac + smooth + damping
            rhs = -(jac.T @ resid + smooth @ z)
            dz = _spd_solve(lhs, rhs)
            return jnp.where(jnp.all(jnp.isfinite(dz)), z + dz, z), None

        z, _ = jax.lax.scan(step, (c / scale).reshape(-1), None, length=steps)
        return z.reshape(t, 2) * scale

    batch = controls.shape[:-2]
    flat = jax.vmap(one)(controls.reshape((-1, t, 2)), xy.reshape((-1, t, 2)), v0.reshape(-1))
    return flat.reshape(batch + (t, 2))


def _gram(n: int, order: int, lam: float, dt: float) -> Array:
    """`[n, n]` lam / dt^(2 order) D^T D, D the order-th difference operator (a constant)."""
    if n <= order:
        return jnp.zeros((n, n), jnp.float32)
    d = np.diff(np.eye(n, dtype=np.float64), n=order, axis=0)
    return jnp.asarray((lam / dt ** (2 * order)) * (d.T @ d), jnp.float32)


def _spd_solve(lhs: Float[Array, "... n n"], rhs: Float[Array, "... n"]) -> Float[Array, "... n"]:
    """Solves lhs x = rhs for symmetric positive definite `lhs` with a Cholesky factorisation."""
    lhs = jnp.broadcast_to(lhs, rhs.shape[:-1] + lhs.shape[-2:])
    factor = cho_factor(lhs, lower=True)
    return cho_solve(factor, rhs[..., None])[..., 0]


def _unwrap_chords(angle: Float[Array, "... N"], moving: Array) -> Float[Array, "... N"]:
    """Unwraps chord angles, starting near 0, carrying the last moving chord across standing ones."""

    def step(prev, inputs):
        ang, mov = inputs
        nxt = jnp.where(mov, prev + _wrap(ang - prev), prev)
        return nxt, nxt

    init = jnp.zeros(angle.shape[:-1], angle.dtype)
    _, out = jax.lax.scan(step, init, (jnp.moveaxis(angle, -1, 0), jnp.moveaxis(moving, -1, 0)))
    return jnp.moveaxis(out, 0, -1)


def _wrap(angle):
    return jnp.arctan2(jnp.sin(angle), jnp.cos(angle))


def _unit(theta):
    return jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=-1)


def _diag(x: Float[Array, "... n"]) -> Float[Array, "... n n"]:
    return x[..., :, None] * jnp.eye(x.shape[-1], dtype=x.dtype)


def _offdiag(x: Float[Array, "... m"], k: int) -> Float[Array, "... m+1 m+1"]:
    """`[..., m + 1, m + 1]` with `x` on the k-th diagonal (k = +1 or -1)."""
    m = x.shape[-1]
    shift = jnp.asarray(np.eye(m + 1, m + 1, k=k, dtype=np.float32))
    pad = [(0, 0)] * (x.ndim - 1) + [(0, 1)] if k > 0 else [(0, 0)] * (x.ndim - 1) + [(1, 0)]
    # Row i of the k=+1 diagonal holds x_i (column i + 1); row i of k=-1 holds x_{i-1}.
    return jnp.pad(x, pad)[..., :, None] * shift


def _stats(cfg: ActionConfig) -> tuple[Array, Array]:
    mean = jnp.asarray([cfg.accel_mean, cfg.curvature_mean], jnp.float32)
    std = jnp.asarray([cfg.accel_std, cfg.curvature_std], jnp.float32)
    return mean, std
