"""The scenes RL rolls out on: world scenes (`ar1_jax.world`) as prompts plus what rewards read.

Scene `k` of a stream is world scene `base_seed + k`, rendered and prompted exactly as `ar1 data
synth` records and `ar1 infer` prompts are; `ScenePool` caches prepared scenes so a pool smaller
than the run is rendered once. Everything is a pure function of (config, seed): a resumed run sees
the same scenes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ar1_jax.config import Config
from ar1_jax.rl.rollout import Prompts
from ar1_jax.world.arrays import SceneArrays, scene_arrays, stack_scene_arrays
from ar1_jax.world.scene import MAX_AGENTS, MAX_RECTS


@dataclasses.dataclass
class RLScene:
    """One scene ready for rollouts and rewards.

    ids `[T0]` int32: the generation prompt (`infer.scene.scene_inputs`, as `ar1 infer` builds it);
    pixel_values `[P, D]` float32, image_grid_thw `[C*F, 3]`; v0 m/s (estimated from the history, as
    inference does); gt_xy `[H, 2]` the expert's future (metres, ego frame at t0); reference the
    ground-truth CoC sentence; arrays the agents and map for collision / off-road (`SceneArrays`).
    """

    seed: int
    family: str
    ids: np.ndarray
    pixel_values: np.ndarray
    image_grid_thw: np.ndarray
    v0: float
    gt_xy: np.ndarray
    reference: str
    arrays: SceneArrays


def make_scene(cfg: Config, tokenizer, seed: int) -> RLScene:
    """World scene `seed`, rendered (`synthetic.to_record`) and prompted as `ar1 infer` prompts a scene."""
    from ar1_jax.data import synthetic
    from ar1_jax.infer import scene as scene_lib
    from ar1_jax.world.families import generate

    world = generate(int(seed), cfg)
    rec = synthetic.to_record(world, cfg)
    ids, pv, grid, v0 = scene_lib.scene_inputs(cfg, tokenizer, scene_lib.Scene(images=rec["images"],
                                                                              history_xyz=rec["history_xyz"]))
    return RLScene(seed=int(seed), family=str(rec["family"]), ids=np.asarray(ids, np.int32),
                   pixel_values=np.asarray(pv, np.float32),
                   image_grid_thw=np.asarray(grid), v0=v0, gt_xy=np.asarray(rec["future_xyz"][:, :2], np.float32),
                   reference=str(rec["cot"]), arrays=scene_arrays(world, MAX_AGENTS, MAX_RECTS))


class ScenePool:
    """Scenes `base_seed + (k mod size)` for k = 0, 1, ... (size None: no wrap). A pool keeps every
    prepared scene; without one only the most recent `RECENT` are kept (a long run would grow)."""

    RECENT = 64

    def __init__(self, cfg: Config, tokenizer, base_seed: int, size: int | None = None):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.base_seed, self.size = int(base_seed), size
        self._cache: dict[int, RLScene] = {}

    def scene(self, k: int) -> RLScene:
        seed = self.base_seed + (k if self.size is None else k % self.size)
        if seed not in self._cache:
            if self.size is None and len(self._cache) >= self.RECENT:
                self._cache.pop(next(iter(self._cache)))  # the oldest (dicts keep insertion order)
            self._cache[seed] = make_scene(self.cfg, self.tokenizer, seed)
        return self._cache[seed]

    def scenes(self, first: int, count: int) -> list[RLScene]:
        return [self.scene(first + i) for i in range(count)]


def prompts_of(scenes: list[RLScene]) -> Prompts:
    """The rollout inputs of N scenes (one rig and one prompt length, as every world scene has)."""
    lengths = {len(s.ids) for s in scenes}
    if len(lengths) != 1:
        raise ValueError(f"RL scenes have prompts of different lengths {sorted(lengths)}: one camera rig and "
                         "history length per run")
    return Prompts(ids=np.stack([s.ids for s in scenes]),
                   pixel_values=np.concatenate([s.pixel_values for s in scenes]),
                   image_grid_thw=np.concatenate([s.image_grid_thw for s in scenes]),
                   v0=np.array([s.v0 for s in scenes], np.float32))


def arrays_of(scenes: list[RLScene], repeat: int = 1) -> SceneArrays:
    """The scenes' `SceneArrays` stacked `[N * repeat, ...]` (each scene repeated `repeat` times in a row)."""
    return stack_scene_arrays([s.arrays for s in scenes for _ in range(repeat)])
