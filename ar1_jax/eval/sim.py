"""The closed-loop simulator: a policy drives the ego through synthetic worlds, replanning every
`SimConfig.replan_s` seconds from what it would see there (cameras re-rendered at its own driven poses,
its own driven history), while the other agents replay their logs or react to it.

    result = simulate(scenes, policies.RulePlanner(5), cfg, SimConfig(agents="reactive"))
    result.scores["alpasim_score"]  # [B]

The episode starts at t0 in the logged state and runs `SimConfig.seconds`. Between replans the ego
applies the plan's controls with the unicycle of `world.dynamics.ego_step`; the agents move with
`world.dynamics.agents_step`. Those steps are one compiled program over all B scenes (`_advance`: a
`lax.scan` over the steps to the next replan, vmapped over scenes); the policy runs on the host (the
model's own compiled engine, or the rule planner in numpy). The driven track is scored with
`eval.scorers.score_track` against the agents as they actually moved, and `eval.metrics.comfort_shares`.
Deterministic: the same scenes, policy (and its seed) and settings give the same numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ar1_jax.config import Config
from ar1_jax.eval import metrics
from ar1_jax.eval.policies import Observation, Policy, to_frame
from ar1_jax.eval.scorers import ScoringArrays, score_tracks, scoring_arrays
from ar1_jax.world.arrays import agent_hits, offroad_steps
from ar1_jax.world.dynamics import AgentState, agent_poses_at, agent_tracks, agents_step, ego_step, initial_agent_state
from ar1_jax.world.scene import MAX_AGENTS, MAX_RECTS, MAX_SEGMENTS, Scene

__all__ = ["AGENT_MODES", "SimConfig", "SimResult", "simulate", "save_tracks", "summary_keys"]

AGENT_MODES = ("log", "reactive")


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """seconds: episode length after t0 (at most the scene's horizon plus `synth.extra_seconds`);
    replan_s: seconds between replans (a multiple of the action dt); agents: "log" (replay) or
    "reactive" (`world.dynamics`); plan_steps: the controls a policy returns per replan; max_agents,
    max_rects, max_segments: padded sizes of the scenes' arrays (a scene with more fails loudly; the
    defaults fit every generated scene, `world.scene.MAX_AGENTS`)."""

    seconds: float = 6.4
    replan_s: float = 0.5
    agents: str = "log"
    plan_steps: int = 64
    max_agents: int = MAX_AGENTS
    max_rects: int = MAX_RECTS
    max_segments: int = MAX_SEGMENTS

    def steps(self, dt: float) -> tuple[int, int]:
        """(episode steps N, steps per replan R) at `dt`; ValueError on settings that do not fit."""
        n, r = int(round(self.seconds / dt)), int(round(self.replan_s / dt))
        if n < 1 or abs(n * dt - self.seconds) > 1e-6:
            raise ValueError(f"SimConfig.seconds={self.seconds} must be a positive multiple of dt={dt}")
        if r < 1 or abs(r * dt - self.replan_s) > 1e-6:
            raise ValueError(f"SimConfig.replan_s={self.replan_s} must be a positive multiple of dt={dt}")
        if self.agents not in AGENT_MODES:
            raise ValueError(f"SimConfig.agents must be one of {AGENT_MODES}, got {self.agents!r}")
        if self.plan_steps < r:
            raise ValueError(f"SimConfig.plan_steps={self.plan_steps} is shorter than one replan ({r} steps)")
        return n, r


@dataclasses.dataclass
class SimResult:
    """B closed-loop episodes of N steps with R replans.

    ego: `[B, N+1, 4]` world (x, y m; yaw rad; speed m/s) at t0 .. t0 + N dt; agents: `[B, A, N+1, 3]`
    world box-centre poses as the agents moved (rows past each scene's agent count are padding);
    plans: `[B, R, P, 2]` each replan's plan in world xy (m); replan_steps: int `[R]` the `ego` row of
    each replan; reasoning: B lists of R texts; consistent: bool `[B, R]` (None for policies that do not
    reason); collision, offroad: bool `[B, N+1]` per-step flags; scores: `eval.scorers.score_track`'s
    values plus `comfortable`, each `[B]` float.
    """

    scenes: list[Scene]
    policy: str
    dt: float
    ego: np.ndarray
    agents: np.ndarray
    plans: np.ndarray
    replan_steps: np.ndarray
    reasoning: list[list[str]]
    consistent: np.ndarray | None
    collision: np.ndarray
    offroad: np.ndarray
    scores: dict[str, np.ndarray]


def _advance_one(ego, agents, tracks, controls, step0, ego_half, ego_offset, *, dt, reactive):
    def body(carry, xs):
        ego, ag = carry
        control, step = xs
        ag = agents_step(tracks, ag, step, ego, ego_half, ego_offset, dt, reactive)
        ego = ego_step(ego, control, dt)
        return (ego, ag), (ego, agent_poses_at(tracks, ag.s))

    steps = step0 + jnp.arange(controls.shape[0])
    (ego, agents), (egos, poses) = jax.lax.scan(body, (ego, agents), (controls, steps))
    return ego, agents, egos, jnp.swapaxes(poses, 0, 1)


@functools.partial(jax.jit, static_argnames=("dt", "reactive"))
def _advance(ego, agents, tracks, controls, step0, ego_half, ego_offset, *, dt: float, reactive: bool):
    """B scenes R steps on: ego `[B, 4]`, agents (`AgentState` `[B, A]`), tracks (`AgentTracks` `[B, ...]`),
    controls `[B, R, 2]`, step0 the simulation step now -> (ego, agents, ego rows `[B, R, 4]`, agent
    poses `[B, A, R, 3]`)."""
    one = functools.partial(_advance_one, dt=dt, reactive=reactive)
    return jax.vmap(one, in_axes=(0, 0, 0, 0, None, 0, 0))(ego, agents, tracks, controls, step0, ego_half, ego_offset)


@jax.jit
def _step_flags(track, arrays):
    """Per-step collision and off-road `[B, N]` of rear-axle tracks `[B, N, 3]` against `SceneArrays`."""
    def one(t, a):
        return jnp.any(agent_hits(t, a), axis=0), offroad_steps(t, a)

    return jax.vmap(one)(track, arrays)


_score = jax.jit(score_tracks, static_argnums=3)


def simulate(scenes: Sequence[Scene], policy: Policy, cfg: Config, sim: SimConfig = SimConfig(),
             progress: Callable[[int, int], None] | None = None) -> SimResult:
    """Drives `policy` through `scenes` (built with `cfg`'s action and synth sections: one time grid) closed
    loop; `progress(replans_done, replans_total)` after each replan. Returns the `SimResult`."""
    scenes = list(scenes)
    if not scenes:
        raise ValueError("simulate: no scenes")
    dt = float(cfg.action.dt)
    n, r = sim.steps(dt)
    for s in scenes:
        if abs(s.dt - dt) > 1e-9 or s.t0_index != scenes[0].t0_index:
            raise ValueError(f"simulate: scene {s.scene_id} has dt {s.dt} / t0 index {s.t0_index}; every scene "
                             f"must share the config's grid (dt {dt}, t0 index {scenes[0].t0_index})")
        room = len(s.times) - 1 - s.t0_index
        if n > room:
            raise ValueError(f"simulate: {sim.seconds} s is {n} steps but scene {s.scene_id} has {room} after t0 "
                             f"(horizon + synth.extra_seconds); shorten SimConfig.seconds")
    tracks = jax.tree.map(lambda *x: np.stack(x), *[agent_tracks(s.agents, s.t0_index, n + 1, sim.max_agents)
                                                   for s in scenes])
    scoring = [scoring_arrays(s, sim.max_agents, sim.max_rects, sim.max_segments) for s in scenes]
    ego_half = np.stack([a.scene.ego_half for a in scoring])
    ego_offset = np.stack([a.scene.ego_offset for a in scoring])
    ego = jnp.asarray(np.stack([s.ego[s.t0_index] for s in scenes]), jnp.float32)
    agents = jax.vmap(initial_agent_state, in_axes=(0, None))(tracks, dt)
    history = np.stack([s.ego[: s.t0_index + 1] for s in scenes]).astype(np.float64)  # [B, t0+1, 4]
    ego_rows, agent_rows = [np.asarray(ego)[:, None]], [np.asarray(agent_poses_at_batch(tracks, agents))[:, :, None]]
    plans, replans, texts, consistent = [], [], [], []
    policy.reset(scenes)
    total = -(-n // r)
    for i, j in enumerate(range(0, n, r)):
        obs = Observation(scenes=scenes, step=j, ego=np.asarray(ego, np.float64), history=history)
        plan = policy.plan(obs, sim.plan_steps)
        _check_plan(plan, len(scenes), sim.plan_steps, policy)
        steps = min(r, n - j)
        ego, agents, egos, poses = _advance(ego, agents, tracks, jnp.asarray(plan.controls[:, :steps], jnp.float32),
                                            j, ego_half, ego_offset, dt=dt, reactive=sim.agents == "reactive")
        egos, poses = np.asarray(egos), np.asarray(poses)
        ego_rows.append(egos)
        agent_rows.append(poses)
        history = np.concatenate([history, egos.astype(np.float64)], 1)
        plans.append(_plan_to_world(plan.xy, obs.ego))
        replans.append(j)
        texts.append(plan.reasoning)
        consistent.append(plan.consistent)
        if progress is not None:
            progress(i + 1, total)
    ego_track = np.concatenate(ego_rows, 1)  # [B, N+1, 4]
    agent_track = np.concatenate(agent_rows, 2)  # [B, A, N+1, 3]
    arrays = _with_driven_agents(scoring, agent_track, scenes, n)
    track = jnp.asarray(ego_track[:, 1:, :3])
    hit, off = (np.asarray(x) for x in _step_flags(track, arrays.scene))
    zero = np.zeros((len(scenes), 1), bool)
    driven_xy = to_frame(ego_track[:, 1:, :2], ego_track[:, 0])
    comfort = metrics.comfort_shares(driven_xy, ego_track[:, 0, 3], dt)
    scores = {k: np.asarray(v) for k, v in _score(track, arrays, comfort["comfortable"], dt).items()}
    scores["comfortable"] = np.asarray(comfort["comfortable"])
    return SimResult(scenes=scenes, policy=policy.name, dt=dt, ego=ego_track, agents=agent_track,
                     plans=np.stack(plans, 1).astype(np.float32), replan_steps=np.asarray(replans, np.int32),
                     reasoning=[list(row) for row in zip(*texts)],
                     consistent=None if consistent[0] is None else np.stack(consistent, 1),
                     collision=np.concatenate([zero, hit], 1), offroad=np.concatenate([zero, off], 1), scores=scores)


def agent_poses_at_batch(tracks, agents: AgentState):
    """`agent_poses_at` over a batch of scenes: `[B, A, 3]`."""
    return jax.vmap(agent_poses_at)(tracks, agents.s)


def _check_plan(plan, b: int, p: int, policy) -> None:
    if plan.controls.shape != (b, p, 2) or not np.all(np.isfinite(plan.controls)):
        raise ValueError(f"policy {policy.name!r} returned controls {plan.controls.shape} (finite: "
                         f"{bool(np.all(np.isfinite(plan.controls)))}); expected finite [{b}, {p}, 2]")


def _plan_to_world(xy: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Plans `[B, P, 2]` in the ego frame of `origin` `[B, >=3]` -> world xy."""
    o = np.asarray(origin, np.float64)
    c, s = np.cos(o[:, 2])[:, None], np.sin(o[:, 2])[:, None]
    return np.stack([o[:, None, 0] + c * xy[..., 0] - s * xy[..., 1], o[:, None, 1] + s * xy[..., 0] + c * xy[..., 1]], -1)


def _with_driven_agents(scoring: list[ScoringArrays], agent_track: np.ndarray, scenes: list[Scene], n: int
                        ) -> ScoringArrays:
    """The scenes' scoring arrays over the N driven steps, with the agents where they actually were."""
    out = []
    for b, (a, s) in enumerate(zip(scoring, scenes)):
        rows = slice(s.t0_index + 1, s.t0_index + 1 + n)
        out.append(a._replace(scene=a.scene._replace(agent_poses=agent_track[b, :, 1:].astype(np.float32)),
                              logged=np.asarray(s.ego[rows, :3], np.float32)))
    return jax.tree.map(lambda *x: np.stack(x), *out)


def summary_keys() -> tuple[str, ...]:
    """The closed-loop rates `summarize` reports, in table order."""
    return ("alpasim_score", "pdm_score", "at_fault", "collision", "offroad", "close_encounter", "wrong_lane",
            "progress", "dist_to_log_mean", "comfortable")


def save_tracks(out_dir: str | pathlib.Path, result: SimResult, cfg: Config) -> list[pathlib.Path]:
    """Writes `out_dir/closed_loop/<scene_id>.npz` per scene (the fields `ar1 viz closed-loop` reads:
    seed, family, scene_id, policy, dt, ego, agents, plans, replan_steps, reasoning, collision, offroad)
    and `out_dir/config.json` (the config the worlds regenerate from). Returns the track files."""
    from ar1_jax.train.checkpoint import config_json

    out_dir = pathlib.Path(out_dir)
    (out_dir / "closed_loop").mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(config_json(cfg))
    paths = []
    for b, s in enumerate(result.scenes):
        path = out_dir / "closed_loop" / f"{s.scene_id}.npz"
        np.savez_compressed(
            path, seed=np.int64(s.seed), family=np.str_(s.family), scene_id=np.str_(s.scene_id),
            policy=np.str_(result.policy), dt=np.float64(result.dt), ego=result.ego[b].astype(np.float32),
            agents=result.agents[b, : len(s.agents)].astype(np.float32), plans=result.plans[b],
            replan_steps=result.replan_steps, reasoning=np.asarray(result.reasoning[b], dtype=np.str_),
            collision=result.collision[b], offroad=result.offroad[b],
            scores=np.str_(json.dumps({k: float(v[b]) for k, v in result.scores.items()})))
        paths.append(path)
    return paths
