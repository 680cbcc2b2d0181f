"""Held-out scoring of a policy on world scenes it never trained on (`rl.eval_seed` onwards).

    summary = evaluate(cfg, params, tokenizer, num_scenes=16)

Rolls out `rl.group_size` samples of each held-out scene with the training rollouts' compiled stages
(same shapes: `rl.scenes_per_step` scenes per call, so nothing new compiles) and averages the reward
columns over every rollout: the before/after numbers of an RL run (`ar1 rl --heldout N`). Keys are
fixed per scene, so two policies are compared on the same scenes and the same noise.
"""

from __future__ import annotations

import jax
import numpy as np

from ar1_jax.config import Config
from ar1_jax.rl.batch import REWARD_COLUMNS
from ar1_jax.rl.rollout import Roller
from ar1_jax.rl.scenes import ScenePool, prompts_of

#: Summary keys besides the reward columns (`reward/<column>` means over rollouts).
RATES = ("consistency_rate", "collision_rate", "offroad_rate", "collision_or_offroad_rate")


def evaluate(cfg: Config, params: dict, tokenizer, num_scenes: int, *, roller: Roller | None = None) -> dict:
    """Mean reward columns and rates of `params` on `num_scenes` held-out scenes (a multiple of
    `rl.scenes_per_step`), G rollouts each: {"scenes", "rollouts", "reward/<column>", RATES...}."""
    from ar1_jax.rl.task import head_rewards

    n = cfg.rl.scenes_per_step
    if num_scenes < n or num_scenes % n:
        raise ValueError(f"held-out scenes: expected a positive multiple of rl.scenes_per_step={n}, got {num_scenes}")
    roller = roller or Roller(cfg, tokenizer)
    pool = ScenePool(cfg, tokenizer, cfg.rl.eval_seed)
    cols: dict[str, list] = {c: [] for c in REWARD_COLUMNS if c != "kept"}
    collide_or_off = []
    for first in range(0, num_scenes, n):
        scenes = pool.scenes(first, n)
        key = jax.random.fold_in(jax.random.key(cfg.rl.eval_seed), first)
        rollouts = roller.sample(params, prompts_of(scenes), key)
        got = head_rewards(cfg, scenes, rollouts, roller.texts(rollouts))
        for c in cols:
            cols[c].append(got[c])
        collide_or_off.append(np.maximum(got["collision"], got["offroad"]))
    out = {"scenes": num_scenes, "rollouts": num_scenes * cfg.rl.group_size}
    out.update({f"reward/{c}": float(np.mean(np.concatenate(v))) for c, v in cols.items()})
    out.update(consistency_rate=out["reward/consistency"], collision_rate=out["reward/collision"],
               offroad_rate=out["reward/offroad"],
               collision_or_offroad_rate=float(np.mean(np.concatenate(collide_or_off))))
    return out
