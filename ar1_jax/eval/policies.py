"""Driving policies behind one interface, for the closed-loop simulator (`ar1_jax.eval.sim`) and
open-loop evaluation: the AR1 model, the rule planner (an upper bound), constant velocity and log
replay.

At each replan the simulator hands a policy an `Observation` of B scenes and gets back a `PolicyPlan`:
controls (acceleration m/s^2, curvature 1/m) for the next P steps of `dt` from the current state,
which the ego applies with unicycle dynamics (`world.dynamics.ego_step`) until the next replan, and
the planned positions in the current ego frame (x forward, y left, m; rows dt, 2 dt, ...) for plots.
A policy is `reset` with the scenes before the first replan of an episode.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Protocol, Sequence

import numpy as np

from ar1_jax.config import Config
from ar1_jax.world.planner import Expert
from ar1_jax.world.scene import Scene

__all__ = ["POLICIES", "Observation", "PolicyPlan", "Policy", "LogReplay", "ConstantVelocity", "RulePlanner",
           "ModelPolicy", "to_frame", "controls_to_xy"]

#: The policies that need no checkpoint, by their command-line name.
POLICIES = ("planner", "constant_velocity", "log")


@dataclasses.dataclass
class Observation:
    """What a policy sees at a replan, for B scenes.

    scenes: the B world scenes; step: the simulation step (0 = t0), i.e. scene step
    `scene.t0_index + step`; ego: `[B, 4]` world (x m, y m, yaw rad, speed m/s) now; history: `[B, H, 4]`
    the ego's states at the last H steps (oldest first, the last is now; the logged history before t0,
    then the driven track).
    """

    scenes: Sequence[Scene]
    step: int
    ego: np.ndarray
    history: np.ndarray


@dataclasses.dataclass
class PolicyPlan:
    """controls: `[B, P, 2]` (acceleration m/s^2, curvature 1/m) from now; xy: `[B, P, 2]` the planned
    positions in the ego frame now (m); reasoning: B texts ("" when the policy does not reason);
    consistent: bool `[B]` whether the driven sample agrees with its own reasoning (None when the policy
    does not reason)."""

    controls: np.ndarray
    xy: np.ndarray
    reasoning: list[str]
    consistent: np.ndarray | None = None


class Policy(Protocol):
    name: str

    def reset(self, scenes: Sequence[Scene]) -> None: ...

    def plan(self, obs: Observation, num_steps: int) -> PolicyPlan: ...


def to_frame(poses: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """World points `[..., 2]` -> the frame of `origin` (x, y, yaw), per leading batch row:
    poses `[B, ..., 2]`, origin `[B, >=3]`."""
    poses = np.asarray(poses, np.float64)
    o = np.asarray(origin, np.float64).reshape(len(origin), *([1] * (poses.ndim - 2)), -1)
    d = poses - o[..., :2]
    c, s = np.cos(o[..., 2]), np.sin(o[..., 2])
    return np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], -1)


def controls_to_xy(controls: np.ndarray, speed: np.ndarray, dt: float) -> np.ndarray:
    """Positions `[B, P, 2]` (ego frame now) of the unicycle driving `controls` `[B, P, 2]` from speed
    `speed` `[B]`, with the simulator's update (`world.dynamics.ego_step`, in float64 numpy)."""
    b, p = controls.shape[:2]
    x = np.zeros(b)
    y = np.zeros(b)
    h = np.zeros(b)
    v = np.asarray(speed, np.float64).copy()
    out = np.zeros((b, p, 2))
    for i in range(p):
        v1 = np.maximum(v + controls[:, i, 0] * dt, 0.0)
        a = (v1 - v) / dt
        h1 = h + controls[:, i, 1] * v * dt + controls[:, i, 1] * a * 0.5 * dt * dt
        x = x + 0.5 * dt * (v * np.cos(h) + v1 * np.cos(h1))
        y = y + 0.5 * dt * (v * np.sin(h) + v1 * np.sin(h1))
        h, v = h1, v1
        out[:, i] = np.stack([x, y], -1)
    return out


def _pad_rows(rows: np.ndarray, n: int) -> np.ndarray:
    """`rows [m, 2]` extended to n rows by repeating the last (zeros when m = 0)."""
    if len(rows) >= n:
        return rows[:n]
    last = rows[-1:] if len(rows) else np.zeros((1, rows.shape[-1]))
    return np.concatenate([rows, np.repeat(last, n - len(rows), 0)])


class LogReplay:
    """The logged expert's controls from the current scene step: from the logged state it retraces the
    log (the world's own expert drove it with the same dynamics)."""

    name = "log"

    def reset(self, scenes: Sequence[Scene]) -> None:
        pass

    def plan(self, obs: Observation, num_steps: int) -> PolicyPlan:
        dt = obs.scenes[0].dt
        controls = np.stack([_pad_rows(np.asarray(s.ego_controls[s.t0_index + obs.step:], np.float64), num_steps)
                             for s in obs.scenes])
        return PolicyPlan(controls, controls_to_xy(controls, obs.ego[:, 3], dt), [""] * len(obs.scenes))


class ConstantVelocity:
    """Straight ahead at the current speed (zero acceleration and curvature)."""

    name = "constant_velocity"

    def reset(self, scenes: Sequence[Scene]) -> None:
        pass

    def plan(self, obs: Observation, num_steps: int) -> PolicyPlan:
        controls = np.zeros((len(obs.scenes), num_steps, 2))
        return PolicyPlan(controls, controls_to_xy(controls, obs.ego[:, 3], obs.scenes[0].dt), [""] * len(obs.scenes))


class RulePlanner:
    """The world's rule-based expert (`world.planner.Expert`), replanned from the ego's actual state.

    Each replan rolls a copy of the scene's expert forward `num_steps` steps from the current state; its
    red-light latches and previous acceleration carry over from the steps the ego actually drove. It
    sees the agents' logs, not their reactions: an upper bound against log-replayed agents.
    """

    name = "planner"

    def __init__(self, replan_steps: int):
        self.replan_steps = int(replan_steps)
        self._experts: list[Expert] = []
        self._a_prev: list[float] = []

    def reset(self, scenes: Sequence[Scene]) -> None:
        self._experts = [s.expert() for s in scenes]
        self._a_prev = [float(s.ego_controls[max(s.t0_index - 1, 0), 0]) for s in scenes]

    def plan(self, obs: Observation, num_steps: int) -> PolicyPlan:
        controls = np.zeros((len(obs.scenes), num_steps, 2))
        for b, scene in enumerate(obs.scenes):
            k = scene.t0_index + obs.step
            room = max(len(scene.times) - 1 - k, 0)  # the expert reads agents and lights on the scene's grid
            first = min(self.replan_steps, room, num_steps)
            state = tuple(float(v) for v in obs.ego[b])
            expert = self._experts[b]
            states, ctl = expert.run(state, first, a0=self._a_prev[b], first_step=k) if first else (None, None)
            rows = [ctl[:first]] if first else []
            self._a_prev[b] = float(ctl[first - 1, 0]) if first else self._a_prev[b]
            rest = min(num_steps, room) - first
            if rest > 0:  # look further ahead on a copy, so the latches follow only the driven steps
                ahead = copy.copy(expert)
                ahead.latched = set(expert.latched)
                _, more = ahead.run(tuple(states[-1]), rest, a0=self._a_prev[b], first_step=k + first)
                rows.append(more[:rest])
            drive = np.concatenate(rows) if rows else np.zeros((0, 2))
            controls[b] = _pad_rows(drive, num_steps) if len(drive) else 0.0
        return PolicyPlan(controls, controls_to_xy(controls, obs.ego[:, 3], obs.scenes[0].dt), [""] * len(obs.scenes))


class ModelPolicy:
    """The AR1 model: cameras re-rendered from the world at the ego's driven poses, the driven history as
    trajectory tokens, K samples per scene, one driven (`select`: "consistent", "likely" or "first", as
    `InferenceResult.choose`). The K samples of all B scenes run as one batch of the engine."""

    name = "model"

    def __init__(self, engine: Any, cfg: Config, tokenizer: Any, *, select: str = "consistent",
                 num_samples: int | None = None, seed: int = 0):
        self.engine, self.cfg, self.tokenizer = engine, cfg, tokenizer
        self.select, self.num_samples, self.seed = select, num_samples, int(seed)
        self._calls = 0

    def reset(self, scenes: Sequence[Scene]) -> None:
        self._calls = 0

    def inputs(self, obs: Observation) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(prompt ids `[B, T0]`, pixel values, image grids, v0 `[B]`) of each scene as the model sees it
        now: the last F frames rendered from the driven poses, the last H driven poses as history."""
        from ar1_jax.infer import scene as scene_lib
        from ar1_jax.world.render import render

        nf, nh = self.cfg.scene.num_frames, self.cfg.action.history
        ids, pvs, grids, v0 = [], [], [], []
        for b, scene in enumerate(obs.scenes):
            k = scene.t0_index + obs.step
            frames = render(scene, self.cfg, ego_poses=obs.history[b, -nf:, :3], steps=np.arange(k - nf + 1, k + 1))
            hist = to_frame(obs.history[b:b + 1, -nh:, :2], obs.ego[b:b + 1])[0]
            xyz = np.concatenate([hist, np.zeros((nh, 1))], -1).astype(np.float32)
            i, pv, grid, v = scene_lib.scene_inputs(self.cfg, self.tokenizer,
                                                    scene_lib.Scene(images=frames, history_xyz=xyz, name=scene.scene_id))
            ids.append(i)
            pvs.append(pv)
            grids.append(grid)
            v0.append(v)
        return np.stack(ids), np.concatenate(pvs), np.concatenate(grids), np.asarray(v0, np.float32)

    def plan(self, obs: Observation, num_steps: int) -> PolicyPlan:
        ids, pv, grid, v0 = self.inputs(obs)
        seed = (self.seed * 1_000_003 + self._calls) % (2**31)
        self._calls += 1
        res = self.engine.run(ids, pv, grid, v0=v0, seed=seed, num_samples=self.num_samples)
        chosen, consistent = res.choose(v0, self.select, dt=self.cfg.action.dt)
        rows = np.arange(len(chosen))
        controls = np.asarray(res.controls[rows, chosen], np.float64)
        controls = np.stack([_pad_rows(c, num_steps) for c in controls])
        texts = [res.text[b][int(c)] for b, c in enumerate(chosen)]
        return PolicyPlan(controls, controls_to_xy(controls, obs.ego[:, 3], self.cfg.action.dt), texts,
                          consistent[rows, chosen])

