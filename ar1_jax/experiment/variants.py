"""Two ways of driving an AR1 model that `infer.engine.Engine.run` does not cover, as engines with the
same `run(prompt_ids, pixel_values, image_grid_thw, *, v0, seed, num_samples) -> InferenceResult`, so
that `eval.evaluate.open_loop` / `closed_loop` and `eval.policies.ModelPolicy` evaluate them unchanged
(`VariantModel` stands where `eval.evaluate.Model` does):

- `TrajectoryOnlyEngine`: a model trained without reasoning (`data.reasoning=False`, the paper's
  trajectory-only baseline). The generation prompt it is handed (which asks for reasoning and ends in
  `<|cot_start|>`) is rewritten to the trajectory-only prompt ending in `<|traj_future_start|>`
  (`trajectory_only_prompt`), which is prefilled; the expert then denoises K samples straight from that
  token's cache slot. No text: `text` is "", `decisions` None (never consistent).
- `TokenEngine`: AR1 driving from its 128 discrete trajectory tokens instead of the flow expert (the
  paper's autoregressive decoding): RL's compiled rollout stages (`rl.rollout.Roller`) decode the
  reasoning, feed `<|traj_future_start|>` again and draw 2 x 64 future-trajectory tokens, which decode
  to (acceleration, curvature) and are integrated with the unicycle from v0. Sampling uses
  `cfg.infer`'s temperature and top-p for both the reasoning and the trajectory tokens.

Both take their parameters at construction (`params`) and call the engines' compiled stages with them,
so swapping `params` never recompiles.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ar1_jax.action import tokens as traj_tokens
from ar1_jax.config import Config
from ar1_jax.eval import policies
from ar1_jax.infer.engine import Engine, InferenceResult

__all__ = ["VARIANTS", "TrajectoryOnlyEngine", "TokenEngine", "VariantModel", "trajectory_only_prompt"]

#: How each experiment variant drives: "expert" (`Engine`: reasoning, then the flow expert),
#: "trajectory_only" (`TrajectoryOnlyEngine`), "tokens" (`TokenEngine`).
VARIANTS = ("expert", "trajectory_only", "tokens")
_TAIL = "<|im_end|>\n<|im_start|>assistant\n"


def trajectory_only_prompt(prompt_ids: np.ndarray, tokenizer) -> np.ndarray:
    """Generation prompts `[B, T]` (`infer.scene.scene_inputs`: the reasoning instruction, ending in
    `<|cot_start|>`) -> the trajectory-only prompts `[B, T']` that `build_prompt(reasoning=False,
    include_future_start=True)` makes for the same images and history: the instruction swapped and
    `<|traj_future_start|>` last. ValueError when a row does not end in the generation prompt's tail."""
    from ar1_jax.text import prompt as prompt_lib

    ids = np.atleast_2d(np.asarray(prompt_ids))
    old = tokenizer.encode(prompt_lib.INSTRUCTION + _TAIL) + [tokenizer.id_of("<|cot_start|>")]
    new = tokenizer.encode(prompt_lib.INSTRUCTION_TRAJECTORY_ONLY + _TAIL) + [tokenizer.id_of("<|traj_future_start|>")]
    if ids.shape[1] < len(old) or not np.all(ids[:, -len(old):] == np.asarray(old)[None]):
        raise ValueError("trajectory_only_prompt: the prompts do not end in the generation prompt's instruction and "
                         "<|cot_start|> (build_prompt(cot=None, include_future_start=False))")
    return np.concatenate([ids[:, :-len(old)], np.broadcast_to(np.asarray(new, ids.dtype), (len(ids), len(new)))], 1)


@functools.partial(jax.jit, static_argnames="k")
def _tile(cache, k: int):
    """The cache of B prompts -> B x k rows (row b * k + j is prompt b), as `Engine`'s decode tiles it."""
    rep = lambda x, axis: jnp.repeat(x, k, axis=axis)
    return cache.replace(k=rep(cache.k, 1), v=rep(cache.v, 1), valid=rep(cache.valid, 0),
                         next_position=rep(cache.next_position, 0))


def _timed(timing: dict, name: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    timing[name] = time.perf_counter() - t0
    return out


class TrajectoryOnlyEngine:
    """A trajectory-only model's inference (module docstring): vision, prefill of the trajectory-only
    prompt, K Euler samples of the expert from `<|traj_future_start|>`, the unicycle trajectory.
    `engine`: an `Engine` of `cfg` whose compiled stages to use (its own params are ignored)."""

    def __init__(self, cfg: Config, params: dict, tokenizer, engine: Engine | None = None):
        self.cfg, self.params, self.tokenizer = cfg, params, tokenizer
        self.engine = engine if engine is not None else Engine(cfg, None, tokenizer)

    def run(self, prompt_ids, pixel_values, image_grid_thw, *, v0, seed: int = 0, num_samples: int | None = None,
            attention_mask=None) -> InferenceResult:
        """B scenes' generation prompts `[B, T]` -> K expert trajectories each (`InferenceResult`; trajectory
        and controls `[B, K, 64, 2]`, no reasoning)."""
        if attention_mask is not None:
            raise ValueError("TrajectoryOnlyEngine: prompts of one length only (no attention_mask)")
        eng, k = self.engine, num_samples or self.cfg.infer.num_samples
        x = eng.prepare(trajectory_only_prompt(prompt_ids, self.tokenizer), pixel_values, image_grid_thw)
        b, t = x["input_ids"].shape
        timing: dict[str, float] = {}
        t_start = time.perf_counter()
        encoded = _timed(timing, "vision", eng.vision, self.params, x["media"])
        _, cache = _timed(timing, "prefill", eng.prefill, self.params, x["input_ids"], x["positions"], x["kv_valid"],
                          encoded, x["next_position"])
        cache = _tile(cache, k)
        fs_slot = jnp.full((b * k,), t - 1, jnp.int32)  # <|traj_future_start|> is every prompt's last token
        fs_pos = jnp.repeat(jnp.asarray(x["next_position"], jnp.int32) - 1, k)
        noise_key = jax.random.split(jax.random.key(seed))[1]  # Engine.run's split: (decode, noise)
        controls_norm = _timed(timing, "denoise", eng.denoise, self.params, cache, fs_slot, fs_pos, noise_key)
        speeds = jnp.repeat(jnp.broadcast_to(jnp.asarray(v0, jnp.float32), (b,)), k)
        xy, controls = _timed(timing, "trajectory", eng.trajectory, controls_norm, speeds)
        timing.update(total=time.perf_counter() - t_start, decode=0.0, decode_steps=0, decode_per_token=0.0)
        return InferenceResult(text=[[""] * k for _ in range(b)], decisions=[[None] * k for _ in range(b)],
                               trajectory=np.asarray(xy).reshape(b, k, -1, 2),
                               controls=np.asarray(controls).reshape(b, k, -1, 2),
                               reasoning_ids=np.zeros((b, k, 0), np.int32), num_reasoning_tokens=np.zeros((b, k), int),
                               forced=np.zeros((b, k), bool), timing=timing, reasoning_logp=np.zeros((b, k)))


class TokenEngine:
    """AR1 driving from its discrete trajectory tokens (module docstring), K samples per scene with
    `cfg.infer`'s temperature and top-p. `num_samples` (default `cfg.infer.num_samples`) is fixed here:
    the rollout stages compile for it."""

    def __init__(self, cfg: Config, params: dict, tokenizer, num_samples: int | None = None):
        from ar1_jax.rl.rollout import Roller

        self.k = int(num_samples or cfg.infer.num_samples)
        rl = dataclasses.replace(cfg.rl, temperature=cfg.infer.temperature, top_p=cfg.infer.top_p, group_size=self.k,
                                 expert_loss="awfm")  # the expert's sample is not driven: the plain ODE suffices
        self.cfg, self.params, self.tokenizer = cfg, params, tokenizer
        self.roller = Roller(dataclasses.replace(cfg, rl=rl), tokenizer)
        a, offset = cfg.action, cfg.tokens.traj_token_offset
        self._controls = jax.jit(lambda ids: traj_tokens.decode_future(ids, a, offset)[0])

    def run(self, prompt_ids, pixel_values, image_grid_thw, *, v0, seed: int = 0, num_samples: int | None = None,
            attention_mask=None) -> InferenceResult:
        """B scenes' generation prompts `[B, T]` -> K samples each: reasoning, then the trajectory its tokens
        decode to (`InferenceResult`; trajectory and controls `[B, K, 64, 2]`)."""
        from ar1_jax.rl.rollout import Prompts
        from ar1_jax.text import coc_parse

        if num_samples not in (None, self.k):
            raise ValueError(f"TokenEngine: built for {self.k} samples per scene, asked for {num_samples}")
        if attention_mask is not None:
            raise ValueError("TokenEngine: prompts of one length only (no attention_mask)")
        ids = np.atleast_2d(np.asarray(prompt_ids))
        b, k = len(ids), self.k
        speeds = np.broadcast_to(np.asarray(v0, np.float32), (b,)).copy()
        t0 = time.perf_counter()
        ro = self.roller.sample(self.params, Prompts(ids, np.asarray(pixel_values), np.asarray(image_grid_thw), speeds),
                                jax.random.key(seed))
        controls = np.asarray(self._controls(jnp.asarray(ro.traj_ids)))
        texts = self.roller.texts(ro)
        n = ro.num_reasoning
        upto = np.arange(ro.reasoning_logp.shape[1])[None] <= n[:, None]  # the reasoning and its stop token
        logp = np.where(upto, ro.reasoning_logp, 0.0).sum(-1)
        shape = lambda x: np.asarray(x).reshape(b, k, *np.shape(x)[1:])
        return InferenceResult(text=[texts[i * k:(i + 1) * k] for i in range(b)],
                               decisions=[[coc_parse.parse(t) for t in texts[i * k:(i + 1) * k]] for i in range(b)],
                               trajectory=shape(ro.token_xy), controls=shape(controls),
                               reasoning_ids=shape(ro.reasoning_ids), num_reasoning_tokens=shape(n),
                               forced=shape(ro.forced), timing={"total": time.perf_counter() - t0},
                               reasoning_logp=shape(logp))


@dataclasses.dataclass
class VariantModel:
    """A policy for `eval.evaluate.open_loop` / `closed_loop` in place of `eval.evaluate.Model`: `engine` is
    an `Engine` (with its params set), a `TrajectoryOnlyEngine` or a `TokenEngine`; K samples
    (`num_samples`), the driven one chosen by `select`, sampling from `seed`. `reasons`: whether the
    variant writes reasoning (its consistency means nothing when it does not)."""

    cfg: Config
    tokenizer: Any
    engine: Any
    select: str = "consistent"
    num_samples: int | None = None
    seed: int = 0
    reasons: bool = True

    def policy(self) -> policies.ModelPolicy:
        return policies.ModelPolicy(self.engine, self.cfg, self.tokenizer, select=self.select,
                                    num_samples=self.num_samples, seed=self.seed)
