"""Compiled AR1 inference: vision + prefill, reasoning decode, flow denoising, trajectory.

    engine = Engine(cfg, params, tokenizer)                 # int8=True: weight-only int8 decoder / expert
    result = engine.run(prompt_ids, pixel_values, image_grid_thw, v0=v0, seed=0)
    result.text, result.decisions, result.trajectory  # [B, K, 64, 2] metres, ego frame at t0
    result.timing                                     # seconds: vision, prefill, decode, denoise, ...

A batch is B scenes (prompts `[B, T]`, one bucket) x K samples; every stage runs the whole batch in
one compiled call. With `mesh`, parameters are sharded by the training rules (`parallel.rules`) and
the scenes over the batch axes (`data`, `fsdp`): one process serves a pod slice. Parameters given to
the constructor are kept in the inference layout (`model.quant.inference_params`: per-layer weight
buffers, optionally int8); parameters passed to the stages directly (RL) may be the stacked ones.

Stages, each one compiled function (shapes fixed by the prompt bucket, so a second scene of the same
bucket never recompiles):
  1. vision: the ViT over all camera frames;
  2. prefill: the prompt into a KV cache of `T + max_reasoning_tokens` slots;
  3. decode: the K samples of a scene share the prefilled prompt (the cache is tiled K times, not
     recomputed); each decodes its own reasoning in the one decode loop (`sampling.decode`: greedy or
     temperature + top-p; trajectory tokens masked out of the logits) until every sample has fed
     `<|traj_future_start|>` into the cache (the release's "stop one token after"); a sample that
     never emits it within the budget has it forced at the last step, and one that ends its text
     (`<|im_end|>` / `<|endoftext|>`) has it fed in place of the end token (both reported as `forced`);
     the loop ends when every sample has stopped; each drawn token's log-prob is kept (RL needs them);
  4. denoise: Euler flow matching of the action expert over each sample's cached prefix;
  5. trajectory: controls de-normalised and integrated with the unicycle model from v0.
Each stage is timed separately with `block_until_ready` (`run(..., timed=False)`: one wait at the end).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ar1_jax.action import flow, unicycle
from ar1_jax.config import Config
from ar1_jax.infer import sampling
from ar1_jax.model import quant
from ar1_jax.model.layers import dtype_of
from ar1_jax.model.vla import prefix_velocity
from ar1_jax.model.vlm import decode_step, encode_media, prefill, prepare_inputs


@dataclasses.dataclass
class InferenceResult:
    text: list[list[str]]  # [B][K] reasoning text
    decisions: list[list[Any]]  # [B][K] parsed CoC decisions (ar1_jax.text.coc_parse.parse results) or None
    trajectory: np.ndarray  # [B, K, 64, 2] metres, ego frame at t0
    controls: np.ndarray  # [B, K, 64, 2] (acceleration m/s^2, curvature 1/m)
    reasoning_ids: np.ndarray  # [B, K, R] generated ids (prefix up to <|traj_future_start|> is meaningful)
    num_reasoning_tokens: np.ndarray  # [B, K] tokens before <|traj_future_start|>
    forced: np.ndarray  # [B, K] True where <|traj_future_start|> had to be forced
    timing: dict[str, float]
    reasoning_logp: np.ndarray | None = None  # [B, K] log-likelihood of each reasoning, stop token included
    token_logp: np.ndarray | None = None  # [B, K, R] each drawn token's log-prob (0 after the stop token, greedy)

    def choose(self, v0, mode: str = "consistent", dt: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """The sample to drive per scene, int `[B]`, and each sample's reasoning-action consistency, bool
        `[B, K]` (`infer.select`). mode "consistent": the most likely consistent sample (else the most
        likely); "likely": the most likely; "first": sample 0. v0: `[B]` (or one) speed at t0, m/s."""
        from ar1_jax.infer import select

        b, k = self.trajectory.shape[:2]
        speeds = np.broadcast_to(np.asarray(v0, np.float64), (b,))
        consistent = np.stack([select.sample_consistency(self.decisions[i], self.trajectory[i], speeds[i], dt)
                               for i in range(b)])
        logp = self.reasoning_logp if self.reasoning_logp is not None else np.zeros((b, k))
        if mode == "consistent":
            chosen = [select.pick_consistent(consistent[i], logp[i]) for i in range(b)]
        elif mode == "likely":
            chosen = [select.pick_most_likely(logp[i]) for i in range(b)]
        elif mode == "first":
            chosen = [0] * b
        else:
            raise ValueError(f"choose: mode must be consistent, likely or first, got {mode!r}")
        return np.asarray(chosen, np.int32), consistent


@functools.partial(jax.jit, static_argnums=1)
def _row_keys(seeds, num_samples: int):
    """(decode keys, noise keys), typed `[B * K]`, row b * K + j: sample j of the scene with seeds[b]."""
    def rows(scene_key):
        return jax.vmap(lambda j: jax.random.fold_in(scene_key, j))(jnp.arange(num_samples))

    pair = jax.vmap(lambda s: jax.random.split(jax.random.key(s)))(seeds)  # [B, 2]
    return jax.vmap(rows)(pair[:, 0]).reshape(-1), jax.vmap(rows)(pair[:, 1]).reshape(-1)


class Engine:
    """Holds an AR1 config + parameters and runs scenes through the compiled stages."""

    def __init__(self, cfg: Config, params: dict | None, tokenizer=None, *, reserve_slots: int = 0,
                 int8: bool = False, mesh: jax.sharding.Mesh | None = None, rules: str | None = None):
        """`params` are what `run` uses (None: pass them to the stages yourself), converted once to the
        inference layout (int8 kernels with `int8`); `reserve_slots`: cache slots kept free after the
        reasoning budget (RL feeds trajectory tokens there); `mesh`: shard parameters by `rules`
        (default `cfg.mesh.rules`) and scenes over the batch axes."""
        if not cfg.is_vla:
            raise ValueError(f"config {cfg.name!r} has no action expert")
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.dtype = dtype_of(cfg.model.dtype)
        self.reserve_slots = int(reserve_slots)
        self.int8 = bool(int8)
        self.mesh = mesh
        self.rules = rules or cfg.mesh.rules
        self.params = None if params is None else self.place_params(params)
        # The compiled stages, each a function of the parameters (a new policy never recompiles).
        self.vision = jax.jit(self._vision_impl)
        self.prefill = jax.jit(self._prefill_impl)
        # The prefill's cache is consumed by the decode (tiled K times); the decode's own output
        # cache is donated to nothing: the denoise reads it after.
        self.decode = jax.jit(self._decode_impl, static_argnames=("num_samples",))
        self.denoise = jax.jit(self._denoise_impl)
        self.trajectory = jax.jit(self._trajectory_impl)

    def place_params(self, params: dict) -> dict:
        """`params` (stacked, as trained or loaded) in the inference layout, sharded over the mesh."""
        if self.mesh is not None:
            params = jax.device_put(params, self.param_shardings())
        if isinstance(params["text"]["layers"], (tuple, list)):  # already converted
            return params
        with self._context():
            return quant.inference_params(params, int8=self.int8)

    def param_shardings(self) -> dict:
        """NamedShardings of the stacked params on the mesh, by the rules (as training lays them out)."""
        from flax import nnx

        from ar1_jax.model.vla import AR1
        from ar1_jax.parallel.rules import param_shardings

        abstract = nnx.state(nnx.eval_shape(lambda: AR1(self.cfg, rngs=nnx.Rngs(0))), nnx.Param)
        return nnx.to_pure_dict(param_shardings(abstract, self.mesh, self.rules))

    def _context(self):
        from ar1_jax.parallel.rules import mesh_context

        return mesh_context(self.mesh, self.rules)

    # ---- compiled stages -------------------------------------------------------------------------
    def _vision_impl(self, params, media):
        return encode_media(params, self.cfg.model, media, dtype=self.dtype,
                            impl=self.cfg.model.attention_impl_for("vision"))

    def _prefill_impl(self, params, input_ids, positions, kv_valid, encoded, next_position):
        return prefill(params, self.cfg.model, input_ids, positions, kv_valid, next_position,
                       extra_slots=self.cfg.infer.max_reasoning_tokens + self.reserve_slots, encoded=encoded)

    def _decode_impl(self, params, cache, last_logits, key, *, num_samples):
        cfg, ic, tk = self.cfg, self.cfg.infer, self.cfg.tokens
        tile = lambda x, axis: jnp.repeat(x, num_samples, axis=axis)
        cache = cache.replace(k=tile(cache.k, 1), v=tile(cache.v, 1), valid=tile(cache.valid, 0),
                              next_position=tile(cache.next_position, 0))
        traj_stop = tk.traj_token_offset + cfg.action.future_bins + cfg.action.history_bins
        return sampling.decode(decode_step(params, cfg.model), cache, tile(last_logits, 0), key,
                               max_tokens=ic.max_reasoning_tokens, temperature=ic.temperature, top_p=ic.top_p,
                               ban=(tk.traj_token_offset, traj_stop), stop_id=tk.traj_future_start_id,
                               end_ids=self.end_ids())

    def end_ids(self) -> tuple[int, ...]:
        """Ids that end a sample's text (`<|im_end|>`, `<|endoftext|>`): the reasoning stops there."""
        tk = self.cfg.tokens
        return tuple(sorted({i for i in (tk.eos_id, getattr(tk, "pad_id", None)) if i is not None and i >= 0}
                            - {tk.traj_future_start_id}))

    def _denoise_impl(self, params, cache, fs_slot, fs_pos, key):
        cfg = self.cfg
        velocity = prefix_velocity(params, cfg, cache.k, cache.v, cache.valid, fs_slot, fs_pos + 1)
        # Per-row keys (what `run` passes): a row's noise is its own key's. One key: row i's noise depends
        # only on (key, i).
        shape = (cfg.action.horizon, 2)
        keys = key if sampling.per_row_keys(key) else jax.random.split(key, fs_slot.shape[0])
        noise = jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(keys)
        return flow.euler_sample(velocity, noise.shape, None, cfg.infer.flow_steps, jnp.float32, noise=noise)

    def _trajectory_impl(self, controls_norm, v0):
        controls = unicycle.denormalize(controls_norm, self.cfg.action)
        return unicycle.integrate(controls, v0, dt=self.cfg.action.dt).xy, controls

    # ---- host side -------------------------------------------------------------------------------
    def prepare(self, prompt_ids, pixel_values, image_grid_thw, attention_mask=None) -> dict:
        """Host arrays for one bucket (`ar1_jax.model.vlm.prepare_inputs`): positions, padding mask,
        vision layout, next rotary position. B > 1 scenes with the same images each (sizes and count)
        get their pixels per scene, `[B, P, D]`, so the vision tower runs vmapped over the scenes (and
        sharded with them on a mesh)."""
        x = prepare_inputs(self.cfg.model, prompt_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                           image_grid_thw=image_grid_thw)
        b = x["input_ids"].shape[0]
        media = x["media"]
        if b > 1 and media and set(media) == {"image"} and image_grid_thw is not None:
            grid = np.asarray(image_grid_thw).reshape(-1, 3)
            if len(grid) % b == 0 and (grid.reshape(b, -1, 3) == grid[: len(grid) // b][None]).all():
                from ar1_jax.model.vision import vision_layout

                pv = media["image"]["pixel_values"]
                x["media"] = {"image": {"pixel_values": pv.reshape(b, -1, pv.shape[-1]),
                                        "layout": vision_layout(self.cfg.model.vision, grid[: len(grid) // b])}}
        return x

    def place_inputs(self, x: dict) -> dict:
        """With a mesh, the batch dim of the prepared inputs on the batch axes (when it divides)."""
        if self.mesh is None:
            return x
        from jax.sharding import NamedSharding, PartitionSpec

        from ar1_jax.parallel.rules import activation_spec

        def put(a, names):
            spec = activation_spec(names, self.mesh, self.rules, shape=a.shape)
            return jax.device_put(a, NamedSharding(self.mesh, PartitionSpec(*spec)))

        out = dict(x, input_ids=put(x["input_ids"], ("batch", None)), kv_valid=put(x["kv_valid"], ("batch", None)),
                   positions=put(x["positions"], (None, "batch", None)),
                   next_position=put(x["next_position"], ("batch",)))
        if x["media"]:
            media = {}
            for kind, m in x["media"].items():
                pv = m["pixel_values"]
                pv = put(pv, ("batch", None, None)) if pv.ndim == 3 else pv
                media[kind] = dict(m, pixel_values=pv)
            out["media"] = media
        return out

    def run(self, prompt_ids, pixel_values, image_grid_thw, *, v0, seed: int = 0, num_samples: int | None = None,
            attention_mask=None, timed: bool = True) -> InferenceResult:
        """Runs one bucket of B scenes (prompts `[B, T]` or `[T]`) with K samples each; v0 `[B]` m/s.
        `seed`: one int (scene b draws with seed + b) or one per scene `[B]`. Every draw of scene b's
        samples comes from its own seed alone, so a scene gives the same samples alone as in any batch
        (and on any mesh), sample for sample.
        `timed`: wait for each stage (per-stage timing); False: one wait at the end (throughput)."""
        if self.params is None:
            raise ValueError("Engine.run needs params: pass them to Engine(...) (or call the stages directly)")
        k = num_samples or self.cfg.infer.num_samples
        x = self.place_inputs(self.prepare(prompt_ids, pixel_values, image_grid_thw, attention_mask))
        b = x["input_ids"].shape[0]
        seeds = np.asarray(seed, np.int64) if np.ndim(seed) else int(seed) + np.arange(b)
        if seeds.shape != (b,):
            raise ValueError(f"Engine.run: seed must be one int or one per scene ({b}), got shape {seeds.shape}")
        key_decode, key_noise = _row_keys(jnp.asarray(seeds, jnp.uint32), k)
        timing = {}

        def timed_call(name, fn, *args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            if timed:
                out = jax.block_until_ready(out)
                timing[name] = time.perf_counter() - t0
            return out

        t_start = time.perf_counter()
        with self._context():
            encoded = timed_call("vision", self.vision, self.params, x["media"])
            last_logits, cache = timed_call("prefill", self.prefill, self.params, x["input_ids"], x["positions"],
                                            x["kv_valid"], encoded, x["next_position"])
            dec = timed_call("decode", self.decode, self.params, cache, last_logits, key_decode, num_samples=k)
            controls_norm = timed_call("denoise", self.denoise, self.params, dec.cache, dec.stop_slot,
                                       dec.stop_position, key_noise)
            v0 = jnp.repeat(jnp.broadcast_to(jnp.asarray(v0, jnp.float32), (b,)), k)
            xy, controls = timed_call("trajectory", self.trajectory, controls_norm, v0)
            xy, controls, tokens, logp, forced, steps = jax.device_get(
                (xy, controls, dec.tokens, dec.logp, dec.forced, dec.steps))
        timing["total"] = time.perf_counter() - t_start
        steps = int(steps)
        timing["decode_steps"] = steps
        if timed:
            timing["decode_per_token"] = timing["decode"] / max(steps, 1)
            timing["denoise_per_step"] = timing["denoise"] / self.cfg.infer.flow_steps

        tokens = np.asarray(tokens).reshape(b, k, -1)
        fs_tok = self.cfg.tokens.traj_future_start_id
        n_reason = np.array([[int(np.argmax(r == fs_tok)) if (r == fs_tok).any() else r.shape[0] for r in row]
                             for row in tokens])
        texts, decisions = self._texts(tokens, n_reason)
        logp = np.asarray(logp).reshape(b, k, -1)
        upto = np.arange(logp.shape[-1])[None, None] <= n_reason[..., None]  # reasoning and its stop token
        return InferenceResult(text=texts, decisions=decisions, trajectory=np.asarray(xy).reshape(b, k, -1, 2),
                               controls=np.asarray(controls).reshape(b, k, -1, 2), reasoning_ids=tokens,
                               num_reasoning_tokens=n_reason, forced=np.asarray(forced).reshape(b, k), timing=timing,
                               reasoning_logp=np.where(upto, logp, 0.0).sum(-1), token_logp=logp)

    def _texts(self, tokens, n_reason):
        if self.tokenizer is None:
            return [[""] * tokens.shape[1] for _ in range(tokens.shape[0])], \
                   [[None] * tokens.shape[1] for _ in range(tokens.shape[0])]
        from ar1_jax.text import coc_parse

        texts, decisions = [], []
        for row, counts in zip(tokens, n_reason):
            t_row, d_row = [], []
            for ids, n in zip(row, counts):
                ids = [int(i) for i in ids[:n] if int(i) != self.cfg.tokens.cot_end_id]
                text = self.tokenizer.decode(ids, skip_unknown=True)
                t_row.append(text)
                d_row.append(coc_parse.parse(text))
            texts.append(t_row)
            decisions.append(d_row)
        return texts, decisions

    def compiled_counts(self) -> dict[str, int]:
        """How many programs each stage has compiled (a new bucket adds one; a new scene must not)."""
        return {name: getattr(self, name)._cache_size() for name in ("vision", "prefill", "decode", "denoise",
                                                                     "trajectory")}
