"""Evaluation of a policy on driving scenes, open loop and closed loop: what `ar1 eval` runs.

    scenes = synthetic_scenes(cfg, 64, first_seed=10_000)
    per_scene = open_loop(scenes, cfg, model=Model(cfg, params, tokenizer))
    report = summarize(per_scene, [s.family for s in scenes])  # {"overall": {...}, "families": {...}}

Scenes come from the synthetic world (regenerated from their seeds) or from a TFDS directory written
by `ar1 data synth` (records whose `scene_id` is `synth_<seed>` are regenerated from the world with the
record's family, and checked against the record's future; others get only the trajectory metrics).

Open loop: the policy's K trajectories from the scene's own cameras and history; minADE_k / minFDE_k
over them (`eval.metrics.min_ade_fde`), then the driven sample (consistency-checked by default,
`infer.select`) scored as a track in the world (`eval.scorers.score_track`: collision, off-road, close
encounter, and NAVSIM's PDM-style `score`). Closed loop: `eval.sim.simulate`, scored with AlpaSim's
score. Every per-scene value is a float array `[N]` (NaN where a scene has no world); `summarize`
averages them overall and per family.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ar1_jax.config import Config
from ar1_jax.eval import metrics, policies, sim
from ar1_jax.eval.kinematics import trajectory_headings
from ar1_jax.eval.scorers import score_tracks, scoring_arrays
from ar1_jax.world.arrays import ego0_to_world
from ar1_jax.world.scene import MAX_AGENTS, MAX_RECTS, MAX_SEGMENTS, Scene

__all__ = ["EvalScene", "Model", "synthetic_scenes", "dataset_scenes", "open_loop", "closed_loop", "summarize",
           "OPEN_LOOP_KEYS", "CLOSED_LOOP_KEYS"]

#: Summary keys of open-loop evaluation (rates are shares of scenes in [0, 1]; distances in metres).
OPEN_LOOP_KEYS = ("min_ade@0.5", "min_ade@1.0", "min_ade@3.0", "min_ade@6.4", "min_fde@3.0", "min_fde@6.4",
                  "ade", "collision_rate", "at_fault_rate", "offroad_rate", "close_encounter_rate",
                  "consistency_rate", "consistency_first_rate", "comfort_rate", "score")
#: Summary keys of closed-loop evaluation (`cl/` prefixed; `cl/score` is AlpaSim's).
CLOSED_LOOP_KEYS = ("cl/score", "cl/pdm_score", "cl/at_fault_rate", "cl/collision_rate", "cl/offroad_rate",
                    "cl/close_encounter_rate", "cl/wrong_lane", "cl/progress", "cl/dist_to_log", "cl/comfort_rate",
                    "cl/consistency_rate")
#: Per-scene outputs of `open_loop` that are not averaged.
NOT_SUMMARIZED = ("texts", "trajectories", "chosen")


@dataclasses.dataclass
class EvalScene:
    """One scene to evaluate: images `uint8 [C, F, H, W, 3]`, history_xyz `[H, 3]` and future_xy `[T, 2]`
    (metres, ego frame at t0), v0 (m/s), the reference decisions (`coc_parse.parse` of the CoC text),
    and the world it came from (None when it cannot be rebuilt: no world-based scores)."""

    scene_id: str
    family: str
    images: np.ndarray
    history_xyz: np.ndarray
    future_xy: np.ndarray
    v0: float
    reference: Any
    world: Scene | None


@dataclasses.dataclass
class Model:
    """The AR1 model as an evaluated policy: engine inputs, K samples (`num_samples`, default
    `cfg.infer.num_samples`), which sample to drive (`select`) and the sampling seed."""

    cfg: Config
    params: dict
    tokenizer: Any
    select: str = "consistent"
    num_samples: int | None = None
    seed: int = 0

    def __post_init__(self):
        from ar1_jax.infer.engine import Engine

        self.engine = Engine(self.cfg, self.params, self.tokenizer)

    def policy(self) -> policies.ModelPolicy:
        return policies.ModelPolicy(self.engine, self.cfg, self.tokenizer, select=self.select,
                                    num_samples=self.num_samples, seed=self.seed)


def _world_scene(world: Scene, cfg: Config) -> EvalScene:
    from ar1_jax.text import coc_parse
    from ar1_jax.world.render import render

    hist, _ = world.history()
    fut, _ = world.future()
    return EvalScene(scene_id=world.scene_id, family=world.family, images=render(world, cfg), history_xyz=hist,
                     future_xy=fut[:, :2], v0=world.v0, reference=coc_parse.parse(world.cot), world=world)


def synthetic_scenes(cfg: Config, num: int, first_seed: int) -> list[EvalScene]:
    """World scenes `first_seed` .. `first_seed + num - 1` of `cfg`'s synthetic world, rendered."""
    from ar1_jax.world.families import generate

    if num < 1 or first_seed < 0:
        raise ValueError(f"synthetic scenes: need num >= 1 and first_seed >= 0, got {num} and {first_seed}")
    return [_world_scene(generate(first_seed + i, cfg), cfg) for i in range(num)]


def dataset_scenes(cfg: Config, data_dir: str | pathlib.Path, split: str, limit: int | None = None) -> list[EvalScene]:
    """The scenes of `split` of a TFDS directory (`ar1 data synth`), at most `limit`, in record order."""
    from ar1_jax.data.scene_decode import ScenesSource, decode_png
    from ar1_jax.text import coc_parse
    from ar1_jax.world.families import generate

    source = ScenesSource(data_dir, split)
    n = len(source) if limit is None else min(limit, len(source))
    c, f = cfg.scene.num_cameras, cfg.scene.num_frames
    out = []
    for i in range(n):
        ex = source[i]
        if "_bad" in ex or "images" not in ex:
            raise ValueError(f"{data_dir} {split}[{i}]: unreadable record: {ex}")
        frames = [decode_png(b) for b in ex["images"]]
        if len(frames) != c * f:
            raise ValueError(f"{data_dir} {split}[{i}]: {len(frames)} frames; config {cfg.name!r} wants {c} x {f}")
        scene_id, family = _text(ex["scene_id"]), _text(ex["family"])
        future = np.asarray(ex["future_xyz"], np.float32)
        world = None
        if scene_id.startswith("synth_") and scene_id[6:].isdigit():
            world = generate(int(scene_id[6:]), cfg, family=family)
            err = float(np.max(np.abs(world.future()[0][:, :2] - future[:, :2])))
            if err > 1e-3:
                raise ValueError(f"{data_dir} {split}[{i}] ({scene_id}): the world regenerated from its seed differs "
                                 f"from the record by {err:.3f} m; the data was written by another world version "
                                 "or config (action / synth sections): evaluate with that config")
        out.append(EvalScene(scene_id=scene_id, family=family, images=np.stack(frames).reshape(c, f, *frames[0].shape),
                             history_xyz=np.asarray(ex["history_xyz"], np.float32), future_xy=future[:, :2],
                             v0=float(ex["v0"]), reference=coc_parse.parse(_text(ex["cot"])), world=world))
    return out


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _chunks(n: int, size: int) -> list[np.ndarray]:
    """Index arrays of `size` covering range(n); the last is padded by repeating its first index (one
    compiled shape for every chunk)."""
    out = []
    for start in range(0, n, size):
        idx = np.arange(start, min(start + size, n))
        out.append(np.concatenate([idx, np.full(size - len(idx), idx[0])]) if len(idx) < size else idx)
    return out


def _model_samples(scenes: Sequence[EvalScene], model: Model, batch: int, say) -> dict[str, Any]:
    """K trajectories `[N, K, T, 2]`, consistency `[N, K]`, the chosen and the first sample's indices."""
    from ar1_jax.infer import scene as scene_lib

    cfg = model.cfg
    n = len(scenes)
    traj, cons, chosen, texts = [None] * n, [None] * n, np.zeros(n, np.int32), [""] * n
    for ci, idx in enumerate(_chunks(n, min(batch, n))):
        inputs = [scene_lib.scene_inputs(cfg, model.tokenizer, scene_lib.Scene(images=scenes[i].images,
                                                                               history_xyz=scenes[i].history_xyz))
                  for i in idx]
        ids, pv, grid, v0 = (np.stack([x[0] for x in inputs]), np.concatenate([x[1] for x in inputs]),
                             np.concatenate([x[2] for x in inputs]), np.asarray([x[3] for x in inputs], np.float32))
        res = model.engine.run(ids, pv, grid, v0=v0, seed=model.seed * 1_000_003 + ci, num_samples=model.num_samples)
        pick, consistent = res.choose(v0, model.select, dt=cfg.action.dt)
        for j, i in enumerate(idx):
            traj[i], cons[i], chosen[i], texts[i] = res.trajectory[j], consistent[j], pick[j], res.text[j][pick[j]]
        say(f"open loop: {min((ci + 1) * len(idx), n)}/{n} scenes")
    return {"trajectories": np.stack(traj), "consistent": np.stack(cons), "chosen": chosen, "texts": texts}


def _baseline_trajectories(scenes: Sequence[EvalScene], name: str, dt: float) -> np.ndarray:
    """`[N, 1, T, 2]` open-loop trajectories of a policy that needs no model."""
    t = len(scenes[0].future_xy)
    if name == "constant_velocity":
        steps = np.arange(1, t + 1) * dt
        return np.stack([np.stack([s.v0 * steps, np.zeros(t)], -1) for s in scenes])[:, None]
    if name in ("planner", "log"):  # from the logged t0 state the rule planner drives the log itself
        return np.stack([s.future_xy for s in scenes])[:, None]
    raise ValueError(f"unknown policy {name!r}; known: {policies.POLICIES}")


def _world_scores(scenes: Sequence[EvalScene], driven: np.ndarray, dt: float) -> dict[str, np.ndarray]:
    """Scorers of the driven trajectories `[N, T, 2]` (ego0) as tracks in each scene's world (NaN rows
    for scenes without a world)."""
    n = len(scenes)
    have = [i for i, s in enumerate(scenes) if s.world is not None]
    out = {k: np.full(n, np.nan) for k in ("collision", "at_fault", "offroad", "close_encounter", "pdm_score")}
    if not have:
        return out
    arrays = jax.tree.map(lambda *x: np.stack(x), *[scoring_arrays(scenes[i].world, MAX_AGENTS, MAX_RECTS,
                                                                   MAX_SEGMENTS) for i in have])
    v0 = np.asarray([scenes[i].v0 for i in have], np.float32)
    got = _track_scores(jnp.asarray(driven[have], jnp.float32), arrays, v0, dt)
    for k in out:
        out[k][have] = np.asarray(got[k])
    return out


@functools.partial(jax.jit, static_argnums=3)
def _track_scores(xy, arrays, v0, dt: float):
    """`score_track` of trajectories `[N, T, 2]` (ego0) driven from speeds `[N]` as world tracks."""
    track = ego0_to_world(xy, trajectory_headings(xy, dt), arrays.scene.ego0_pose)
    return score_tracks(track, arrays, metrics.comfort_shares(xy, v0, dt)["comfortable"], dt)


def open_loop(scenes: Sequence[EvalScene], cfg: Config, *, model: Model | None = None, policy: str = "model",
              batch: int = 8, say: Callable[[str], None] = lambda s: None) -> dict[str, np.ndarray]:
    """Per-scene open-loop values `[N]` of `model` (policy "model") or a baseline ("planner",
    "constant_velocity", "log"): `OPEN_LOOP_KEYS` without the `_rate` suffixes (`collision`, ...), plus
    `consistency_first` (the first sample's consistency, plain sampling); and per scene but not summarized:
    `texts` (the driven reasoning), `trajectories` `[N, K, T, 2]` (ego0, m) and `chosen` `[N]` (the driven one)."""
    dt = float(cfg.action.dt)
    gt = np.stack([s.future_xy for s in scenes])
    if policy == "model":
        if model is None:
            raise ValueError("open_loop: policy 'model' needs a model")
        got = _model_samples(scenes, model, batch, say)
        pred, chosen = got["trajectories"], got["chosen"]
        consistent = got["consistent"][np.arange(len(scenes)), chosen].astype(np.float64)
        first = got["consistent"][:, 0].astype(np.float64)
        texts = got["texts"]
    else:
        pred = _baseline_trajectories(scenes, policy, dt)
        chosen = np.zeros(len(scenes), np.int32)
        consistent = first = np.full(len(scenes), np.nan)
        texts = [""] * len(scenes)
    m = {k: np.asarray(v, np.float64) for k, v in metrics.min_ade_fde(pred, gt, dt).items() if k != "best"}
    driven = pred[np.arange(len(scenes)), chosen]
    m["ade"] = np.mean(np.linalg.norm(driven - gt, axis=-1), axis=-1)
    m["comfort"] = np.asarray(metrics.comfort_shares(driven, np.asarray([s.v0 for s in scenes]), dt)["comfortable"],
                              np.float64)
    world = _world_scores(scenes, driven, dt)
    m.update(collision=world["collision"], at_fault=world["at_fault"], offroad=world["offroad"],
             close_encounter=world["close_encounter"], score=world["pdm_score"], consistency=consistent,
             consistency_first=first)
    m["texts"] = np.asarray(texts, dtype=object)
    m["trajectories"], m["chosen"] = np.asarray(pred, np.float32), np.asarray(chosen, np.int32)
    return m


def closed_loop(scenes: Sequence[EvalScene], cfg: Config, *, model: Model | None = None, policy: str = "model",
                sim_cfg: sim.SimConfig = sim.SimConfig(), batch: int = 8, tracks_dir: str | pathlib.Path | None = None,
                say: Callable[[str], None] = lambda s: None) -> dict[str, np.ndarray]:
    """Per-scene closed-loop values `[N]` (`CLOSED_LOOP_KEYS` without `cl/` and `_rate`) of `model` or a
    baseline, `batch` scenes per simulation; every scene needs its world. `tracks_dir`: also write the
    track files (`sim.save_tracks`)."""
    if any(s.world is None for s in scenes):
        missing = [s.scene_id for s in scenes if s.world is None][:3]
        raise ValueError(f"closed loop needs the world of every scene; {missing} ... have none (only synthetic "
                         "scenes, `synth_<seed>`, can be rebuilt)")
    r = int(round(sim_cfg.replan_s / cfg.action.dt))
    if policy == "model":
        if model is None:
            raise ValueError("closed_loop: policy 'model' needs a model")
        pol = model.policy()
    else:
        pol = {"planner": lambda: policies.RulePlanner(r), "constant_velocity": policies.ConstantVelocity,
               "log": policies.LogReplay}[policy]()
    n = len(scenes)
    keys = {"score": "alpasim_score", "pdm_score": "pdm_score", "at_fault": "at_fault", "collision": "collision",
            "offroad": "offroad", "close_encounter": "close_encounter", "wrong_lane": "wrong_lane",
            "progress": "progress", "dist_to_log": "dist_to_log_mean", "comfort": "comfortable"}
    out = {k: np.zeros(n) for k in keys}
    out["consistency"] = np.full(n, np.nan)
    for ci, idx in enumerate(_chunks(n, min(batch, n))):
        worlds = [scenes[i].world for i in idx]
        res = sim.simulate(worlds, pol, cfg, sim_cfg,
                           progress=lambda done, total: say(f"closed loop [{pol.name}] chunk {ci + 1}: replan {done}/{total}"))
        keep = len(np.unique(idx))  # a padded last chunk repeats its first scene after the real ones
        rows, take = idx[:keep], slice(0, keep)
        for k, src in keys.items():
            out[k][rows] = res.scores[src][take]
        if res.consistent is not None:
            out["consistency"][rows] = res.consistent[take].mean(axis=1)
        if tracks_dir is not None:
            sim.save_tracks(tracks_dir, _first(res, keep), cfg)
    return out


def _first(res: sim.SimResult, keep: int) -> sim.SimResult:
    """The first `keep` scenes of a result (drops a chunk's padding)."""
    cut = lambda x: None if x is None else x[:keep]
    return dataclasses.replace(res, scenes=res.scenes[:keep], ego=res.ego[:keep], agents=res.agents[:keep],
                               plans=res.plans[:keep], reasoning=res.reasoning[:keep], consistent=cut(res.consistent),
                               collision=res.collision[:keep], offroad=res.offroad[:keep],
                               scores={k: v[:keep] for k, v in res.scores.items()})


def _rate_name(key: str, prefix: str) -> str:
    rated = {"collision", "at_fault", "offroad", "close_encounter", "consistency", "comfort", "consistency_first"}
    return prefix + (f"{key}_rate" if key in rated else key)


def summarize(per_scene: dict[str, np.ndarray], families: Sequence[str], prefix: str = "") -> dict[str, Any]:
    """{"overall": {key: mean}, "families": {family: {...}}} over the scenes (NaN entries skipped; None
    when a key has no finite value), each dict with `num_scenes`; keys renamed to the summary names
    (`collision` -> `collision_rate`, ...) and prefixed by `prefix` (e.g. "cl/")."""
    families = list(families)

    def mean_of(rows) -> dict[str, Any]:
        d: dict[str, Any] = {"num_scenes": int(len(rows))}
        for k, v in per_scene.items():
            if k in NOT_SUMMARIZED:
                continue
            vals = np.asarray(v, np.float64)[rows]
            vals = vals[np.isfinite(vals)]
            d[_rate_name(k, prefix)] = float(vals.mean()) if len(vals) else None
        return d

    out = {"overall": mean_of(np.arange(len(families)))}
    out["families"] = {f: mean_of(np.asarray([i for i, g in enumerate(families) if g == f]))
                       for f in sorted(set(families))}
    return out
