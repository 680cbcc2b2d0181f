"""RL rollouts: `group_size` samples of each scene with the current parameters, compiled once.

    roller = Roller(cfg, tokenizer)
    out = roller.sample(params, prompts, key)    # host numpy `Rollouts`, B = N scenes x G rows

Stages, each a jitted function of the parameters (a new policy never recompiles; `compiled_counts`):
  1. vision and prefill of the N prompts (`Engine`'s stages; the cache has room for the reasoning
     budget R, the re-fed `<|traj_future_start|>` and the trajectory tokens);
  2. reasoning: G samples per scene from the one decode loop (`sampling.decode`, `cfg.rl`'s
     temperature and top-p, trajectory ids banned), with each drawn token's log-prob;
  3. trajectory tokens: each sample's cache is cut back to just before its `<|traj_future_start|>`
     (its reasoning only; later slots are dropped), the token is fed again at its own position, and
     `2 x horizon` ids are drawn from the future-trajectory range only;
  4. the expert over each sample's prefix: the marginal-preserving SDE sampler (`flow_policy`,
     Flow-GRPO keeps its states and per-step log-probs) or the Euler ODE for the likelihood-free
     methods;
  5. trajectories `[B, 64, 2]` (metres, ego frame at t0) of the expert's controls and of the
     trajectory tokens' controls, integrated from each scene's v0.
Row b = scene b // G, sample b % G.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ar1_jax.action import flow, unicycle
from ar1_jax.action import tokens as traj_tokens
from ar1_jax.config import Config
from ar1_jax.infer import sampling
from ar1_jax.infer.engine import Engine
from ar1_jax.model.vla import prefix_velocity
from ar1_jax.model.vlm import decode_step
from ar1_jax.rl import flow_policy


@dataclasses.dataclass
class Prompts:
    """N scenes' generation prompts (one rig, one prompt length), in the HF processor's form: ids
    `[N, T0]` int32, every scene's patches in order `[N * P, D]` float32 and their `image_grid_thw
    [N * C * F, 3]`, v0 `[N]` m/s."""

    ids: np.ndarray
    pixel_values: np.ndarray
    image_grid_thw: np.ndarray
    v0: np.ndarray


@dataclasses.dataclass
class Rollouts:
    """What `Roller.sample` returns, host numpy, B = N x G rows (row b: scene b // G).

    reasoning_ids [B, R] int32: the decoded tokens in order; the first `num_reasoning + 1` are the
      reasoning (ending in `<|cot_end|>` when the model closed it) and `<|traj_future_start|>`.
    reasoning_logp [B, R] float32: the log-prob each was drawn with (temperature-scaled, trajectory ids
      banned, before top-p); past the stop token meaningless.
    num_reasoning [B] int32: tokens before `<|traj_future_start|>`; forced [B] bool: that token was forced.
    traj_ids / traj_logp [B, 2H]: the future trajectory tokens and their log-probs.
    controls [B, H, 2] float32: the expert's sampled controls, normalised (the flow's data space).
    sde_states [B, S + 1, H, 2], sde_logp [B, S]: the SDE's states and per-step log-probs (None: ODE).
    expert_xy, token_xy [B, H, 2]: metres, ego frame at t0; v0 [B] m/s.
    """

    reasoning_ids: np.ndarray
    reasoning_logp: np.ndarray
    num_reasoning: np.ndarray
    forced: np.ndarray
    traj_ids: np.ndarray
    traj_logp: np.ndarray
    controls: np.ndarray
    sde_states: np.ndarray | None
    sde_logp: np.ndarray | None
    expert_xy: np.ndarray
    token_xy: np.ndarray
    v0: np.ndarray


def rollout_engine_config(cfg: Config) -> Config:
    """`cfg` with inference sampling set from `cfg.rl` (temperature, top-p, G samples per scene)."""
    rl = cfg.rl
    return dataclasses.replace(cfg, infer=dataclasses.replace(cfg.infer, temperature=rl.temperature, top_p=rl.top_p,
                                                              num_samples=rl.group_size))


class Roller:
    """The compiled rollout stages for `cfg` (module docstring)."""

    def __init__(self, cfg: Config, tokenizer=None):
        self.cfg = rollout_engine_config(cfg)
        self.tokenizer = tokenizer
        a = cfg.action
        self.num_traj = 2 * a.horizon
        self.engine = Engine(self.cfg, None, tokenizer, reserve_slots=1 + self.num_traj)
        self.sde = cfg.rl.expert_loss == "flow_grpo"
        self._traj = jax.jit(self._traj_impl)
        self._expert = jax.jit(self._expert_impl)
        self._xy = jax.jit(self._xy_impl)

    # ---- compiled stages -------------------------------------------------------------------------
    def _traj_impl(self, params, cache, fs_slot, fs_pos, key):
        cfg, tk = self.cfg, self.cfg.tokens
        n = fs_slot.shape[0]
        slots = jnp.arange(cache.max_length, dtype=jnp.int32)[None]
        cache = cache.replace(valid=cache.valid & (slots < fs_slot[:, None]), next_position=fs_pos)
        step = decode_step(params, cfg.model)
        logits, cache = step(jnp.full((n,), tk.traj_future_start_id, jnp.int32), cache)
        off = tk.traj_token_offset
        out = sampling.decode(step, cache, logits, key, max_tokens=self.num_traj, temperature=cfg.infer.temperature,
                              top_p=cfg.infer.top_p, allow=(off, off + cfg.action.future_bins))
        return out.tokens, out.logp

    def _expert_impl(self, params, cache, fs_slot, fs_pos, key):
        cfg = self.cfg
        n = fs_slot.shape[0]
        velocity = prefix_velocity(params, cfg, cache.k, cache.v, cache.valid, fs_slot, fs_pos + 1)
        key_noise, key_sde = jax.random.split(key)
        noise = jax.random.normal(key_noise, (n, cfg.action.horizon, 2), jnp.float32)
        if self.sde:
            tr = flow_policy.sde_sample(velocity, noise, key_sde, cfg.infer.flow_steps, cfg.rl.sde_noise_level)
            return tr.x_final, jnp.moveaxis(tr.states, 0, 1), tr.logp
        x = flow.euler_sample(velocity, noise.shape, None, cfg.infer.flow_steps, jnp.float32, noise=noise)
        return x, None, None

    def _xy_impl(self, controls_norm, traj_ids, v0):
        a = self.cfg.action
        expert = unicycle.integrate(unicycle.denormalize(controls_norm, a), v0, dt=a.dt).xy
        token_controls, _ = traj_tokens.decode_future(traj_ids, a, self.cfg.tokens.traj_token_offset)
        return expert, unicycle.integrate(token_controls, v0, dt=a.dt).xy

    # ---- host side -------------------------------------------------------------------------------
    def sample(self, params, prompts: Prompts, key) -> Rollouts:
        """G rollouts of each of the N prompts with `params` (a pure params dict)."""
        eng, g = self.engine, self.cfg.rl.group_size
        x = eng.prepare(prompts.ids, prompts.pixel_values, prompts.image_grid_thw)
        k_reason, k_traj, k_expert = jax.random.split(key, 3)
        encoded = eng.vision(params, x["media"])
        last_logits, cache = eng.prefill(params, x["input_ids"], x["positions"], x["kv_valid"], encoded,
                                         x["next_position"])
        dec = eng.decode(params, cache, last_logits, k_reason, num_samples=g)
        traj_ids, traj_logp = self._traj(params, dec.cache, dec.stop_slot, dec.stop_position, k_traj)
        controls, states, sde_logp = self._expert(params, dec.cache, dec.stop_slot, dec.stop_position, k_expert)
        v0 = jnp.repeat(jnp.asarray(prompts.v0, jnp.float32), g)
        expert_xy, token_xy = self._xy(controls, traj_ids, v0)
        tokens = np.asarray(dec.tokens)
        fs = self.cfg.tokens.traj_future_start_id
        num = np.where((tokens == fs).any(1), np.argmax(tokens == fs, 1), tokens.shape[1]).astype(np.int32)
        host = functools.partial(jax.tree.map, np.asarray)
        return Rollouts(reasoning_ids=tokens, reasoning_logp=np.asarray(dec.logp), num_reasoning=num,
                        forced=np.asarray(dec.forced), traj_ids=np.asarray(traj_ids), traj_logp=np.asarray(traj_logp),
                        controls=np.asarray(controls), sde_states=host(states), sde_logp=host(sde_logp),
                        expert_xy=np.asarray(expert_xy), token_xy=np.asarray(token_xy), v0=np.asarray(v0))

    def texts(self, rollouts: Rollouts) -> list[str]:
        """Each row's reasoning text (the tokens before `<|traj_future_start|>`, `<|cot_end|>` dropped)."""
        if self.tokenizer is None:
            return [""] * len(rollouts.num_reasoning)
        end = self.cfg.tokens.cot_end_id
        return [self.tokenizer.decode([int(i) for i in ids[:n] if int(i) != end], skip_unknown=True)
                for ids, n in zip(rollouts.reasoning_ids, rollouts.num_reasoning)]

    def compiled_counts(self) -> dict[str, int]:
        """Programs compiled per stage (a new policy or a new batch of scenes must add none)."""
        counts = self.engine.compiled_counts()
        counts.update(traj=self._traj._cache_size(), expert=self._expert._cache_size(), xy=self._xy._cache_size())
        return counts
