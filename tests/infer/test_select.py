"""Consistency-checked sampling (infer/select.py): a sample's reasoning against its own trajectory,
and the choice among K samples."""

import numpy as np
import pytest

from ar1_jax.infer import select
from ar1_jax.text import coc
from ar1_jax.text.coc_parse import ParseResult

T = np.arange(1, 65) * 0.1


def _straight(x):
    return np.stack([x, np.zeros_like(x)], -1)


def test_each_sample_against_its_own_trajectory():
    keep = _straight(10.0 * T)  # 10 m/s held
    stop = _straight(np.where(T < 2, 10 * T - 2.5 * T * T, 10.0))  # brakes at 5 m/s^2, stands from 2 s
    go = ParseResult(ok=True, longitudinal=coc.Longitudinal.SET_SPEED, lateral=coc.Lateral.LANE_KEEP)
    halt = ParseResult(ok=True, longitudinal=coc.Longitudinal.STOP, lateral=coc.Lateral.LANE_KEEP)
    decisions = [go, halt, halt, ParseResult(ok=False), None]
    traj = np.stack([keep, stop, keep, keep, keep])
    assert select.sample_consistency(decisions, traj, 10.0).tolist() == [True, True, False, False, False]
    traj[0, 5] = np.nan
    assert not select.sample_consistency(decisions, traj, 10.0)[0]
    with pytest.raises(ValueError, match=r"expected \[K, T, 2\]"):
        select.sample_consistency(decisions[:2], traj, 10.0)


def test_pick_the_most_likely_consistent_sample():
    rng = np.random.default_rng()
    logp = rng.normal(-20, 5, 6)
    consistent = np.array([False, True, False, True, False, False])
    best = 1 if logp[1] >= logp[3] else 3
    assert select.pick_consistent(consistent, logp) == best
    assert select.pick_consistent(np.zeros(6, bool), logp) == int(np.argmax(logp))  # none agrees
    assert select.pick_consistent(np.ones(3, bool), np.array([-1.0, -1.0, -2.0])) == 0  # ties: the first
    with pytest.raises(ValueError, match="differ"):
        select.pick_consistent(consistent, logp[:3])
