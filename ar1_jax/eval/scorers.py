"""Scorers of a driven ego track in a world, the closed-loop benchmarks' (AlpaSim, NAVSIM) kind:
at-fault collisions split front / lateral / rear, off-road, wrong lane, progress along the logged
route, distance to the logged track, close encounters (box gap or time to collision), and the two
composite scores.

One scene at a time and jittable (vmap over scenes). The ego track is `[T, 3]` world rear-axle poses
(x, y m; yaw rad) at the scene steps t0 + 1 .. t0 + T, the rows of `SceneArrays.agent_poses`; the
logged track is the expert's, the same shape. `ScoringArrays` adds to a scene's `SceneArrays` what
only scoring reads: the lanes (centreline segments with their travel headings) and the logged track.

Definitions (thresholds are the module constants):
  collision      the ego box overlaps an agent's box at some step (`world.arrays.agent_hits`).
  kind           one step before the first contact with an agent (the t0 pose for a contact at once):
                 "front" when the agent's centre lies ahead of the ego box's front edge (along the ego
                 heading), "rear" behind its back edge, "lateral" otherwise (a side swipe). A step
                 earlier, because at speed one step carries the boxes well into each other.
  at fault       a front or lateral contact while the ego moves (speed above STOP_SPEED); being hit
                 from behind, or while standing, is not the ego's fault (nuPlan / AlpaSim).
  off-road       a corner of the ego box leaves the drivable area at some step.
  wrong lane     the ego's centre lies in a lane whose travel heading differs from the ego's yaw by
                 more than WRONG_WAY_RAD at some step (driving against traffic).
  progress       arc length of the ego's final position projected on the logged route (from the t0
                 pose through the logged track), over the route's length; 1 when the log stands still
                 (route under MIN_ROUTE_M).
  close encounter  a collision, a box gap under CLOSE_GAP_M, or a time to collision under TTC_S (both
                 boxes moved ahead at their current velocities in TTC_STEP_S steps).
  alpasim_score  0 on an at-fault collision or off-road, else min(1, progress / 0.8).
  pdm_score      no at-fault collision x drivable x (5 no-TTC-violation + 5 min(progress, 1)
                 + 2 comfortable) / 12, NAVSIM's form; `comfortable` comes from `eval.metrics`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ar1_jax.world.arrays import SceneArrays, agent_hits, ego_box_centres, offroad_steps, scene_arrays
from ar1_jax.world.geometry import boxes_overlap, lane_of_point
from ar1_jax.world.planner import STOP_SPEED
from ar1_jax.world.scene import Scene

__all__ = ["CLOSE_GAP_M", "TTC_S", "TTC_STEP_S", "WRONG_WAY_RAD", "MIN_ROUTE_M", "LANE_TOLERANCE_M", "ALPASIM_PROGRESS",
           "ScoringArrays", "scoring_arrays", "collision_kinds", "close_encounter", "wrong_lane", "progress",
           "distance_to_log", "score_track", "score_tracks"]

CLOSE_GAP_M = 0.5  # box-to-box gap (m) under which two boxes count as a close encounter
TTC_S, TTC_STEP_S = 1.0, 0.1  # time-to-collision horizon and its step (s)
WRONG_WAY_RAD = np.pi / 2
MIN_ROUTE_M = 0.5
LANE_TOLERANCE_M = 0.01  # centreline simplification for scoring (m)
ALPASIM_PROGRESS = 0.8  # progress at which AlpaSim's score saturates

Track = Float[Array, "T 3"]
Pose = Float[Array, "3"]
PerStep = Float[Array, "T"]
Lanes = Float[Array, "S 2"]
SegInt = Int[Array, "S"]
SegFloat = Float[Array, "S"]
Flag = Bool[Array, ""]
Value = Float[Array, ""]


class ScoringArrays(NamedTuple):
    """A scene for scoring (one scene; `jax.tree.map(np.stack, ...)` batches scenes of equal shapes).
      scene: `SceneArrays` (agents, drivable area, ego box).
      seg_start, seg_end: `[S, 2]` lane centreline segments (m), padded rows far away.
      seg_heading: `[S]` the travel heading of each segment's lane (rad).
      seg_half_width: `[S]` half lane widths (m), 0 in padded rows (no point is within them).
      seg_lane: int32 `[S]` lane index, -1 in padded rows.
      logged: `[T, 3]` the expert's rear-axle track (world x, y, yaw) at steps t0 + 1 .. t0 + T.
    """

    scene: SceneArrays
    seg_start: Lanes
    seg_end: Lanes
    seg_heading: SegFloat
    seg_half_width: SegFloat
    seg_lane: SegInt
    logged: Track


def scoring_arrays(scene: Scene, max_agents: int, max_rects: int, max_segments: int) -> ScoringArrays:
    """Packs `scene` for scoring (numpy; ValueError when it has more lane segments than `max_segments`).
    Lane centrelines are simplified to within LANE_TOLERANCE_M (a straight lane is one segment)."""
    starts, ends, lane, half = scene.road.lane_segments(LANE_TOLERANCE_M)
    if len(starts) > max_segments:
        raise ValueError(f"scoring_arrays: scene {scene.scene_id} has {len(starts)} lane segments, more than "
                         f"max_segments={max_segments}")
    pad = max_segments - len(starts)
    heading = np.asarray([scene.road.lanes[i]["heading"] for i in lane], np.float64)
    far = np.full((pad, 2), 1e9)
    rows = slice(scene.t0_index + 1, scene.t0_index + 1 + scene.horizon)
    return ScoringArrays(
        scene=scene_arrays(scene, max_agents, max_rects),
        seg_start=np.concatenate([starts, far]).astype(np.float32),
        seg_end=np.concatenate([ends, far + 1.0]).astype(np.float32),
        seg_heading=np.concatenate([heading, np.zeros(pad)]).astype(np.float32),
        seg_half_width=np.concatenate([half, np.zeros(pad)]).astype(np.float32),
        seg_lane=np.concatenate([lane, np.full(pad, -1, np.int32)]).astype(np.int32),
        logged=np.asarray(scene.ego[rows, :3], np.float32),
    )


def _speeds(track: Track, start: Pose, dt: float) -> PerStep:
    """Speed (m/s) at each row by the backward difference from the row before (the t0 pose first)."""
    xy = jnp.concatenate([start[None, :2], track[:, :2]], 0)
    return jnp.linalg.norm(xy[1:] - xy[:-1], axis=-1) / dt


def collision_kinds(ego: Track, arrays: SceneArrays, dt: float = 0.1) -> dict[str, Flag]:
    """Collisions of the ego track with the scene's agents: `collision` (any contact), `front`,
    `lateral`, `rear` (the kind of each agent's first contact, module docstring), `at_fault` (a front
    or lateral contact while the ego moves) and `at_fault_front` / `at_fault_lateral`. Bool scalars."""
    ego = jnp.asarray(ego, jnp.float32)
    agents = jnp.asarray(arrays.agent_poses)  # [A, T, 3]
    centre = ego_box_centres(ego, arrays.ego_offset)
    hit = agent_hits(ego, arrays)  # [A, T]
    touched = jnp.any(hit, axis=1)  # [A]
    first = jnp.argmax(hit, axis=1)  # [A] first contact step (0 where none: masked by `touched`)
    # Where the agent was relative to the ego one step before contact (the t0 pose and the agent's first
    # row for a contact at the first step): at speed a step moves the boxes well into each other.
    start = jnp.asarray(arrays.ego0_pose, jnp.float32)[None]
    before_ego = jnp.concatenate([start, ego], 0)[first]  # rows shifted by one: row i is step i - 1
    before_centre = jnp.concatenate([ego_box_centres(start, arrays.ego_offset), centre], 0)[first]
    before_agent = agents[jnp.arange(agents.shape[0]), jnp.maximum(first - 1, 0), :2]
    fwd = jnp.stack([jnp.cos(before_ego[:, 2]), jnp.sin(before_ego[:, 2])], -1)  # [A, 2]
    along = jnp.sum((before_agent - before_centre) * fwd, -1)
    half_len = arrays.ego_half[0]
    front = touched & (along > half_len)
    rear = touched & (along < -half_len)
    lateral = touched & ~front & ~rear
    speed = _speeds(ego, jnp.asarray(arrays.ego0_pose), dt)[first]
    moving = speed > STOP_SPEED
    out = {"collision": jnp.any(touched), "front": jnp.any(front), "lateral": jnp.any(lateral), "rear": jnp.any(rear),
           "at_fault_front": jnp.any(front & moving), "at_fault_lateral": jnp.any(lateral & moving)}
    out["at_fault"] = out["at_fault_front"] | out["at_fault_lateral"]
    return out


def close_encounter(ego: Track, arrays: SceneArrays, dt: float = 0.1, gap_m: float = CLOSE_GAP_M,
                    ttc_s: float = TTC_S, ttc_step_s: float = TTC_STEP_S) -> dict[str, Flag]:
    """`close_gap`: the boxes come within `gap_m` of an agent's (contact included) at some step;
    `ttc_violation`: at some step, moving both boxes ahead at their current velocities (backward
    differences) for k * ttc_step_s <= ttc_s makes them overlap; `close_encounter`: either."""
    ego = jnp.asarray(ego, jnp.float32)
    agents = jnp.asarray(arrays.agent_poses)
    valid = jnp.asarray(arrays.agent_valid)[:, None]
    centre = ego_box_centres(ego, arrays.ego_offset)
    half, ahalf = jnp.asarray(arrays.ego_half), jnp.asarray(arrays.agent_half)[:, None, :]
    gap = boxes_overlap(centre[None], ego[None, :, 2], half, agents[..., :2], agents[..., 2], ahalf,
                        margin=gap_m / 2) & valid
    start = jnp.asarray(arrays.ego0_pose)
    ego_start = ego_box_centres(start[None], arrays.ego_offset)
    ego_vel = jnp.diff(jnp.concatenate([ego_start, centre], 0), axis=0) / dt  # [T, 2]
    agent_vel = jnp.diff(jnp.concatenate([agents[:, :1, :2], agents[..., :2]], 1), axis=1) / dt  # [A, T, 2]
    ks = jnp.arange(1, int(round(ttc_s / ttc_step_s)) + 1, dtype=jnp.float32) * ttc_step_s  # [K]
    ego_ahead = centre[None] + ks[:, None, None] * ego_vel[None]  # [K, T, 2]
    ag_ahead = agents[None, ..., :2] + ks[:, None, None, None] * agent_vel[None]  # [K, A, T, 2]
    ttc = boxes_overlap(ego_ahead[:, None], ego[None, None, :, 2], half, ag_ahead, agents[None, ..., 2],
                        ahalf[None]) & valid[None]
    out = {"close_gap": jnp.any(gap), "ttc_violation": jnp.any(ttc)}
    out["close_encounter"] = out["close_gap"] | out["ttc_violation"]
    return out


def wrong_lane(ego: Track, arrays: ScoringArrays) -> Value:
    """Share of steps (in [0, 1]) whose ego centre lies in a lane travelled the other way
    (heading difference over WRONG_WAY_RAD)."""
    ego = jnp.asarray(ego, jnp.float32)
    centre = ego_box_centres(ego, arrays.scene.ego_offset)
    lane = lane_of_point(centre, arrays.seg_start, arrays.seg_end, arrays.seg_lane, arrays.seg_half_width)
    # The heading of the lane found: any of its segments carries it (`seg_lane` == lane).
    match = jnp.asarray(arrays.seg_lane)[None, :] == lane[:, None]
    heading = jnp.sum(jnp.where(match, jnp.asarray(arrays.seg_heading)[None], 0.0), -1) / jnp.maximum(
        jnp.sum(match, -1), 1)
    d = ego[:, 2] - heading
    diff = jnp.abs(jnp.arctan2(jnp.sin(d), jnp.cos(d)))
    return jnp.mean(((lane >= 0) & (diff > WRONG_WAY_RAD)).astype(jnp.float32))


def progress(ego: Track, logged: Track, start: Pose) -> Value:
    """Progress along the logged route (module docstring): the ego's final position projected on the
    polyline start -> logged rows, as a share of its length (may exceed 1 when the ego goes further)."""
    route = jnp.concatenate([jnp.asarray(start, jnp.float32)[None, :2], jnp.asarray(logged, jnp.float32)[:, :2]], 0)
    seg = route[1:] - route[:-1]
    seg_len = jnp.linalg.norm(seg, axis=-1)
    total = jnp.sum(seg_len)
    p = jnp.asarray(ego, jnp.float32)[-1, :2]
    t = jnp.clip(jnp.sum((p - route[:-1]) * seg, -1) / jnp.maximum(seg_len**2, 1e-12), 0.0, 1.0)
    dist = jnp.linalg.norm(route[:-1] + t[:, None] * seg - p, axis=-1)
    i = jnp.argmin(dist)
    s = jnp.sum(jnp.where(jnp.arange(seg.shape[0]) < i, seg_len, 0.0)) + t[i] * seg_len[i]
    # Past the route's end, count the distance beyond it along the last segment's direction.
    beyond = jnp.where(i == seg.shape[0] - 1, jnp.maximum(jnp.sum((p - route[-1]) * seg[-1], -1), 0.0)
                       / jnp.maximum(seg_len[-1], 1e-12), 0.0)
    return jnp.where(total < MIN_ROUTE_M, 1.0, (s + beyond) / jnp.maximum(total, 1e-12))


def distance_to_log(ego: Track, logged: Track) -> dict[str, Value]:
    """Mean and max (m) of the per-step distance between the ego's and the logged rear axle."""
    d = jnp.linalg.norm(jnp.asarray(ego, jnp.float32)[:, :2] - jnp.asarray(logged, jnp.float32)[:, :2], axis=-1)
    return {"dist_to_log_mean": jnp.mean(d), "dist_to_log_max": jnp.max(d)}


def score_track(ego: Track, arrays: ScoringArrays, comfortable: Value, dt: float = 0.1) -> dict[str, Value]:
    """Every scorer of one ego track as float32 scalars (flags as 0 / 1), with `alpasim_score` and
    `pdm_score`; `comfortable` (0 / 1) from `eval.metrics.comfort_shares`. Jittable, vmap over scenes."""
    col = collision_kinds(ego, arrays.scene, dt)
    close = close_encounter(ego, arrays.scene, dt)
    offroad = jnp.any(offroad_steps(jnp.asarray(ego, jnp.float32), arrays.scene))
    prog = progress(ego, arrays.logged, arrays.scene.ego0_pose)
    out = {k: v.astype(jnp.float32) for k, v in {**col, **close, "offroad": offroad}.items()}
    out.update(wrong_lane=wrong_lane(ego, arrays), progress=prog, **distance_to_log(ego, arrays.logged))
    ok = (~col["at_fault"]) & (~offroad)
    out["alpasim_score"] = jnp.where(ok, jnp.minimum(1.0, prog / ALPASIM_PROGRESS), 0.0)
    weighted = (5.0 * (~close["ttc_violation"]) + 5.0 * jnp.clip(prog, 0.0, 1.0)
                + 2.0 * jnp.asarray(comfortable, jnp.float32)) / 12.0
    out["pdm_score"] = jnp.where(ok, weighted, 0.0)
    return out


#: `score_track` over a batch: ego `[B, T, 3]`, stacked ScoringArrays, comfortable `[B]`.
score_tracks = jax.vmap(score_track, in_axes=(0, 0, 0, None))
