"""The training driver: the one loop every task (SFT, RL) runs in.

`run(cfg, workdir, task)` builds the mesh and a `Trainer` for the task's loss and batch spec, restores
the newest checkpoint that loads (or `--init-from` weights, or starts fresh), opens the task's batch
source at the restored position, and steps until `train.steps`: metrics every `train.log_every` steps
(`metrics.jsonl`, TensorBoard, a progress bar with ETA), a checkpoint every `train.checkpoint_every`,
and one more on SIGTERM (preemption), Ctrl-C, `max_steps` or the end. Host sync lags one step so
dispatch stays asynchronous. A non-finite loss or gradient norm stops the run with
`TrainingDiverged` naming the step and the last good checkpoint; nothing bad is saved.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
import signal
import time

import jax
import numpy as np

from ar1_jax.config import Config
from ar1_jax.train.task import Task
from ar1_jax.train.trainer import Trainer, check_batch_divisibility

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN/inf; the run stopped without saving that state."""


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


def run(cfg: Config, workdir: str | pathlib.Path, task: Task, *, mesh=None, progress: bool = True,
        max_steps: int | None = None, from_step: int | None = None) -> RunResult:
    """Trains `task` with `cfg` in `workdir` until `train.steps`, resuming from its checkpoints.

    Resumes from the newest checkpoint that loads (a damaged one is set aside with a warning), or
    from `from_step` exactly; `max_steps` stops earlier, after that many steps of this invocation,
    with a checkpoint.
    """
    from ar1_jax.parallel.mesh import make_mesh
    from ar1_jax.train import checkpoint as ckpt_lib
    from ar1_jax.train import flops as flops_lib
    from ar1_jax.train.metrics import MetricsLog, Progress

    workdir = pathlib.Path(workdir)
    tc = cfg.train
    mesh = mesh if mesh is not None else make_mesh(cfg.mesh)
    check_batch_divisibility(cfg, mesh)
    lead = jax.process_index() == 0

    trainer = Trainer(cfg, mesh, loss_fn=task.loss_fn, spec=task.spec)
    ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", cfg, keep=tc.keep_checkpoints, keep_best=tc.keep_best,
                                 async_save=tc.async_checkpoint)
    data = task.open_batches(mesh)
    try:
        restored = ckpt.resume(trainer.abstract_state, from_step=from_step)
    except BaseException:
        data.close()
        ckpt.close()
        raise
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
    step_fn = trainer.compile_step()
    peak = flops_lib.peak_flops(jax.devices()[0], tc.peak_tflops * 1e12)

    end = tc.steps if max_steps is None else min(tc.steps, start + max_steps)
    metrics_log = MetricsLog(workdir, enabled=lead, tensorboard=tc.tensorboard, resume_step=start)
    bar = Progress(tc.steps, initial=start, desc=cfg.name, enabled=lead and progress)
    reason, last, step = "done", {}, start
    window_t0, window_steps = time.perf_counter(), 0
    pending: tuple[int, dict] | None = None  # metrics of the step in flight (checked one step later)
    # A producer source (RL) samples each batch with the current parameters and reports host metrics.
    set_policy = getattr(data, "set_policy", None)
    source_metrics = getattr(data, "metrics", None)

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
                if set_policy is not None:
                    set_policy(state["params"])
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
                    seconds = (time.perf_counter() - window_t0) / window_steps
                    row = {k: v for k, v in last.items() if k != "finite"}
                    flops = task.step_flops(batch)
                    row.update(step_time_s=seconds)
                    if "tokens" in last:
                        row.update(tokens_per_s=last["tokens"] / seconds)
                    row.update(step_flops=flops, mfu=None if flops is None else
                               flops_lib.mfu(flops, seconds, mesh.size, peak))
                    if source_metrics is not None:
                        row.update(source_metrics())
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
