"""The one training loop: sharded state, a jitted step, and the run around it.

State is a plain dict pytree, every leaf a global `jax.Array` laid out by the rule tables:

    {"params": {vision, text, expert},     master weights in model.param_dtype
     "opt_state": optax state,              moments sharded like their parameter
     "ema": params-like (only with train.ema_decay > 0),
     "step": int32 [], "rng": uint32 [2]}

`Trainer` builds it without materialising anything on one device (`jax.eval_shape` + the rules +
`jax.jit(out_shardings=...)`) and compiles `step(state, batch) -> (state, metrics)` with in/out
shardings and the state donated. A step runs `train.grad_accum` micro-batches (a `lax.scan`, each
micro-batch spread over every data shard), clips, updates, and leaves the state unchanged when the
loss or gradient norm is not finite (`metrics["finite"]` says so; `run` then stops).

`run(cfg, workdir)` is `ar1 train`: it restores or initialises, iterates the data pipeline, logs
metrics, checkpoints, and saves on SIGTERM. SFT and RL plug in through `loss_fn`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import pathlib
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from ar1_jax.config import Config, ConfigError
from ar1_jax.model.vla import AR1, sft_loss
from ar1_jax.parallel.rules import batch_axes, batch_shard_count, param_shardings, use_rules
from ar1_jax.train import optimizer as opt_lib

log = logging.getLogger(__name__)

# loss_fn(params, cfg, batch, rng) -> (loss, metrics with "loss"). Optional attribute `weight_keys`:
# the batch keys (masks) whose sums its means divide by; with gradient accumulation each micro-batch
# then gets `batch["weight_totals"][key]` = the whole batch's sum / micro-batches (see `Trainer._grads`).
LossFn = Callable[[dict, Config, dict, jax.Array], tuple[jax.Array, dict]]


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN/inf; the run stopped without saving that state."""


# ----------------------------------------------------------------------------------------------------
# Micro-batches.



def split_microbatches(batch: dict, m: int) -> dict:
    """Splits a `build_sft_batch`-format batch into `m` micro-batches along a new leading axis.

    Micro-batch k takes rows k, k+m, k+2m, ... so that, with the batch sharded over devices in
    contiguous blocks, every micro-batch keeps rows on every device (no data moves). Images must be
    in the per-scene form (`pixel_values [B, P, D]`, one scene's `layout`, shared by all).
    """
    if m == 1:
        return jax.tree.map(lambda x: x[None], batch)
    b = batch["input_ids"].shape[0]

    def rows(x):  # [B, ...] -> [m, B/m, ...]
        return jnp.swapaxes(x.reshape(b // m, m, *x.shape[1:]), 0, 1)

    out = {}
    for key, x in batch.items():
        if key == "media":
            continue
        if key == "positions":  # [3, B, T]
            out[key] = jnp.moveaxis(x.reshape(x.shape[0], b // m, m, x.shape[2]), 2, 0)
        else:
            out[key] = rows(x)
    media = batch.get("media")
    if media is not None:
        out["media"] = {}
        for kind, item in media.items():
            if item["pixel_values"].ndim != 3:
                raise ValueError("gradient accumulation needs per-scene images (pixel_values [B, P, D], as the "
                                 "pipeline gives): flat pixel_values cannot be split by scene")
            layout = jax.tree.map(lambda x: jnp.broadcast_to(x, (m,) + x.shape), item["layout"])  # shared
            out["media"][kind] = {"pixel_values": rows(item["pixel_values"]), "layout": layout}
    return out


# ----------------------------------------------------------------------------------------------------
# The trainer: sharded state and the compiled step.


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
        micro = split_microbatches(batch, m)
        # Token-weighted: every micro-batch divides its sums by the whole batch's counts / m, so the
        # mean over micro-batches is the whole batch's loss and gradient, however unevenly the
        # reasoning tokens or valid trajectories fall.
        totals = {k: jnp.sum(batch[k].astype(jnp.float32)) / m
                  for k in getattr(self.loss_fn, "weight_keys", ()) if k in batch}
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
        metrics = dict(metrics, grad_norm=grad_norm, lr=self.schedule(state["step"]), finite=finite,
                       tokens=jnp.sum(batch["kv_valid"]).astype(jnp.float32))
        return new, metrics

    def compile_step(self, batch_shardings: Any) -> Callable[[dict, dict], tuple[dict, dict]]:
        """The jitted step with the state's and the batch's shardings, the state donated."""
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


# ----------------------------------------------------------------------------------------------------
# The run: `ar1 train`.


@dataclasses.dataclass
class RunResult:
    step: int  # the last completed step
    reason: str  # "done" | "stopped" (max_steps) | "preempted" | "interrupted" | "data_exhausted"
    last_metrics: dict
    checkpoint_step: int | None


class _Preemption:
    """Stops the loop at a step boundary on SIGTERM (preemption) or Ctrl-C, on every process alike.

    One process: a Python signal handler sets a flag. Several processes: JAX's preemption service
    (started by `jax.distributed.initialize`) catches SIGTERM on any of them and the processes agree,
    through the coordination service (no device collective, so steps stay asynchronous), on one step
    at which all of them stop and save. Ctrl-C is left alone there (KeyboardInterrupt, no save): a
    save needs every process, and an interrupt reaches them at different steps.
    """

    def __init__(self):
        self.signal: int | None = None
        self._old = {}
        self._multi = jax.process_count() > 1

    def __enter__(self):
        # With several processes SIGTERM belongs to JAX's preemption notifier: do not take it over.
        for sig in () if self._multi else (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signal = signum

    def requested(self, step: int) -> bool:
        """Whether to stop after `step` (call once per step, with consecutive steps, on every process)."""
        if self._multi:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.signal = signal.SIGTERM
                return True
        return self.signal is not None

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _host_metrics(metrics: dict) -> dict:
    return {k: float(np.asarray(v)) for k, v in metrics.items()}


def run(cfg: Config, workdir: str | pathlib.Path, *, tokenizer=None, mesh=None, progress: bool = True,
        max_steps: int | None = None, loss_fn: LossFn = sft_loss) -> RunResult:
    """Trains `cfg` in `workdir` until `train.steps`, resuming from the latest checkpoint there.

    `max_steps` stops earlier, after that many steps of this invocation, with a checkpoint.
    """
    from ar1_jax.data.pipeline import batch_shardings, make_pipeline
    from ar1_jax.parallel.mesh import make_mesh
    from ar1_jax.train import checkpoint as ckpt_lib
    from ar1_jax.train import flops as flops_lib
    from ar1_jax.train.metrics import MetricsLog, Progress

    workdir = pathlib.Path(workdir)
    tc = cfg.train
    mesh = mesh if mesh is not None else make_mesh(cfg.mesh)
    check_batch_divisibility(cfg, mesh)
    tokenizer = tokenizer if tokenizer is not None else default_tokenizer(cfg, workdir)
    lead = jax.process_index() == 0

    trainer = Trainer(cfg, mesh, loss_fn=loss_fn)
    ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", cfg, keep=tc.keep_checkpoints, keep_best=tc.keep_best,
                                 async_save=tc.async_checkpoint)
    data = make_pipeline(cfg, tokenizer, mesh)
    restored = ckpt.restore_latest(trainer.abstract_state)
    if restored is not None:
        state, data_state = restored
        data.set_state(data_state)
        start = int(state["step"])
        log.info("resumed from %s at step %d", ckpt.directory, start)
    elif tc.init_from:
        params = ckpt_lib.load_params(tc.init_from, cfg, trainer.abstract_state["params"])
        state = trainer.state_with_params(params)
        start = 0
    else:
        state = trainer.init_state()
        start = 0
    if lead:
        (workdir / "config.json").write_text(ckpt_lib.config_json(cfg))
    step_fn = trainer.compile_step(batch_shardings(cfg, mesh))
    peak = flops_lib.peak_flops(jax.devices()[0], tc.peak_tflops * 1e12)

    end = tc.steps if max_steps is None else min(tc.steps, start + max_steps)
    metrics_log = MetricsLog(workdir, enabled=lead, tensorboard=tc.tensorboard, resume_step=start)
    bar = Progress(tc.steps, initial=start, desc=cfg.name, enabled=lead and progress)
    reason, last, step = "done", {}, start
    window_t0, window_steps = time.perf_counter(), 0
    flops_cache: dict[tuple, float] = {}
    pending: tuple[int, dict] | None = None  # metrics of the step in flight (checked one step later)

    def check(step_done: int, mets: dict) -> dict:
        host = _host_metrics(mets)
        if host["finite"] < 1:
            bad = [k for k in ("loss", "grad_norm") if not math.isfinite(host[k])]
            raise TrainingDiverged(f"step {step_done}: {', '.join(bad) or 'loss'} is not finite "
                                   f"({', '.join(f'{k}={host[k]}' for k in ('loss', 'grad_norm'))}); the update "
                                   f"was not applied and no checkpoint was written after step "
                                   f"{ckpt.latest_step()}")
        return host

    try:
        with _Preemption() as preempt:
            while step < end:
                try:
                    batch = next(data)
                except StopIteration:
                    reason = "data_exhausted"
                    break
                state, mets = step_fn(state, batch)
                step += 1
                if pending is not None:
                    last = check(*pending)
                pending = (step, mets)
                window_steps += 1
                if step % tc.log_every == 0 or step == end or step == start + 1:
                    last = check(*pending)
                    now = time.perf_counter()
                    seconds = (now - window_t0) / window_steps
                    pv_shape = batch["media"]["image"]["pixel_values"].shape
                    shape_key = tuple(batch["input_ids"].shape) + (math.prod(pv_shape[:-1]),)
                    if shape_key not in flops_cache:
                        flops_cache[shape_key] = flops_lib.sft_step_flops(
                            cfg, batch_size=shape_key[0], seq_len=shape_key[1], num_patches=shape_key[2],
                            frozen=tuple(f for f in tc.frozen if "." not in f))["total"]
                    row = {k: v for k, v in last.items() if k != "finite"}
                    row.update(step_time_s=seconds, tokens_per_s=last["tokens"] / seconds,
                               step_flops=flops_cache[shape_key],
                               mfu=flops_lib.mfu(flops_cache[shape_key], seconds, mesh.size, peak))
                    if step == start + 1:
                        row["includes_compile"] = True
                    metrics_log.write(step, row)
                    bar.update(step, loss=last["loss"])
                    window_t0, window_steps = time.perf_counter(), 0
                else:
                    bar.update(step)
                if step % tc.checkpoint_every == 0 and step < end:
                    last = check(*pending)
                    ckpt.save(step, state, data.get_state(), metrics={"loss": last["loss"]})
                if preempt.requested(step):
                    reason = "preempted" if preempt.signal == signal.SIGTERM else "interrupted"
                    break
            if reason == "done" and step < tc.steps:
                reason = "stopped"
            if pending is not None:
                last = check(*pending)
            ckpt.save(step, state, data.get_state(), metrics={"loss": last.get("loss", float("nan"))}, force=True)
            ckpt.wait()
    except TrainingDiverged:
        reason = "diverged"
        ckpt.wait()
        raise
    except KeyboardInterrupt:
        reason = "interrupted"
        # The last dispatched step may be half-finished; the previous checkpoint stands.
        ckpt.wait()
        raise
    finally:
        bar.close()
        metrics_log.close()
        data.close()
        ckpt.close()
    return RunResult(step=step, reason=reason, last_metrics=last, checkpoint_step=ckpt.latest_step())


def default_tokenizer(cfg: Config, workdir: pathlib.Path):
    """The tokenizer whose layout `cfg` uses: ours (trained on the CoC corpus, cached in the workdir)."""
    from ar1_jax.text import corpus
    from ar1_jax.text import tokenizer as tok_lib

    base = cfg.tokens.traj_token_offset - len(tok_lib.SPECIAL_TOKENS)
    tok = corpus.default_tokenizer(base, workdir / "tokenizer")
    if tok.traj_token_offset != cfg.tokens.traj_token_offset or tok.vocab_size != cfg.model.text.vocab_size:
        raise ConfigError(f"config {cfg.name!r} uses a token layout (vocab {cfg.model.text.vocab_size}, <i0> at "
                          f"{cfg.tokens.traj_token_offset}) that our tokenizer does not produce (vocab "
                          f"{tok.vocab_size}, <i0> at {tok.traj_token_offset}); train with a matching tokenizer")
    return tok
