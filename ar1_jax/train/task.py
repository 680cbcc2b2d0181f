"""What the training driver runs: a task = a loss, a batch spec, a batch source and a FLOPs estimate.

The driver (`ar1_jax.train.driver.run`) owns everything a run shares whatever it trains: the mesh,
the sharded state, the optimizer, micro-batches, the jitted step, checkpoints with exact resume,
preemption, the NaN guard, metrics and progress. A task says only what differs:

  loss_fn(params, cfg, batch, rng) -> (loss, metrics)   the objective; its metrics are logged as is
  spec                                                   the batch's fields (`ar1_jax.data.spec`)
  open_batches(mesh) -> BatchSource                      global batches laid out as `spec` says
  step_flops(batch) -> float | None                      model FLOPs of one step on `batch` (MFU)

SFT is one task (`ar1_jax.train.sft.sft_task`): a grain pipeline over TFDS scenes. RL is another,
whose batch source makes batches by rolling out the current policy.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

import jax

from ar1_jax.data.spec import BatchSpec
from ar1_jax.train.trainer import LossFn


class BatchSource(Protocol):
    """An iterator of global batches with a position that checkpoints store.

    `next()` gives a batch (a tree of `jax.Array`s with the task spec's shardings) or raises
    StopIteration when the data ends; `get_state()` is a JSON-able position such that `set_state` on
    a fresh source over the same data continues with exactly the batches that would have come next;
    `close()` stops background work (`get_state` still answers afterwards).
    """

    def __next__(self) -> dict: ...

    def get_state(self) -> dict: ...

    def set_state(self, state: dict) -> None: ...

    def close(self) -> None: ...


class PolicyBatchSource(BatchSource, Protocol):
    """A producer source (RL): the driver hands it the current parameters before each batch (they are
    donated to the step afterwards: copy what must outlive it) and logs its `metrics()` (host floats
    of the last batch) with each metrics row."""

    def set_policy(self, params: dict) -> None: ...

    def metrics(self) -> dict: ...


def _no_flops(batch: dict) -> float | None:
    return None


@dataclasses.dataclass(frozen=True)
class Task:
    """A training objective for the driver (see the module docstring)."""

    name: str
    loss_fn: LossFn
    spec: BatchSpec
    open_batches: Callable[[jax.sharding.Mesh], BatchSource]
    step_flops: Callable[[dict], float | None] = _no_flops
