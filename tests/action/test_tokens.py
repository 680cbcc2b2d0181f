"""Discrete trajectory tokens: future controls (128 ids) and history deltas (48 ids)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ar1_jax.action import tokens as K
from ar1_jax.action import unicycle as U
from ar1_jax.config import ActionConfig

CFG = ActionConfig()
T = 64
H = 16


def _rng():
    seed = np.random.SeedSequence().entropy % (2**32)
    print(f"seed {seed}")
    return np.random.default_rng(seed)


def _offset(rng):
    return int(rng.integers(1000, 160_000))  # id of <i0>; the release puts it after the text vocabulary


def test_bin_widths_and_vocab():
    assert K.traj_vocab_size(CFG) == 4000
    assert K.future_bin_width(CFG) == pytest.approx(20 / 2999)
    assert K.history_bin_width(CFG) == pytest.approx((8 / 999, 8 / 999, 20 / 999))


def test_future_round_trip_within_half_a_bin():
    rng = _rng()
    offset = _offset(rng)
    z = rng.uniform(-CFG.future_range, CFG.future_range, (3, 7, T, 2)).astype(np.float32)
    controls = np.asarray(U.denormalize(z, CFG))
    ids = K.encode_future(controls, CFG, offset)
    assert ids.shape == (3, 7, 2 * T) and ids.dtype == jnp.int32
    ids = np.asarray(ids)
    assert ids.min() >= offset and ids.max() < offset + CFG.future_bins
    decoded, valid = K.decode_future(ids, CFG, offset)
    assert decoded.shape == (3, 7, T, 2) and bool(np.asarray(valid).all())
    half = K.future_bin_width(CFG) / 2
    z_err = np.abs(np.asarray(U.normalize(decoded, CFG)) - z)
    assert z_err.max() <= half * (1 + 1e-3) + 1e-5, (z_err.max(), half)
    phys_err = np.abs(np.asarray(decoded) - controls)
    assert phys_err[..., 0].max() <= half * CFG.accel_std * 1.01 + 1e-5
    assert phys_err[..., 1].max() <= half * CFG.curvature_std * 1.01 + 1e-6


def test_future_interleaving_is_a0_k0_a1_k1():
    rng = _rng()
    offset = _offset(rng)
    # Distinct bins per channel and step: a at even bins, k at odd bins, all different.
    bins = rng.permutation(CFG.future_bins)[: 2 * T].reshape(T, 2)
    z = -CFG.future_range + bins * K.future_bin_width(CFG)
    ids = np.asarray(K.encode_future(U.denormalize(z.astype(np.float32), CFG), CFG, offset))
    np.testing.assert_array_equal(ids[0::2], offset + bins[:, 0])  # a0 a1 ... at even positions
    np.testing.assert_array_equal(ids[1::2], offset + bins[:, 1])  # k0 k1 ... at odd positions


def test_future_clips_at_the_range_edges():
    offset = 151_643
    z = np.array([[-1e3, 1e3], [-CFG.future_range, CFG.future_range], [-10.5, 10.5], [0.0, 0.0]], np.float32)
    ids = np.asarray(K.encode_future(U.denormalize(z, CFG), CFG, offset)) - offset
    np.testing.assert_array_equal(ids, [0, 2999, 0, 2999, 0, 2999, 1500, 1500])
    decoded, valid = K.decode_future(ids + offset, CFG, offset)
    np.testing.assert_allclose(np.asarray(U.normalize(decoded, CFG))[:3], [[-10, 10]] * 3, atol=1e-4)


def _history(rng, batch, max_xy=3.9, max_z=9.9):
    """Poses whose every delta (the first one is the oldest pose itself) is inside the clip range."""
    deltas = np.concatenate([rng.uniform(-max_xy, max_xy, (batch, H, 2)), rng.uniform(-max_z, max_z, (batch, H, 1))],
                            -1)
    return np.cumsum(deltas, axis=1).astype(np.float32), deltas


def test_history_round_trip_within_half_a_bin():
    rng = _rng()
    offset = _offset(rng)
    xyz, deltas = _history(rng, 9)
    ids = np.asarray(K.encode_history(xyz, CFG, offset))
    assert ids.shape == (9, 3 * H) and ids.dtype == np.int32  # 16 poses -> 16 deltas -> 48 ids
    lo, hi = offset + CFG.future_bins, offset + CFG.future_bins + CFG.history_bins
    assert ids.min() >= lo and ids.max() < hi
    np.testing.assert_allclose(K.history_deltas(xyz), deltas, atol=1e-4)
    dec, valid = K.decode_history(ids, CFG, offset)
    assert dec.shape == (9, H, 3) and bool(np.asarray(valid).all())
    half = np.asarray(K.history_bin_width(CFG)) / 2
    err = np.abs(np.asarray(dec) - deltas)
    assert (err.max(axis=(0, 1)) <= half * 1.001 + 1e-4).all(), (err.max(axis=(0, 1)), half)
    # Positions come back as the running sum, within H half-bins.
    pos_err = np.abs(np.cumsum(np.asarray(dec), axis=1) - xyz).max(axis=(0, 1))
    assert (pos_err <= H * half * 1.001 + 1e-3).all()


def test_history_layout_and_first_delta():
    offset = 0
    # A car at 10 m/s along x: poses x = -1.5 .. 0; the first delta is the oldest pose itself (-15 m),
    # clipped to the -4 m edge bin; the others are 1 m steps.
    x = np.arange(-15, 1, dtype=np.float32)
    xyz = np.stack([x, np.zeros(H), np.full(H, 0.25)], -1).astype(np.float32)
    bins = np.asarray(K.encode_history(xyz, CFG, offset)) - CFG.future_bins
    step_x = round((1.0 + 4.0) / 8.0 * 999)
    mid = round(4.0 / 8.0 * 999)  # 499.5 rounds half to even -> 500
    np.testing.assert_array_equal(bins[0:3], [0, mid, round((0.25 + 10) / 20 * 999)])  # x0 y0 z0
    np.testing.assert_array_equal(bins[3::3], [step_x] * (H - 1))  # x1 x2 ...
    np.testing.assert_array_equal(bins[4::3], [mid] * (H - 1))  # y1 y2 ...
    np.testing.assert_array_equal(bins[5::3], [mid] * (H - 1))  # z1 z2 ... (zero steps)


def test_history_clips_at_the_edges():
    xyz = np.zeros((H, 3), np.float32)
    xyz[0] = (100.0, -100.0, 50.0)  # first delta far out of range
    xyz[1] = (100.0 + 4.0, -100.0 - 4.0, 50.0 - 10.0)  # exactly at the edges
    bins = np.asarray(K.encode_history(xyz, CFG, 7)).reshape(H, 3) - 7 - CFG.future_bins
    np.testing.assert_array_equal(bins[0], [999, 0, 999])
    np.testing.assert_array_equal(bins[1], [999, 0, 0])
    assert bins.min() >= 0 and bins.max() <= 999


def test_invalid_ids_are_reported():
    rng = _rng()
    offset = _offset(rng)
    controls = np.asarray(U.denormalize(rng.uniform(-5, 5, (2, T, 2)).astype(np.float32), CFG))
    ids = np.array(K.encode_future(controls, CFG, offset))
    ids[0, 5] = offset - 1  # below the range
    ids[1, 100] = offset + CFG.future_bins  # a history id where a future one belongs
    dec, valid = jax.jit(K.decode_future, static_argnums=(1, 2))(ids, CFG, offset)
    valid = np.asarray(valid)
    assert valid.shape == (2, 2 * T) and valid.sum() == 2 * 2 * T - 2
    assert not valid[0, 5] and not valid[1, 100]
    assert np.isfinite(np.asarray(dec)).all()
    with pytest.raises(ValueError, match=r"first at index \(0, 5\)"):
        K.check_ids(valid, "future ids")

    xyz, _ = _history(rng, 1)
    hid = np.array(K.encode_history(xyz, CFG, offset))
    hid[0, 47] = offset + CFG.future_bins - 1  # a future id in the history
    hid[0, 3] = offset + CFG.future_bins + CFG.history_bins  # past the end
    _, hvalid = K.decode_history(hid, CFG, offset)
    hvalid = np.asarray(hvalid)
    assert hvalid.shape == (1, 48) and hvalid.sum() == 46 and not hvalid[0, 47] and not hvalid[0, 3]
    with pytest.raises(ValueError, match=r"history ids: 2 id\(s\).*\(0, 3\)"):
        K.check_ids(hvalid, "history ids")
    K.check_ids(np.ones((2, 3), bool))  # all valid: no error


def test_decode_rejects_bad_lengths():
    with pytest.raises(ValueError, match="even number"):
        K.decode_future(np.zeros((3, 127), np.int32), CFG, 0)
    with pytest.raises(ValueError, match="multiple of 3"):
        K.decode_history(np.zeros((47,), np.int32), CFG, 0)
