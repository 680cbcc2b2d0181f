"""The trainer: a sharded train state and one jitted, donated step for any task's loss and batch spec.

State is a plain dict pytree, every leaf a global `jax.Array` laid out by the rule tables:

    {"params": {vision, text, expert},     master weights in model.param_dtype
     "opt_state": optax state,              moments sharded like their parameter
     "ema": params-like (only with train.ema_decay > 0),
     "step": int32 [], "rng": uint32 [2]}

`Trainer` builds it without materialising anything on one device (`jax.eval_shape` + the rules +
`jax.jit(out_shardings=...)`) and compiles `step(state, batch) -> (state, metrics)` with in/out
shardings and the state donated. A step runs `train.grad_accum` micro-batches (a `lax.scan`; the
batch spec splits every field along its own batch dim, each micro-batch spread over every data
shard), clips, updates, and leaves the state unchanged when the loss or gradient norm is not finite
(`metrics["finite"]` says so; the driver then stops). Metrics are what the loss returns, plus
`grad_norm`, `lr`, `finite` and `tokens` (the sum of the spec's token field).

The loss is `loss_fn(params, cfg, batch, rng) -> (loss, metrics with "loss")`; for each of the spec's
`weight_keys` it may find `batch["weight_totals"][key]`, the count its mean divides by (under gradient
accumulation: the whole batch's sum / micro-batches, so micro-batch means add up to the whole batch's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from ar1_jax.config import Config, ConfigError
from ar1_jax.data.sft_batch import SFT_SPEC
from ar1_jax.data.spec import BatchSpec
from ar1_jax.model.vla import AR1, sft_loss
from ar1_jax.parallel.rules import batch_axes, batch_shard_count, param_shardings, use_rules
from ar1_jax.train import optimizer as opt_lib

LossFn = Callable[[dict, Config, dict, jax.Array], tuple[jax.Array, dict]]


@dataclasses.dataclass
class Trainer:
    """Sharded train state and the compiled step for `cfg` on `mesh`.

    Attributes: `state_shardings` (tree like the state), `abstract_state` (ShapeDtypeStructs carrying
    those shardings: an orbax restore target), `tx` (the optax transformation), `frozen` (bool tree
    like the params).
    """

    cfg: Config
    mesh: jax.sharding.Mesh
    loss_fn: LossFn = sft_loss
    spec: BatchSpec = SFT_SPEC
    make_model: Callable[[], nnx.Module] | None = None

    def __post_init__(self):
        cfg, mesh = self.cfg, self.mesh
        self.make_model = self.make_model or (lambda: AR1(cfg, rngs=nnx.Rngs(cfg.seed)))
        tc = cfg.train
        abstract_module = nnx.eval_shape(self.make_model)
        _, abstract_params = nnx.split(abstract_module, nnx.Param)
        psh = nnx.to_pure_dict(param_shardings(abstract_params, mesh, cfg.mesh.rules))
        pure = nnx.to_pure_dict(abstract_params)
        self.tx = opt_lib.make_optimizer(tc, pure)
        self.frozen = opt_lib.frozen_mask(tc, pure)
        self.schedule = opt_lib.learning_rate_schedule(tc)
        self.replicated = NamedSharding(mesh, P())
        abstract_opt = jax.eval_shape(self.tx.init, pure)
        self.state_shardings = {
            "params": psh,
            "opt_state": opt_lib.opt_state_shardings(abstract_opt, pure, psh, self.replicated),
            "step": self.replicated, "rng": self.replicated,
        }
        if tc.ema_decay > 0:
            self.state_shardings["ema"] = psh
        self.abstract_state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            jax.eval_shape(self._init_state), self.state_shardings)
        self.num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(pure))
        self.num_trainable = sum(math.prod(x.shape) for x, f in zip(jax.tree.leaves(pure), jax.tree.leaves(self.frozen))
                                 if not f)
        self._step = None

    # -- state ------------------------------------------------------------------------------------

    def _init_state(self) -> dict:
        params = nnx.to_pure_dict(nnx.split(self.make_model(), nnx.Param)[1])
        return self.state_from_params(params)

    def state_from_params(self, params: dict) -> dict:
        """A fresh state (step 0, new optimizer moments) around `params` (traceable)."""
        state = {"params": params, "opt_state": self.tx.init(params), "step": jnp.zeros((), jnp.int32),
                 "rng": jax.random.key_data(jax.random.key(self.cfg.seed)).astype(jnp.uint32)}
        if self.cfg.train.ema_decay > 0:
            state["ema"] = jax.tree.map(jnp.copy, params)
        return state

    def init_state(self) -> dict:
        """The initial state, created directly in its shardings (no device ever holds all of it)."""
        with self._context():
            return jax.jit(self._init_state, out_shardings=self.state_shardings)()

    def state_with_params(self, params: dict) -> dict:
        """A fresh state around existing (already sharded) params, e.g. from `--init-from`."""
        fn = jax.jit(self.state_from_params, in_shardings=(self.state_shardings["params"],),
                     out_shardings=self.state_shardings)
        with self._context():
            return fn(params)

    # -- step -------------------------------------------------------------------------------------

    def _context(self):
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(use_rules(self.cfg.mesh.rules))
        return stack

    def _grads(self, params: dict, batch: dict, rng: jax.Array) -> tuple[dict, dict]:
        """Loss metrics and gradients of the whole batch, over `train.grad_accum` micro-batches."""
        m = self.cfg.train.grad_accum
        frozen = self.frozen

        def loss_of(p, micro, key):
            p = jax.tree.map(lambda x, f: jax.lax.stop_gradient(x) if f else x, p, frozen)
            return self.loss_fn(p, self.cfg, micro, key)

        grad_fn = jax.grad(loss_of, has_aux=True)
        keys = jax.random.split(rng, m)
        if m == 1:
            return grad_fn(params, batch, keys[0])
        micro = self.spec.split_microbatches(batch, m)
        # Token-weighted: every micro-batch divides its sums by the whole batch's counts / m, so the
        # mean over micro-batches is the whole batch's loss and gradient, however unevenly the
        # reasoning tokens or valid trajectories fall.
        totals = {k: jnp.sum(batch[k].astype(jnp.float32)) / m for k in self.spec.weight_keys if k in batch}
        micro["weight_totals"] = {k: jnp.broadcast_to(v, (m,)) for k, v in totals.items()}

        def body(carry, xs):
            g_acc, m_acc = carry
            g, mets = grad_fn(params, xs[0], xs[1])
            return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, m_acc, mets)), None

        zeros_g = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        mets_shape = jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro), keys[0])[1])
        zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), mets_shape)
        (g_sum, m_sum), _ = jax.lax.scan(body, (zeros_g, zeros_m), (micro, keys))
        grads = jax.tree.map(lambda g, p: (g / m).astype(p.dtype), g_sum, params)
        return grads, jax.tree.map(lambda x: x / m, m_sum)

    def _train_step(self, state: dict, batch: dict) -> tuple[dict, dict]:
        tc = self.cfg.train
        rng, step_rng = jax.random.split(jax.random.wrap_key_data(state["rng"]))
        grads, metrics = self._grads(state["params"], batch, step_rng)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new = {"params": params, "opt_state": opt_state, "step": state["step"] + 1,
               "rng": jax.random.key_data(rng)}
        if tc.ema_decay > 0:
            d = tc.ema_decay
            new["ema"] = jax.tree.map(lambda e, p: (d * e + (1 - d) * p).astype(e.dtype), state["ema"], params)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        # A non-finite step leaves everything as it was (the run stops on it; nothing bad is saved).
        keep = {k: v for k, v in state.items() if k not in ("step", "rng")}
        for key in keep:
            new[key] = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new[key], state[key])
        metrics = dict(metrics, grad_norm=grad_norm, lr=self.schedule(state["step"]), finite=finite)
        if self.spec.tokens is not None:
            metrics["tokens"] = jnp.sum(batch[self.spec.tokens]).astype(jnp.float32)
        return new, metrics

    def compile_step(self, batch_shardings: Any = None) -> Callable[[dict, dict], tuple[dict, dict]]:
        """The jitted step with the state's and the batch's shardings (default: the spec's), the state
        donated."""
        if batch_shardings is None:
            batch_shardings = self.spec.shardings(self.mesh, self.cfg.mesh.rules)
        jitted = jax.jit(self._train_step, in_shardings=(self.state_shardings, batch_shardings),
                         out_shardings=(self.state_shardings, self.replicated), donate_argnums=(0,))

        def step(state, batch):
            with self._context():
                return jitted(state, batch)

        step.lower = lambda state, batch: _lower_in(self._context, jitted, state, batch)
        return step


def _lower_in(context, jitted, *args):
    with context():
        return jitted.lower(*args)


# ----------------------------------------------------------------------------------------------------
# Start-up checks.


def check_batch_divisibility(cfg: Config, mesh: jax.sharding.Mesh) -> None:
    """data.batch_size must split over the mesh's batch shards and into train.grad_accum micro-batches
    that still split over those shards."""
    axes = batch_axes(mesh, cfg.mesh.rules)
    shards = batch_shard_count(mesh, cfg.mesh.rules)
    b, m = cfg.data.batch_size, cfg.train.grad_accum
    if b % (shards * m):
        raise ConfigError(f"config field `data.batch_size`: {b} is not divisible by the {shards} batch shards of "
                          f"mesh {dict(mesh.shape)} (axes {axes or 'none'}) x train.grad_accum={m} micro-batches "
                          f"(need a multiple of {shards * m})")
    if b % jax.process_count():
        raise ConfigError(f"config field `data.batch_size`: {b} is not divisible by the {jax.process_count()} "
                          f"processes")
