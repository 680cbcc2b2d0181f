"""Scoring of trajectories, shared by evaluation and RL rewards: the coarse meta-action of a trajectory,
its consistency with the Chain-of-Causation decisions, the constant-velocity baseline, and collisions
with a world's agents.

Trajectories are in the ego0 frame (x forward, y left, metres; t0 excluded, one row per `dt` s) unless
a function says world frame; speeds m/s, accelerations m/s^2, angles rad.
"""

from __future__ import annotations

import math

import numpy as np

from ar1_jax.text import coc
from ar1_jax.world.geometry import boxes_overlap_np
from ar1_jax.world.planner import STOP_SPEED
from ar1_jax.world.scene import Scene, ego_footprint

__all__ = ["KEEP_ACCEL", "META_WINDOW_S", "LATERAL_M", "TURN_RAD", "meta_actions_from_trajectory",
           "is_consistent", "record_consistent", "constant_velocity_ade", "collisions"]

# Meta-action thresholds (AR1 auto-labels): stopped below STOP_SPEED (0.3 m/s); |mean acceleration| below
# 0.1 m/s^2 over the first META_WINDOW_S is "keep"; a lateral move is > 0.5 m or a heading change > 0.5 rad.
KEEP_ACCEL, META_WINDOW_S, LATERAL_M, TURN_RAD = 0.1, 3.0, 0.5, 0.5


def meta_actions_from_trajectory(future_xyz: np.ndarray, future_yaw: np.ndarray | None, v0: float,
                                 dt: float = 0.1, window_s: float = META_WINDOW_S) -> coc.MetaAction:
    """The coarse meta-action of a future trajectory: xyz `[T, 3]` and yaw `[T]` (or None) in ego0, t0
    excluded; v0 the speed at t0 (m/s).

    Longitudinal: stop when the speed drops below STOP_SPEED (0.3 m/s) during the horizon (or stays
    below it throughout); otherwise the mean acceleration over the first `window_s` seconds:
    > KEEP_ACCEL (0.1 m/s^2) accelerate, < -KEEP_ACCEL decelerate, else keep. Lateral: a heading
    change > TURN_RAD (0.5 rad) at the end is a turn to its side; else a lateral displacement whose
    largest magnitude exceeds LATERAL_M (0.5 m) is a move to its side; else straight.
    """
    xy = np.asarray(future_xyz, np.float64)[:, :2]
    full = np.concatenate([np.zeros((1, 2)), xy])
    v_mid = np.hypot(*np.diff(full, axis=0).T) / dt
    if (v0 >= STOP_SPEED and v_mid.min() < STOP_SPEED) or (v0 < STOP_SPEED and v_mid.max() < STOP_SPEED):
        lon = coc.LongitudinalMeta.STOP
    else:
        n = int(round(window_s / dt))
        v_w = np.hypot(*(full[n] - full[n - 2])) / (2 * dt)  # speed at t = (n - 1) dt
        a_mean = (v_w - v0) / ((n - 1) * dt)
        lon = (coc.LongitudinalMeta.ACCELERATE if a_mean > KEEP_ACCEL else
               coc.LongitudinalMeta.DECELERATE if a_mean < -KEEP_ACCEL else coc.LongitudinalMeta.KEEP)
    if future_yaw is not None:
        yaw_end = float(np.unwrap(np.concatenate([[0.0], np.asarray(future_yaw, np.float64)]))[-1])
    else:
        d = full[-1] - full[-2]
        yaw_end = math.atan2(d[1], d[0]) if np.hypot(*d) > 1e-3 else 0.0
    if abs(yaw_end) > TURN_RAD:
        lat = coc.LateralMeta.LEFT if yaw_end > 0 else coc.LateralMeta.RIGHT
    else:
        y = xy[np.argmax(np.abs(xy[:, 1])), 1]
        lat = (coc.LateralMeta.STRAIGHT if abs(y) <= LATERAL_M else
               coc.LateralMeta.LEFT if y > 0 else coc.LateralMeta.RIGHT)
    return coc.MetaAction(lon, lat)


def is_consistent(longitudinal, lateral, direction, meta: coc.MetaAction) -> bool:
    """Whether a measured meta-action is compatible with the decisions (`coc.compatible_meta_actions`)."""
    lon_set, lat_set = coc.compatible_meta_actions(longitudinal, lateral, direction)
    return meta.longitudinal in lon_set and meta.lateral in lat_set


def record_consistent(rec: dict, dt: float = 0.1) -> bool:
    """The rule-based check on a record (`ar1_jax.data.synthetic.RECORD_KEYS`): its decisions vs the
    meta-action of its future."""
    lon = None if rec["longitudinal"] < 0 else coc.LONGITUDINAL[int(rec["longitudinal"])]
    lat = None if rec["lateral"] < 0 else coc.LATERAL[int(rec["lateral"])]
    d = None if rec["direction"] < 0 else coc.DIRECTIONS[int(rec["direction"])]
    meta = meta_actions_from_trajectory(rec["future_xyz"], rec["future_yaw"], float(rec["v0"]), dt)
    return is_consistent(lon, lat, d, meta)


def constant_velocity_ade(future_xyz: np.ndarray, v0: float, dt: float = 0.1) -> float:
    """ADE (m, x-y) of the constant-velocity baseline against a future `[T, 3]` in ego0: straight ahead
    at v0 (m/s) from t0."""
    fut = np.asarray(future_xyz, np.float64)[:, :2]
    t = np.arange(1, len(fut) + 1) * dt
    pred = np.stack([v0 * t, np.zeros_like(t)], -1)
    return float(np.mean(np.hypot(*(pred - fut).T)))


def collisions(scene: Scene, ego: np.ndarray | None = None, steps: np.ndarray | None = None
               ) -> list[tuple[int, float]]:
    """(agent id, time s) of every overlap of the ego footprint with an agent box (separating axes).

    Default: the expert over the future horizon; a simulator passes its own world-frame rear-axle
    poses `ego [N, >=3]` (x, y, yaw) at `steps [N]` (indices into `scene.times`).
    """
    if steps is None:
        steps = np.arange(scene.t0_index + 1, scene.t0_index + 1 + scene.horizon)
    ego = scene.ego[steps] if ego is None else np.asarray(ego)
    ec, eh, ego_half = ego_footprint(ego)
    hits = []
    for ag in scene.agents:
        p = ag.poses[steps]
        hit = boxes_overlap_np(ec, eh, ego_half, p[:, :2], p[:, 2], (ag.size[0] / 2, ag.size[1] / 2))
        hits += [(ag.id, float(scene.times[k])) for k in np.asarray(steps)[hit]]
    return hits
