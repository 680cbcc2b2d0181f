"""eval/metrics.py against hand-computed values: minADE/minFDE (K=1, ties, short horizons), L2 at
fixed times, comfort shares, decision accuracy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ar1_jax.eval import metrics
from ar1_jax.text import coc
from ar1_jax.text.coc_parse import ParseResult


def _straight(t, v, dt=0.1):
    """[T, 2]: constant speed v along x, rows at dt .. T dt."""
    return np.stack([v * dt * np.arange(1, t + 1), np.zeros(t)], -1).astype(np.float32)


def test_min_ade_fde_by_hand():
    gt = _straight(10, 10.0)[None]  # 1 m per row
    offsets = np.array([2.0, 1.0, 3.0], np.float32)  # sample k is gt shifted by offsets[k] metres in y
    pred = np.repeat(gt[:, None], 3, axis=1)
    pred[0, :, :, 1] += offsets[:, None]
    m = metrics.min_ade_fde(pred, gt, dt=0.1, horizons_s=(0.3, 1.0))
    assert int(m["best"][0]) == 1
    for h in (0.3, 1.0):
        np.testing.assert_allclose(m[f"min_ade@{h}"], [1.0])
        np.testing.assert_allclose(m[f"min_fde@{h}"], [1.0])

    # A sample whose error grows linearly: the ADE over n rows is the mean, the FDE the last row's.
    grow = gt.copy()[:, None]
    grow[0, 0, :, 0] += 0.5 * np.arange(1, 11)  # error 0.5, 1.0, .., 5.0 m
    m = metrics.min_ade_fde(grow, gt, dt=0.1, horizons_s=(0.2, 0.4, 1.0))  # K = 1
    for h, ade, fde in ((0.2, 0.75, 1.0), (0.4, 1.25, 2.0), (1.0, 2.75, 5.0)):
        np.testing.assert_allclose(m[f"min_ade@{h}"], [ade], rtol=1e-6)
        np.testing.assert_allclose(m[f"min_fde@{h}"], [fde], rtol=1e-6)


def test_min_ade_picks_by_the_full_horizon_and_the_first_of_ties():
    gt = np.zeros((1, 4, 2), np.float32)
    early = np.array([[0, 0], [0, 0], [0, 0], [8, 0]], np.float32)  # ADE 2.0, perfect for 0.3 s
    steady = np.full((4, 2), [1.0, 0.0], np.float32)  # ADE 1.0
    m = metrics.min_ade_fde(np.stack([early, steady])[None], gt, dt=0.1, horizons_s=(0.3, 0.4))
    assert int(m["best"][0]) == 1  # chosen by the full horizon, so 0.3 s reports the steady sample
    np.testing.assert_allclose(m["min_ade@0.3"], [1.0])
    tie = metrics.min_ade_fde(np.stack([steady, -steady, early])[None], gt, dt=0.1, horizons_s=(0.4,))
    assert int(tie["best"][0]) == 0


def test_min_ade_fde_jits_and_batches_with_random_inputs():
    rng = np.random.default_rng()
    pred = rng.standard_normal((3, 6, 64, 2)).astype(np.float32)
    gt = rng.standard_normal((3, 64, 2)).astype(np.float32)
    got = jax.jit(metrics.min_ade_fde)(pred, gt)
    d = np.linalg.norm(pred - gt[:, None], axis=-1)
    best = d.mean(-1).argmin(-1)
    for b in range(3):
        np.testing.assert_allclose(got["min_ade@3.0"][b], d[b, best[b], :30].mean(), rtol=1e-5)
        np.testing.assert_allclose(got["min_fde@6.4"][b], d[b, best[b], 63], rtol=1e-5)
    with pytest.raises(ValueError, match="horizon 7.0 s"):
        metrics.min_ade_fde(pred, gt, horizons_s=(7.0,))
    with pytest.raises(ValueError, match=r"pred \[B, K, T, 2\]"):
        metrics.min_ade_fde(pred[:, 0], gt)


def test_l2_at_fixed_times():
    gt = _straight(30, 10.0)[None]
    pred = gt.copy()
    pred[0, :, 1] = 0.1 * np.arange(1, 31)  # 0.1 m more lateral error every row
    got = metrics.l2_at(pred, gt, dt=0.1, times_s=(1.0, 2.0, 3.0))
    np.testing.assert_allclose([float(got[f"l2@{t}"][0]) for t in (1.0, 2.0, 3.0)], [1.0, 2.0, 3.0], rtol=1e-6)


def test_comfort_shares_of_gentle_and_violent_drives():
    gentle = _straight(64, 8.0)[None]
    share = metrics.comfort_shares(gentle, jnp.array([8.0]))
    assert float(share["comfortable"][0]) == 1.0
    assert all(float(share[f"comfort/{k}"][0]) == 1.0 for k in metrics.COMFORT_BOUNDS)
    # Brake from 15 m/s at 8 m/s^2 (the bound is -4.05) until stopped, then stand still.
    t = 0.1 * np.arange(1, 65)
    x = np.where(t < 15 / 8, 15 * t - 4 * t**2, 15**2 / 16)
    hard = np.stack([x, np.zeros(64)], -1)[None].astype(np.float32)
    share = metrics.comfort_shares(hard, jnp.array([15.0]))
    assert float(share["comfortable"][0]) == 0.0
    # t0 and 0.1 .. 1.8 s (19 of the 65 points) brake at -8 m/s^2; the stop itself is a jerk, not a
    # longitudinal acceleration, so only those 19 fail lon_accel.
    np.testing.assert_allclose(share["comfort/lon_accel"], [46 / 65], rtol=1e-6)
    assert float(share["comfort/lon_jerk"][0]) < 1.0 and float(share["comfort/yaw_rate"][0]) == 1.0
    bad = metrics.comfort_shares(np.full((1, 64, 2), np.nan, np.float32), jnp.array([5.0]))
    assert float(bad["comfortable"][0]) == 0.0 and float(bad["comfort/yaw_rate"][0]) == 0.0


def test_decision_accuracy_by_axis():
    L, A = coc.Longitudinal, coc.Lateral
    lon = list(L)
    lat = list(A)

    def d(lo=None, la=None):
        return ParseResult(ok=True, longitudinal=lo, lateral=la)

    gt = [d(lon[0], lat[0]), d(lon[1], lat[1]), d(lon[2]), ParseResult(ok=False)]
    pred = [d(lon[0], lat[0]), d(lon[1], lat[0]), None, d(lon[3], lat[3])]
    acc = metrics.decision_accuracy(pred, gt)
    assert acc == {"longitudinal": 2 / 3, "lateral": 1 / 2, "both": 1 / 2}
    with pytest.raises(ValueError, match="2 predictions for 3"):
        metrics.decision_accuracy(pred[:2], gt[:3])
