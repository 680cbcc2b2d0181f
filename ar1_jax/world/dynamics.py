"""Jittable dynamics of a closed-loop world: the ego as a unicycle, the other agents as log replay or
as IDM followers that keep to their logged paths and brake for the ego.

Units: metres, seconds, radians, m/s, m/s^2, 1/m; world frame (see `ar1_jax.world`). One scene per
call (vmap over scenes); `dt` is static.

The ego step is the expert's own update (`world.planner.Expert.run`): the speed cannot go negative
(the applied acceleration is what keeps it at zero), the heading turns by the curvature times the
distance travelled, and the position moves by the trapezoid of the two velocities. A closed-loop ego
that applies the logged controls from the logged state therefore retraces the log.

Reactive agents (`reactive=True`) move along the polyline of their own logged poses. Each step an
agent goes as far as its log would take it (never ahead of it, and when it has fallen behind it
catches up at most `CATCH_UP` m/s^2 faster than the log), unless the ego box is ahead of it in its
path: then the intelligent driver model (Treiber's IDM with the constants below) with the ego as its
leader caps its speed. A standing object's log does not move, so it stays; with `reactive=False`
every agent replays its log exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ar1_jax.world.scene import Agent

__all__ = ["IDM_A_MAX", "IDM_B_COMF", "IDM_HEADWAY", "IDM_S0", "IDM_MAX_BRAKE", "CATCH_UP", "PATH_MARGIN",
           "REACTIVE_KINDS", "ego_step", "AgentTracks", "AgentState", "agent_tracks", "initial_agent_state",
           "agent_poses_at", "agents_step"]

#: IDM of reactive agents: max acceleration and comfortable deceleration (m/s^2), time headway (s),
#: standstill gap (m), hardest braking (m/s^2).
IDM_A_MAX, IDM_B_COMF, IDM_HEADWAY, IDM_S0, IDM_MAX_BRAKE = 2.0, 3.0, 1.0, 2.0, 8.0
#: How much faster than its log (m/s per second) a delayed agent may speed up to catch up.
CATCH_UP = 2.0
#: Lateral clearance (m) beyond both half widths under which the ego counts as in an agent's path.
PATH_MARGIN = 0.3
#: Agent kinds that react to the ego (cones and stalled vehicles do not move anyway).
REACTIVE_KINDS = ("vehicle", "pedestrian", "cyclist", "emergency_vehicle")
# A strictly increasing arclength keeps `jnp.interp` well defined where an agent stands still.
_EPS_PER_STEP = 1e-4

EgoState = Float[Array, "4"]
Control = Float[Array, "2"]
AgentPoses = Float[Array, "A 3"]
PerAgent = Float[Array, "A"]
TrackPoses = Float[np.ndarray, "A S 3"]
TrackArc = Float[np.ndarray, "A S"]
TrackHalf = Float[np.ndarray, "A 2"]
TrackMask = Bool[np.ndarray, "A"]


def ego_step(state: EgoState, control: Control, dt: float) -> EgoState:
    """One step of the ego: state (x m, y m, yaw rad, speed m/s) and control (acceleration m/s^2,
    curvature 1/m) -> the state dt later (module docstring). Jittable."""
    x, y, h, v = state[0], state[1], state[2], state[3]
    v1 = jnp.maximum(v + control[0] * dt, 0.0)
    a = (v1 - v) / dt
    h1 = h + control[1] * v * dt + control[1] * a * (0.5 * dt * dt)
    x1 = x + 0.5 * dt * (v * jnp.cos(h) + v1 * jnp.cos(h1))
    y1 = y + 0.5 * dt * (v * jnp.sin(h) + v1 * jnp.sin(h1))
    return jnp.stack([x1, y1, h1, v1])


class AgentTracks(NamedTuple):
    """Agents' logs on the simulation grid (one scene, `A` rows padded to fixed size).

    poses: `[A, S, 3]` logged box-centre poses (x, y m; yaw rad, unwrapped) at simulation steps
      0 .. S-1 (step 0 = t0); arclength: `[A, S]` distance (m) travelled along the log from step 0,
      strictly increasing; half: `[A, 2]` half extents (along, across) m; valid: bool `[A]` (False in
      padded rows); reactive: bool `[A]`, the agents that brake for the ego.
    """

    poses: TrackPoses
    arclength: TrackArc
    half: TrackHalf
    valid: TrackMask
    reactive: TrackMask


class AgentState(NamedTuple):
    """Each agent's progress along its logged path `s` `[A]` (m, as `AgentTracks.arclength`) and speed
    `v` `[A]` (m/s)."""

    s: PerAgent
    v: PerAgent


def agent_tracks(agents: list[Agent], first: int, steps: int, max_agents: int) -> AgentTracks:
    """Packs the agents' logged poses at scene steps `first` .. `first + steps - 1` (`Scene.times`
    indices; the last pose repeats past the end of the log) into `AgentTracks` of `max_agents` rows
    (float32 numpy). A ValueError when there are more agents than that."""
    if len(agents) > max_agents:
        raise ValueError(f"agent_tracks: {len(agents)} agents, more than max_agents={max_agents}")
    poses = np.zeros((max_agents, steps, 3), np.float64)
    half = np.zeros((max_agents, 2), np.float32)
    for i, ag in enumerate(agents):
        rows = np.minimum(np.arange(first, first + steps), len(ag.poses) - 1)
        p = np.asarray(ag.poses[rows, :3], np.float64)
        p[:, 2] = np.unwrap(p[:, 2])
        poses[i] = p
        half[i] = (ag.size[0] / 2, ag.size[1] / 2)
    step_len = np.linalg.norm(np.diff(poses[..., :2], axis=1), axis=-1) + _EPS_PER_STEP
    arclength = np.concatenate([np.zeros((max_agents, 1)), np.cumsum(step_len, axis=1)], axis=1)
    valid = np.arange(max_agents) < len(agents)
    reactive = np.array([i < len(agents) and agents[i].kind in REACTIVE_KINDS for i in range(max_agents)])
    return AgentTracks(poses=poses.astype(np.float32), arclength=arclength.astype(np.float32), half=half,
                       valid=valid, reactive=reactive)


def initial_agent_state(tracks: AgentTracks, dt: float) -> AgentState:
    """Every agent at its logged position at step 0, moving at its logged speed over step 0 -> 1."""
    arc = jnp.asarray(tracks.arclength)
    return AgentState(s=arc[:, 0], v=(arc[:, 1] - arc[:, 0]) / dt)


def agent_poses_at(tracks: AgentTracks, s: PerAgent) -> AgentPoses:
    """Poses `[A, 3]` (x, y, yaw) of the agents at progress `s` `[A]` along their logged paths."""
    interp = jax.vmap(lambda q, xp, fp: jnp.interp(q, xp, fp), in_axes=(None, None, 1), out_axes=-1)
    return jax.vmap(interp)(s, jnp.asarray(tracks.arclength), jnp.asarray(tracks.poses))


def agents_step(tracks: AgentTracks, state: AgentState, step, ego: EgoState, ego_half, ego_offset,
                dt: float, reactive: bool) -> AgentState:
    """The agents' state at simulation step `step + 1` from their state at `step` (a traced int) and
    the ego's state there (x, y, yaw, speed; its box `ego_half` (along, across) m, centred `ego_offset`
    m ahead of the rear axle). With `reactive=False` every agent is at its logged progress."""
    arc = jnp.asarray(tracks.arclength)
    last = arc.shape[1] - 1
    s_log_next = arc[:, jnp.minimum(step + 1, last)]
    if not reactive:
        return AgentState(s=s_log_next, v=(s_log_next - arc[:, jnp.minimum(step, last)]) / dt)
    v_log = (s_log_next - arc[:, jnp.minimum(step, last)]) / dt
    # As far as the log goes, at most CATCH_UP faster than the faster of the log and the agent.
    v_track = jnp.clip((s_log_next - state.s) / dt, 0.0, jnp.maximum(v_log, state.v) + CATCH_UP * dt)
    # The ego box in each agent's frame.
    pose = agent_poses_at(tracks, state.s)
    half = jnp.asarray(tracks.half)
    fwd = jnp.stack([jnp.cos(pose[:, 2]), jnp.sin(pose[:, 2])], -1)
    left = jnp.stack([-fwd[:, 1], fwd[:, 0]], -1)
    ego_centre = ego[:2] + ego_offset * jnp.stack([jnp.cos(ego[2]), jnp.sin(ego[2])])
    d = ego_centre[None] - pose[:, :2]
    along, across = jnp.sum(d * fwd, -1), jnp.sum(d * left, -1)
    rel = ego[2] - pose[:, 2]
    ego_along = jnp.abs(ego_half[0] * jnp.cos(rel)) + jnp.abs(ego_half[1] * jnp.sin(rel))
    ego_across = jnp.abs(ego_half[0] * jnp.sin(rel)) + jnp.abs(ego_half[1] * jnp.cos(rel))
    in_path = (along > 0) & (jnp.abs(across) < half[:, 1] + ego_across + PATH_MARGIN)
    gap = jnp.maximum(along - half[:, 0] - ego_along, 0.1)
    v_lead = jnp.maximum(ego[3] * jnp.cos(rel), 0.0)
    v, v_des = state.v, jnp.maximum(v_log, 0.5)
    s_star = IDM_S0 + jnp.maximum(0.0, v * IDM_HEADWAY + v * (v - v_lead) / (2.0 * jnp.sqrt(IDM_A_MAX * IDM_B_COMF)))
    a_idm = IDM_A_MAX * (1.0 - (v / v_des) ** 4 - (s_star / gap) ** 2)
    v_idm = jnp.maximum(v + jnp.maximum(a_idm, -IDM_MAX_BRAKE) * dt, 0.0)
    brakes = in_path & jnp.asarray(tracks.reactive) & jnp.asarray(tracks.valid)
    v_next = jnp.where(brakes, jnp.minimum(v_track, v_idm), v_track)
    return AgentState(s=state.s + v_next * dt, v=v_next)
