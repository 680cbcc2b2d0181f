"""RL as a task of the one training driver (`ar1 rl`): a producer batch source and the RL loss.

`RolloutSource` makes batch k on demand: scenes k N .. k N + N - 1 of the training pool, G rollouts
each with the parameters the driver hands it (`set_policy`, called before every batch), rewards
(`rl.rewards`), group advantages per head (`cfg.rl.advantage`, dynamic sampling drops groups whose
rewards are all equal), the reference policy's log-probs (the `--init-from` weights, else the seed's
random initialisation; the KL metric, and the loss's KL term when `rl.kl_beta > 0`), packed as
`RL_SPEC`. Batch k is a pure function of
(config, k, the parameters after k steps): its position is just k, so a resumed run regenerates it.
Host metrics of the last batch (rollout_s and the rollout counts) come from `metrics()`.

    result = rl.task.run(cfg, workdir)     # cfg.train.init_from: the SFT run to start from
"""

from __future__ import annotations

import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from ar1_jax.config import Config, ConfigError
from ar1_jax.rl import grpo, rewards as rewards_lib
from ar1_jax.rl.batch import REWARD_COLUMNS, build_rl_batch, rl_spec
from ar1_jax.rl.loss import rl_loss, sequence_logp
from ar1_jax.rl.rollout import Roller
from ar1_jax.rl.scenes import ScenePool, arrays_of, prompts_of
from ar1_jax.train.task import Task


def head_rewards(cfg: Config, scenes, rollouts, texts: list[str]) -> dict[str, np.ndarray]:
    """Every reward column `[B]` float32 (`REWARD_COLUMNS` but "kept"): `total` is the product's score
    (the expert's trajectory with the trace: consistency, reasoning, ADE-gated trajectory, collision,
    off-road, format), `tokens` the token head's (consistency, reasoning, format and the trajectory
    tokens' own ADE-gated term), `expert` the expert's (consistency, trajectory, collision, off-road)."""
    rc, g = cfg.rl.reward, cfg.rl.group_size
    dt = cfg.action.dt
    gt = np.repeat(np.stack([s.gt_xy for s in scenes]), g, axis=0)
    refs = [s.reference for s in scenes for _ in range(g)]
    n_tok = rollouts.num_reasoning.astype(np.float32)
    terms = rewards_lib.score_rollouts(texts, rollouts.expert_xy, rollouts.v0, gt, references=refs,
                                       scenes=arrays_of(scenes, g), num_tokens=n_tok, cfg=rc, dt=dt)
    tok_comfort = np.asarray(rewards_lib.comfort(rollouts.token_xy, rollouts.v0, dt), np.float32)
    tok_traj = np.asarray(rewards_lib.ade_gated_reward(rollouts.token_xy, gt, tok_comfort, rc.ade_gate_m), np.float32)
    out = dict(terms)
    out["token_trajectory"] = tok_traj
    out["tokens"] = (rc.consistency * terms["consistency"] + rc.reasoning * terms["reasoning"]
                     + rc.format * terms["format"] + rc.trajectory * tok_traj).astype(np.float32)
    out["expert"] = (rc.consistency * terms["consistency"] + rc.trajectory * terms["trajectory"]
                     - rc.collision * terms["collision"] - rc.offroad * terms["offroad"]).astype(np.float32)
    return out


def starting_params(cfg: Config, abstract: dict) -> dict:
    """The policy an RL run starts from, laid out as `abstract` (ShapeDtypeStructs with shardings):
    the `train.init_from` weights, else the random initialisation of `cfg.seed` (the driver's start)."""
    if cfg.train.init_from:
        from ar1_jax.train import checkpoint as ckpt_lib

        return ckpt_lib.load_params(cfg.train.init_from, cfg, abstract)
    from ar1_jax.infer.run import load_weights

    return jax.device_put(load_weights(cfg)[1], jax.tree.map(lambda a: a.sharding, abstract))


class RolloutSource:
    """The driver's batch source for RL (module docstring)."""

    def __init__(self, cfg: Config, tokenizer, mesh):
        self.cfg, self.mesh = cfg, mesh
        self.roller = Roller(cfg, tokenizer)
        self.pool = ScenePool(cfg, tokenizer, cfg.rl.scene_seed, cfg.rl.num_scenes or None)
        self.step = 0
        self.params = None
        self.reference = None
        self._ref_logp = jax.jit(lambda p, b: sequence_logp(p, cfg, b)[0])
        self._adv = jax.jit(grpo.advantage_fn(cfg.rl.advantage))
        self._metrics: dict = {}
        self._handed_out: float | None = None  # when the last batch left (the update runs from then on)

    def set_policy(self, params) -> None:
        """The parameters the next batch is rolled out with (the driver's current state)."""
        self.params = params
        if self.reference is None:
            self.reference = self._load_reference(params)

    def _load_reference(self, params):
        """The frozen reference policy (`starting_params`), laid out like `params`; rebuilt on resume too."""
        return starting_params(self.cfg, jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params))

    def __next__(self) -> dict:
        if self.params is None:
            raise RuntimeError("RolloutSource: set_policy(params) before asking for a batch")
        cfg, rl = self.cfg, self.cfg.rl
        jax.block_until_ready(self.params)  # the previous update
        t0 = time.perf_counter()
        update_s = None if self._handed_out is None else t0 - self._handed_out
        scenes = self.pool.scenes(self.step * rl.scenes_per_step, rl.scenes_per_step)
        key = jax.random.fold_in(jax.random.key(cfg.seed), self.step)
        rollouts = self.roller.sample(self.params, prompts_of(scenes), key)
        texts = self.roller.texts(rollouts)
        cols = head_rewards(cfg, scenes, rollouts, texts)
        n, g = rl.scenes_per_step, rl.group_size
        kept_groups = np.ones(n, bool)
        if rl.dynamic_sampling:
            kept_groups = np.asarray(grpo.keep_groups(cols["tokens"].reshape(n, g))
                                     | grpo.keep_groups(cols["expert"].reshape(n, g)))
        kept = np.repeat(kept_groups, g)
        cols["kept"] = kept.astype(np.float32)
        token_adv = np.asarray(self._adv(jnp.asarray(cols["tokens"].reshape(n, g)))).reshape(-1)
        expert_adv = np.asarray(self._adv(jnp.asarray(cols["expert"].reshape(n, g)))).reshape(-1)
        table = np.stack([cols[c] for c in REWARD_COLUMNS], axis=1)
        host = build_rl_batch(cfg, scenes, rollouts, token_adv=token_adv * kept, expert_adv=expert_adv * kept,
                              kept=kept, rewards=table)
        batch = rl_spec(cfg).globalize(host, self.mesh, cfg.mesh.rules, num_processes=1)
        batch["ref_logp"] = self._ref_logp(self.reference, batch)
        rollout_s = time.perf_counter() - t0
        self._metrics = {"rollout_s": rollout_s, "update_s": update_s, "forced_frac": float(rollouts.forced.mean()),
                         "reasoning_tokens": float(rollouts.num_reasoning.mean()),
                         "rollout_rows_per_s": len(kept) / rollout_s,
                         "rollout_tokens_per_s": float(np.sum(rollouts.num_reasoning + 1) + rollouts.traj_ids.size)
                         / rollout_s}
        self.step += 1
        self._handed_out = time.perf_counter()
        return batch

    def metrics(self) -> dict:
        """Host metrics of the last batch: rollout_s (its rollouts, rewards and packing), update_s (the
        update before it, from hand-out to its parameters being ready; None for the first), forced_frac
        (rows whose `<|traj_future_start|>` was forced), reasoning_tokens (mean), rollout_rows_per_s and
        rollout_tokens_per_s (reasoning, `<|traj_future_start|>` and trajectory tokens drawn, per second
        of rollout_s, which includes scoring and packing)."""
        return dict(self._metrics)

    def get_state(self) -> dict:
        return {"rl_step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["rl_step"])

    def close(self) -> None:
        pass


def rl_task(cfg: Config, tokenizer) -> Task:
    """RL on world scenes: `rl_loss`, `rl_spec(cfg)`, `RolloutSource` (no FLOPs estimate yet)."""
    return Task(name="rl", loss_fn=rl_loss, spec=rl_spec(cfg), open_batches=lambda mesh: RolloutSource(cfg, tokenizer, mesh))


def rl_config(cfg: Config) -> Config:
    """`cfg` checked for RL, with `data.batch_size` = scenes_per_step x group_size."""
    import dataclasses

    if cfg.train.grad_accum != 1:
        raise ConfigError(f"config field `train.grad_accum`: RL takes one update per rollout batch; expected 1, "
                          f"got {cfg.train.grad_accum}")
    if not cfg.is_vla:
        raise ConfigError(f"config {cfg.name!r} has no action expert; RL needs an AR1 config (ar1_*)")
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=cfg.rl.batch_size)).validate()


def run(cfg: Config, workdir: str | pathlib.Path, *, tokenizer=None, mesh=None, progress: bool = True,
        max_steps: int | None = None, from_step: int | None = None):
    """`ar1 rl`: the driver running `rl_task` in `workdir` (see `ar1_jax.train.driver.run`)."""
    from ar1_jax.train import driver, sft

    cfg = rl_config(cfg)
    tokenizer = tokenizer if tokenizer is not None else sft.default_tokenizer(cfg, pathlib.Path(workdir))
    return driver.run(cfg, workdir, rl_task(cfg, tokenizer), mesh=mesh, progress=progress, max_steps=max_steps,
                      from_step=from_step)
