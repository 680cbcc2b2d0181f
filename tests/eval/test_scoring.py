"""ar1_jax/eval/scoring.py: meta-actions of hand-made trajectories, consistency with decisions, the
constant-velocity baseline by hand, and collisions of the ego footprint with agent boxes."""

import dataclasses

import numpy as np
import pytest

from ar1_jax.config import get_config
from ar1_jax.eval import scoring
from ar1_jax.text import coc
from ar1_jax.world.families import generate
from ar1_jax.world.scene import Agent

M, Lm = coc.LongitudinalMeta, coc.LateralMeta
T = np.arange(1, 65) * 0.1  # 64 future steps at 10 Hz


def _straight(x):
    return np.stack([x, 0 * x, 0 * x], -1)


def test_meta_actions_of_simple_trajectories():
    meta = scoring.meta_actions_from_trajectory
    assert meta(_straight(10 * T), 0 * T, 10.0) == coc.MetaAction(M.KEEP, Lm.STRAIGHT)
    assert meta(_straight(10 * T + T * T), 0 * T, 10.0).longitudinal == M.ACCELERATE  # +2 m/s^2
    assert meta(_straight(10 * T - 0.5 * T * T), 0 * T, 10.0).longitudinal == M.DECELERATE  # -1 m/s^2
    assert meta(_straight(10 * T + 0.04 * T * T), 0 * T, 10.0).longitudinal == M.KEEP  # 0.08 < 0.1 m/s^2
    assert meta(_straight(10 * T + 0.06 * T * T), 0 * T, 10.0).longitudinal == M.ACCELERATE  # 0.12 > 0.1
    assert meta(_straight(np.minimum(10 * T - T * T, 25.0)), 0 * T, 10.0).longitudinal == M.STOP  # at t = 5 s
    assert meta(_straight(0 * T), 0 * T, 0.0).longitudinal == M.STOP  # standing throughout
    lane_change = np.stack([10 * T, 3.5 * np.clip(T / 4, 0, 1), 0 * T], -1)
    assert meta(lane_change, 0 * T, 10.0).lateral == Lm.LEFT
    assert meta(lane_change * np.array([1, -1, 1]), 0 * T, 10.0).lateral == Lm.RIGHT
    assert meta(lane_change * np.array([1, 0.1, 1]), 0 * T, 10.0).lateral == Lm.STRAIGHT  # 0.35 m < 0.5 m
    arc = np.stack([8 * np.sin(T * 0.5), -8 * (1 - np.cos(T * 0.5)), 0 * T], -1)  # right turn, radius 8 m
    assert meta(arc, -T * 0.5, 4.0).lateral == Lm.RIGHT
    quarter = np.stack([8 * np.sin(T * 0.2), -8 * (1 - np.cos(T * 0.2)), 0 * T], -1)  # ends heading -1.28 rad
    assert meta(quarter, None, 1.6).lateral == Lm.RIGHT  # no yaw: the heading of the last displacement


def test_consistency_of_decisions_and_meta_actions():
    keep = coc.MetaAction(M.KEEP, Lm.STRAIGHT)
    assert scoring.is_consistent(coc.Longitudinal.SET_SPEED, coc.Lateral.LANE_KEEP, None, keep)
    assert not scoring.is_consistent(coc.Longitudinal.STOP, coc.Lateral.LANE_KEEP, None, keep)
    left = coc.MetaAction(M.KEEP, Lm.LEFT)
    assert scoring.is_consistent(None, coc.Lateral.LANE_CHANGE, "left", left)
    assert not scoring.is_consistent(None, coc.Lateral.LANE_CHANGE, "right", left)
    rec = dict(longitudinal=np.int32(coc.LONGITUDINAL.index(coc.Longitudinal.STOP)), lateral=np.int32(-1),
               direction=np.int32(-1), future_xyz=_straight(np.minimum(10 * T - T * T, 25.0)).astype(np.float32),
               future_yaw=np.zeros(64, np.float32), v0=np.float32(10.0))
    assert scoring.record_consistent(rec)
    assert not scoring.record_consistent(dict(rec, future_xyz=_straight(10 * T).astype(np.float32)))


def test_constant_velocity_ade_by_hand():
    assert scoring.constant_velocity_ade(_straight(10 * T), 10.0) == pytest.approx(0.0, abs=1e-12)
    # 1 m to the left all along: 1 m; 0.5 m/s^2 slower: mean of 0.25 t^2 over t = 0.1 .. 6.4 s.
    assert scoring.constant_velocity_ade(_straight(10 * T) + [0, 1, 0], 10.0) == pytest.approx(1.0)
    assert scoring.constant_velocity_ade(_straight(10 * T - 0.25 * T * T), 10.0) == pytest.approx(
        float(np.mean(0.25 * T * T)))


def test_collisions_with_hand_placed_boxes():
    sc = generate(1_000_000, get_config("ar1_tiny"), family="lane_follow")
    n = len(sc.times)
    assert scoring.collisions(sc) == []  # the expert's own future is collision free
    steps = np.arange(sc.t0_index + 1, sc.t0_index + 6)  # t = 0.1 .. 0.5 s
    ego = np.zeros((5, 3))  # parked at the origin facing +x: body x in [-1, 3.8], y in [-0.975, 0.975]
    cone = Agent(0, "cone", (0.4, 0.4, 0.7), np.tile([4.5, 0.0, 0.0], (n, 1)), (255, 110, 0))
    assert scoring.collisions(dataclasses.replace(sc, agents=[cone]), ego, steps) == []  # 0.5 m ahead
    touching = dataclasses.replace(cone, poses=np.tile([4.0, 0.0, 0.0], (n, 1)))  # [3.8, 4.2]: touches
    assert [i for i, _ in scoring.collisions(dataclasses.replace(sc, agents=[touching]), ego, steps)] == [0] * 5
    # A car driving +y at 5 m/s across x = 1.4 (the ego body's centre), its front 2.25 m ahead of its
    # centre at y = -5 + 5 t: the front passes the ego's right side (y = -0.975) at t = 0.355 s.
    y = -5.0 + 5.0 * np.clip(sc.times, 0, None)
    car = Agent(1, "vehicle", (4.5, 1.9, 1.5), np.stack([np.full(n, 1.4), y, np.full(n, np.pi / 2)], -1), (1, 1, 1))
    hits = scoring.collisions(dataclasses.replace(sc, agents=[cone, car]), ego, steps)
    assert [i for i, _ in hits] == [1, 1] and [round(t, 3) for _, t in hits] == [0.4, 0.5]
