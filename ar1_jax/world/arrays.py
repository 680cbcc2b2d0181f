"""A scene as a fixed-shape array pytree, and jittable footprint checks of an ego drive against it.

`scene_arrays(scene, max_agents, max_rects)` packs what collision and off-road checks read from a
`Scene` (agents' boxes over the future horizon, the drivable rectangles, the ego's box and its pose at
t0) into padded float32 / bool numpy arrays of fixed shape, so that RL rewards and the closed-loop
simulator can batch scenes (`stack_scene_arrays`) and jit over them. `footprint_checks` is the jnp
twin of `ar1_jax.eval.scoring.collisions` (same separating-axis test, same ego box) plus an off-road
test. World frame, metres and radians (see `ar1_jax.world`).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ar1_jax.world.geometry import boxes_overlap, inside_rects
from ar1_jax.world.scene import EGO_REAR, Scene, ego_footprint

__all__ = ["SceneArrays", "scene_arrays", "stack_scene_arrays", "ego0_to_world", "ego_box_centres", "agent_hits",
           "offroad_steps", "footprint_checks"]

# jaxtyping shapes as aliases (pyflakes reads strings inside annotations as Python).
Pose = Float[np.ndarray, "3"]
Half = Float[np.ndarray, "2"]
Scalar = Float[np.ndarray, ""]
AgentPoses = Float[np.ndarray, "A T 3"]
AgentHalf = Float[np.ndarray, "A 2"]
AgentMask = Bool[np.ndarray, "A"]
Rects = Float[np.ndarray, "R 4"]
RectMask = Bool[np.ndarray, "R"]
PathXY = Float[Array, "... T 2"]
PathHeading = Float[Array, "... T"]
Ego0Pose = Float[Array, "... 3"]
WorldPoses = Float[Array, "... T 3"]
EgoPoses = Float[Array, "T 3"]
StepFlags = Bool[Array, "T"]
AgentStepFlags = Bool[Array, "A T"]
BoxCentres = Float[Array, "T 2"]

# A rectangle no point lies in (x_min > x_max): what padded drivable rows become inside the checks.
_EMPTY_RECT = np.array([np.inf, -np.inf, np.inf, -np.inf], np.float32)


class SceneArrays(NamedTuple):
    """A scene's agents and drivable area over the future horizon, padded to fixed shapes (a pytree).

    Shapes are for one scene; `stack_scene_arrays` adds a leading batch axis to every field.
      ego0_pose: `[3]` the ego's rear-axle pose at t0 (world x, y m; yaw rad): the ego0 frame.
      ego_half: `[2]` half extents of the ego box (along, across its heading), m.
      ego_offset: `[]` how far the ego box's centre lies ahead of the rear axle, m.
      agent_poses: `[A, T, 3]` every agent's box-centre pose (world x, y, yaw) at scene steps
        t0 + 1 .. t0 + T (T = the scene's horizon); zeros in padded rows.
      agent_half: `[A, 2]` half extents (along, across), m; zeros in padded rows.
      agent_valid: bool `[A]`, False for padded rows.
      drivable_rects: `[R, 4]` (x_min, x_max, y_min, y_max) m, as `RoadMap.drivable_rects`.
      rect_valid: bool `[R]`, False for padded rows.
    """

    ego0_pose: Pose
    ego_half: Half
    ego_offset: Scalar
    agent_poses: AgentPoses
    agent_half: AgentHalf
    agent_valid: AgentMask
    drivable_rects: Rects
    rect_valid: RectMask


def scene_arrays(scene: Scene, max_agents: int, max_rects: int) -> SceneArrays:
    """Packs `scene` into `SceneArrays` with A = `max_agents` agent rows and R = `max_rects` drivable
    rows (float32 / bool numpy). A ValueError when the scene has more agents or rectangles than that:
    dropping one would hide its collisions."""
    if len(scene.agents) > max_agents:
        raise ValueError(f"scene_arrays: scene {scene.scene_id} has {len(scene.agents)} agents, more than "
                         f"max_agents={max_agents}")
    rects = scene.road.drivable_rects()
    if len(rects) > max_rects:
        raise ValueError(f"scene_arrays: scene {scene.scene_id} has {len(rects)} drivable rectangles, more "
                         f"than max_rects={max_rects}")
    steps = np.arange(scene.t0_index + 1, scene.t0_index + 1 + scene.horizon)
    poses = np.zeros((max_agents, scene.horizon, 3), np.float32)
    half = np.zeros((max_agents, 2), np.float32)
    for i, ag in enumerate(scene.agents):
        poses[i] = ag.poses[steps, :3]
        half[i] = (ag.size[0] / 2, ag.size[1] / 2)
    drivable = np.zeros((max_rects, 4), np.float32)
    drivable[: len(rects)] = rects
    _, _, ego_half = ego_footprint(np.zeros((1, 3)))
    return SceneArrays(
        ego0_pose=np.asarray(scene.origin, np.float32),
        ego_half=np.asarray(ego_half, np.float32),
        ego_offset=np.asarray(ego_half[0] - EGO_REAR, np.float32),
        agent_poses=poses,
        agent_half=half,
        agent_valid=np.arange(max_agents) < len(scene.agents),
        drivable_rects=drivable,
        rect_valid=np.arange(max_rects) < len(rects),
    )


def stack_scene_arrays(items: Sequence[SceneArrays]) -> SceneArrays:
    """`[B, ...]` per field: scenes packed with the same max_agents, max_rects and horizon."""
    if not items:
        raise ValueError("stack_scene_arrays: no scenes")
    return SceneArrays(*(np.stack(field) for field in zip(*items)))


def ego0_to_world(xy: PathXY, heading: PathHeading, ego0_pose: Ego0Pose) -> WorldPoses:
    """Rear-axle poses in the ego0 frame (xy m, heading rad) -> world (x, y, yaw) given the ego pose at
    t0 `[..., 3]`. Jittable."""
    xy, pose = jnp.asarray(xy), jnp.asarray(ego0_pose)
    c, s = jnp.cos(pose[..., None, 2]), jnp.sin(pose[..., None, 2])
    x = pose[..., None, 0] + c * xy[..., 0] - s * xy[..., 1]
    y = pose[..., None, 1] + s * xy[..., 0] + c * xy[..., 1]
    return jnp.stack([x, y, pose[..., None, 2] + jnp.asarray(heading)], -1)


def ego_box_centres(ego: EgoPoses, ego_offset) -> BoxCentres:
    """Centres `[T, 2]` (m) of the ego box at rear-axle poses `ego` `[T, 3]` (world x, y, yaw), the box
    centre lying `ego_offset` m ahead of the rear axle. Jittable."""
    ego = jnp.asarray(ego)
    return ego[:, :2] + ego_offset * jnp.stack([jnp.cos(ego[:, 2]), jnp.sin(ego[:, 2])], -1)


def agent_hits(ego: EgoPoses, arrays: SceneArrays) -> AgentStepFlags:
    """Per agent and step, whether the ego box overlaps that (valid) agent's box (`geometry.boxes_overlap`,
    touching counts, as in `scoring.collisions`). `ego` as in `footprint_checks`. Jittable."""
    ego = jnp.asarray(ego)
    agents = jnp.asarray(arrays.agent_poses)  # [A, T, 3]
    hit = boxes_overlap(ego_box_centres(ego, arrays.ego_offset)[None], ego[None, :, 2], jnp.asarray(arrays.ego_half),
                        agents[..., :2], agents[..., 2], jnp.asarray(arrays.agent_half)[:, None, :])
    return hit & jnp.asarray(arrays.agent_valid)[:, None]


def offroad_steps(ego: EgoPoses, arrays: SceneArrays) -> StepFlags:
    """Per step, whether any of the ego box's four corners lies outside every valid drivable rectangle
    (edges count as road). `ego` as in `footprint_checks`. Jittable."""
    ego = jnp.asarray(ego)
    fwd = jnp.stack([jnp.cos(ego[:, 2]), jnp.sin(ego[:, 2])], -1)  # [T, 2]
    left = jnp.stack([-fwd[:, 1], fwd[:, 0]], -1)
    centre = ego_box_centres(ego, arrays.ego_offset)
    a, b = arrays.ego_half[0], arrays.ego_half[1]
    signs = jnp.asarray([[1, 1], [1, -1], [-1, 1], [-1, -1]], jnp.float32)  # [4, 2]
    corners = (centre[:, None] + signs[:, :1] * a * fwd[:, None] + signs[:, 1:] * b * left[:, None])  # [T, 4, 2]
    rects = jnp.where(jnp.asarray(arrays.rect_valid)[:, None], jnp.asarray(arrays.drivable_rects), _EMPTY_RECT)
    return ~jnp.all(inside_rects(corners, rects), axis=-1)


def footprint_checks(ego: EgoPoses, arrays: SceneArrays) -> tuple[StepFlags, StepFlags]:
    """Per step, whether the ego box hits any agent and whether it leaves the drivable area.

    ego: `[T, 3]` world rear-axle poses (x, y, yaw) at scene steps t0 + 1 .. t0 + T, one scene
    (unbatched `arrays`; vmap for batches). Collision: the ego box overlaps a valid agent's box at the
    same step (`agent_hits`). Off-road: any of the ego box's four corners lies outside every valid
    drivable rectangle (`offroad_steps`), so a wheel over the kerb is off-road even while the body's
    centre is on the road. Returns two bool `[T]`. Jittable.
    """
    return jnp.any(agent_hits(ego, arrays), axis=0), offroad_steps(ego, arrays)
