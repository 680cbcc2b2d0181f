"""Unicycle action space: forward model, least-squares inverse, v0 estimate, bounds, normalisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ar1_jax.action import unicycle as U
from ar1_jax.config import ActionConfig

DT = 0.1
T = 64
B = 24  # one batch size for the fits, so each jitted variant compiles once

_jit_fit = jax.jit(U.fit_controls, static_argnames=("dt", "smoothness", "refine_steps"))


def _fit(xy, v0, **kwargs):
    """fit_controls on [B, ...] inputs, run with two leading dims [2, B/2] (one compile for all tests)."""
    lead = (2, B // 2)
    xy = np.asarray(xy).reshape(lead + (T, 2))
    kwargs = {k: (np.asarray(v).reshape(lead + (T,)) if k == "heading" else v) for k, v in kwargs.items()}
    out = _jit_fit(xy, np.asarray(v0).reshape(lead), **kwargs)
    assert out.shape == lead + (T, 2)
    return out.reshape(B, T, 2)


def _rng():
    seed = np.random.SeedSequence().entropy % (2**32)
    print(f"seed {seed}")
    return np.random.default_rng(seed)


def _integrate_loop(controls, v0, dt=DT):
    """Plain-numpy reference: the per-step update written out, float64."""
    controls = np.asarray(controls, np.float64)
    batch, steps = controls.shape[:-2], controls.shape[-2]
    xy = np.zeros(batch + (steps, 2))
    heading = np.zeros(batch + (steps,))
    speed = np.zeros(batch + (steps,))
    for idx in np.ndindex(*batch):
        x = y = h = 0.0
        v = float(np.asarray(v0)[idx])
        for t in range(steps):
            a, k = controls[idx + (t,)]
            v1 = v + a * dt
            h1 = h + k * v * dt + k * a * dt * dt / 2
            x += dt / 2 * (v * np.cos(h) + v1 * np.cos(h1))
            y += dt / 2 * (v * np.sin(h) + v1 * np.sin(h1))
            v, h = v1, h1
            xy[idx + (t,)] = (x, y)
            heading[idx + (t,)] = h
            speed[idx + (t,)] = v
    return xy, heading, speed


def _smooth(rng, n, harmonics):
    s = np.linspace(0.0, 1.0, n)
    out = np.zeros(n)
    for j in range(1, harmonics + 1):
        out += rng.normal() / j**1.5 * np.sin(np.pi * j * s + rng.uniform(0, 2 * np.pi))
    return out


def _smooth_profiles(rng, batch, steps=T, dt=DT):
    """Smooth random speed (0..30 m/s, a third of them starting from rest) and curvature (|k| up to
    0.05 1/m) profiles; returns physical controls [B, T, 2] and v0 [B]."""
    controls = np.zeros((batch, steps, 2))
    v0 = np.zeros(batch)
    time = np.arange(steps + 1) * dt
    for b in range(batch):
        cruise = rng.uniform(1.0, 30.0)
        speed = cruise * (0.75 + 0.25 * np.tanh(_smooth(rng, steps + 1, 3)))
        if b % 3 == 0:  # from rest: a C1 ramp over 3..6 s
            tau = rng.uniform(3.0, 6.0)
            speed = speed * np.where(time < tau, 0.5 - 0.5 * np.cos(np.pi * np.minimum(time / tau, 1.0)), 1.0)
        v0[b] = speed[0]
        controls[b, :, 0] = np.diff(speed) / dt
        k = _smooth(rng, steps, 4)
        controls[b, :, 1] = k / np.abs(k).max() * rng.uniform(0.0, 0.05)
    return controls.astype(np.float32), v0.astype(np.float32)


def test_integrate_matches_numpy_loop():
    rng = _rng()
    controls = np.stack([rng.uniform(-3, 3, (3, 5, T)), rng.uniform(-0.08, 0.08, (3, 5, T))], -1).astype(np.float32)
    v0 = rng.uniform(0, 30, (3, 5)).astype(np.float32)
    traj = U.integrate(controls, v0, DT)
    xy, heading, speed = _integrate_loop(controls, v0)
    assert traj.xy.shape == (3, 5, T, 2) and traj.heading.shape == (3, 5, T) and traj.speed.shape == (3, 5, T)
    assert traj.xy.dtype == jnp.float32
    scale = np.abs(xy).max()
    np.testing.assert_allclose(traj.xy, xy, rtol=0, atol=1e-5 * max(scale, 1.0))
    np.testing.assert_allclose(traj.heading, heading, rtol=0, atol=1e-5 * max(np.abs(heading).max(), 1.0))
    np.testing.assert_allclose(traj.speed, speed, rtol=0, atol=1e-5 * max(np.abs(speed).max(), 1.0))


def test_integrate_start_pose_is_a_rigid_motion():
    rng = _rng()
    controls = np.stack([rng.uniform(-2, 2, (4, T)), rng.uniform(-0.05, 0.05, (4, T))], -1).astype(np.float32)
    v0 = rng.uniform(0, 20, 4).astype(np.float32)
    pose = np.stack([rng.uniform(-50, 50, 4), rng.uniform(-50, 50, 4), rng.uniform(-np.pi, np.pi, 4)], -1)
    base = U.integrate(controls, v0)
    moved = U.integrate(controls, v0, x0=pose.astype(np.float32))
    c, s = np.cos(pose[:, 2]), np.sin(pose[:, 2])
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # [4, 2, 2]
    expect = np.einsum("bij,btj->bti", rot, np.asarray(base.xy)) + pose[:, None, :2]
    np.testing.assert_allclose(moved.xy, expect, atol=2e-4)
    np.testing.assert_allclose(moved.heading, np.asarray(base.heading) + pose[:, None, 2], atol=1e-5)


def test_fit_controls_round_trip_on_smooth_profiles():
    rng = _rng()
    for _ in range(2):
        controls, v0 = _smooth_profiles(rng, B)
        traj = U.integrate(controls, v0)
        fitted = _fit(traj.xy, v0)
        assert fitted.shape == (B, T, 2) and fitted.dtype == jnp.float32
        err = np.abs(np.asarray(U.integrate(fitted, v0).xy - traj.xy)).max()
        assert err < 0.05, err
        # Where the car moves, the curvature is recovered too (at rest it is unobservable).
        moving = np.asarray(traj.speed) > 3.0
        k_err = np.abs(np.asarray(fitted[..., 1]) - controls[..., 1])[moving]
        assert np.percentile(k_err, 95) < 0.01, np.percentile(k_err, 95)


def test_release_only_mode_with_given_headings():
    # The release's four linear fits alone (headings given, no refinement): centimetres, not millimetres.
    rng = _rng()
    controls, v0 = _smooth_profiles(rng, B)
    traj = U.integrate(controls, v0)
    release = _fit(traj.xy, v0, heading=traj.heading, refine_steps=0)
    err = np.abs(np.asarray(U.integrate(release, v0).xy - traj.xy)).max()
    assert err < 0.15, err


def test_fit_controls_exact_cases_and_standing_still():
    rng = _rng()
    cases = {
        "straight 30 m/s": (np.zeros((T, 2)), 30.0),
        "arc": (np.stack([np.zeros(T), np.full(T, 0.04)], -1), 12.0),
        "braking to rest": (np.stack([np.full(T, -4.0), np.full(T, 0.01)], -1), 25.6),
        "standing still": (np.zeros((T, 2)), 0.0),
    }
    n = len(cases)
    filler, filler_v0 = _smooth_profiles(rng, B - n)
    controls = np.concatenate([np.stack([c for c, _ in cases.values()]), filler]).astype(np.float32)
    v0 = np.concatenate([[v for _, v in cases.values()], filler_v0]).astype(np.float32)
    traj = U.integrate(controls, v0)
    fitted = np.asarray(_fit(traj.xy, v0))
    assert np.isfinite(fitted).all()
    err = np.abs(np.asarray(U.integrate(fitted, v0).xy - traj.xy)).max(axis=(-1, -2))[:n]
    assert (err < 5e-3).all(), dict(zip(cases, err))
    np.testing.assert_allclose(fitted[3], 0.0, atol=1e-6)  # nothing moves, nothing to explain
    np.testing.assert_allclose(fitted[0], 0.0, atol=1e-2)  # ridge and float32 noise at 30 m/s


def test_clip_controls_and_bounds():
    rng = _rng()
    controls = np.stack([rng.normal(0, 20, (6, T)), rng.normal(0, 0.5, (6, T))], -1).astype(np.float32)
    clipped = np.asarray(U.clip_controls(controls, accel_bound=9.8, curvature_bound=0.2))
    assert np.abs(clipped[..., 0]).max() <= 9.8 + 1e-6 and np.abs(clipped[..., 1]).max() <= 0.2 + 1e-7
    inside = (np.abs(controls[..., 0]) <= 9.8) & (np.abs(controls[..., 1]) <= 0.2)  # per channel where in range
    np.testing.assert_array_equal(clipped[..., 0][np.abs(controls[..., 0]) <= 9.8],
                                  controls[..., 0][np.abs(controls[..., 0]) <= 9.8])
    assert not bool(np.asarray(U.within_bounds(controls)).all())
    assert bool(np.asarray(U.within_bounds(clipped)).all())
    np.testing.assert_array_equal(np.asarray(U.within_bounds(controls)), inside.all(-1))


def test_normalize_round_trip_and_stats():
    rng = _rng()
    cfg = ActionConfig()
    controls = np.stack([rng.normal(0, 2, (5, T)), rng.normal(0, 0.05, (5, T))], -1).astype(np.float32)
    z = np.asarray(U.normalize(controls, cfg))
    np.testing.assert_allclose(z[..., 0], (controls[..., 0] - cfg.accel_mean) / cfg.accel_std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z[..., 1], (controls[..., 1] - cfg.curvature_mean) / cfg.curvature_std, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(U.denormalize(z, cfg), controls, rtol=1e-5, atol=1e-6)


def _history(rng, batch, curved):
    """16 past poses at 10 Hz ending at t0, generated with the unicycle itself; true speed at t0."""
    steps = 15
    v_start = rng.uniform(0.5, 30.0, batch)
    accel = rng.uniform(-1.5, 1.5, (batch, 1)) * np.ones((batch, steps))
    accel = np.maximum(accel, -v_start[:, None] / (steps * DT) * 0.9)  # stay moving forward
    curv = (rng.uniform(-0.05, 0.05, (batch, 1)) + 0.01 * np.sin(np.linspace(0, 3, steps))) if curved \
        else np.zeros((batch, steps))
    controls = np.stack([accel, curv], -1).astype(np.float32)
    start = np.stack([rng.uniform(-20, 20, batch), rng.uniform(-20, 20, batch), rng.uniform(-np.pi, np.pi, batch)], -1)
    traj = U.integrate(controls, v_start.astype(np.float32), x0=start.astype(np.float32))
    xy = np.concatenate([start[:, None, :2], np.asarray(traj.xy)], axis=1)  # [B, 16, 2]
    heading = np.concatenate([start[:, None, 2], np.asarray(traj.heading)], axis=1)
    return xy.astype(np.float32), heading.astype(np.float32), np.asarray(traj.speed)[:, -1]


def test_estimate_v0_constant_speed_lines_exact():
    rng = _rng()
    speed = rng.uniform(0.0, 30.0, 16).astype(np.float32)
    angle = rng.uniform(-np.pi, np.pi, 16)
    steps = np.arange(-15, 1) * DT  # t0 last
    xy = (speed[:, None, None] * steps[None, :, None]) * np.stack([np.cos(angle), np.sin(angle)], -1)[:, None, :]
    v = np.asarray(jax.jit(U.estimate_v0)(xy.astype(np.float32)))
    np.testing.assert_allclose(v, speed, rtol=1e-4, atol=1e-4)


def test_estimate_v0_on_curves():
    rng = _rng()
    xy, heading, v_true = _history(rng, 32, curved=True)
    est = np.asarray(jax.jit(U.estimate_v0)(xy))
    assert np.abs(est - v_true).max() < 0.05, np.abs(est - v_true).max()
    est_h = np.asarray(jax.jit(U.estimate_v0)(xy, history_heading=heading))
    assert np.abs(est_h - v_true).max() < 0.05, np.abs(est_h - v_true).max()


def test_jit_and_vmap_agree_with_eager():
    rng = _rng()
    controls, v0 = _smooth_profiles(rng, B)
    eager = U.integrate(controls, v0)
    mapped = jax.vmap(lambda c, v: U.integrate(c, v))(controls, v0)
    jitted = jax.jit(U.integrate)(controls, v0)
    np.testing.assert_allclose(mapped.xy, eager.xy, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jitted.xy, eager.xy, rtol=1e-5, atol=1e-5)
    batched = _fit(eager.xy, v0)  # two leading dims
    fit_vmap = jax.jit(jax.vmap(U.fit_controls))(eager.xy, v0)  # one trajectory at a time
    np.testing.assert_allclose(fit_vmap, batched, atol=1e-3)


def test_integrate_gradients_are_finite():
    rng = _rng()
    controls, v0 = _smooth_profiles(rng, 4)
    target = np.asarray(U.integrate(controls, v0).xy) + rng.normal(0, 0.5, (4, T, 2))

    def objective(c, v):
        return jnp.mean(jnp.sum((U.integrate(c, v).xy - target) ** 2, -1))

    grad = jax.jit(jax.grad(objective, argnums=(0, 1)))
    g_c, g_v = grad(jnp.asarray(controls), jnp.asarray(v0))
    assert np.isfinite(np.asarray(g_c)).all() and np.isfinite(np.asarray(g_v)).all()
    assert np.abs(np.asarray(g_c)).max() > 0
    # Standing still (v = 0) is a valid point too.
    g0, _ = grad(jnp.zeros((4, T, 2)), jnp.zeros(4))
    assert np.isfinite(np.asarray(g0)).all()


@pytest.mark.parametrize("anchor", [True, False])
def test_fit_heading_exact_on_arcs(anchor):
    rng = _rng()
    k = rng.uniform(-0.05, 0.05, 5).astype(np.float32)
    v0 = rng.uniform(2, 30, 5).astype(np.float32)
    controls = np.stack([np.zeros((5, T)), np.broadcast_to(k[:, None], (5, T))], -1).astype(np.float32)
    traj = U.integrate(controls, v0)
    full = np.concatenate([np.zeros((5, 1, 2)), np.asarray(traj.xy)], 1)
    theta = np.asarray(jax.jit(U.fit_heading, static_argnames="anchor_first")(np.diff(full, axis=1), anchor))
    expect = np.concatenate([np.zeros((5, 1)), np.asarray(traj.heading)], 1)
    np.testing.assert_allclose(theta, expect, atol=2e-4)
