"""ar1_jax/train/driver.py runs any task: a toy task with its own spec, batch source and loss."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ar1_jax.config import get_config
from ar1_jax.data.spec import BatchSpec, Field
from ar1_jax.parallel.mesh import make_mesh
from ar1_jax.train import driver
from ar1_jax.train.task import Task

# The batch dim is dim 1 of `x` and dim 0 of `w`: micro-batches must follow the spec, not key names.
TOY_SPEC = BatchSpec("toy", {
    "x": Field((4, "B"), "float32", (None, "batch")),
    "w": Field(("B",), "float32", ("batch",), weight=True),
}, tokens="w")


class ToySource:
    """Batch k is a pure function of (seed, k); the position is k."""

    def __init__(self, mesh, seed, batch_size):
        self.mesh, self.seed, self.b, self.k = mesh, seed, batch_size, 0
        self.closed = False

    def __next__(self):
        rng = np.random.default_rng([self.seed, self.k])
        self.k += 1
        host = {"x": (3.0 + 1e-3 * rng.standard_normal((4, self.b))).astype(np.float32),
                "w": (rng.random(self.b) > 0.25).astype(np.float32)}
        return TOY_SPEC.globalize(host, self.mesh, "default", 1)

    def get_state(self):
        return {"k": self.k}

    def set_state(self, state):
        self.k = state["k"]

    def close(self):
        self.closed = True


def toy_loss(params, cfg, batch, rng):
    """A weighted squared error of one real parameter against the batch (mean over `w`'s sum)."""
    theta = params["expert"]["action_out"]["kernel"][:4, 0]
    err = jnp.sum((batch["x"] - theta[:, None]) ** 2, axis=0)
    total = batch.get("weight_totals", {}).get("w", jnp.sum(batch["w"]))
    loss = jnp.sum(err * batch["w"]) / total
    return loss, {"loss": loss, "err_max": jnp.max(err)}


def _task(mesh_holder):
    def open_batches(mesh):
        mesh_holder["source"] = ToySource(mesh, 0, 8)
        return mesh_holder["source"]

    return Task(name="toy", loss_fn=toy_loss, spec=TOY_SPEC, open_batches=open_batches,
                step_flops=lambda batch: 1e6)


@pytest.fixture(scope="module")
def cfg():
    return get_config("ar1_tiny", ["train.steps=4", "train.log_every=1", "train.checkpoint_every=2",
                                   "train.tensorboard=false", "data.batch_size=8", "train.grad_accum=2",
                                   "train.warmup_steps=1"])


def _rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_a_toy_task_trains_logs_its_own_metrics_and_resumes_exactly(cfg, tmp_path):
    mesh = make_mesh(cfg.mesh, jax.devices()[:1])
    holder = {}
    straight = driver.run(cfg, tmp_path / "a", _task(holder), mesh=mesh, progress=False)
    assert straight.reason == "done" and straight.step == 4 and holder["source"].closed
    rows = _rows(tmp_path / "a")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"loss", "err_max", "grad_norm", "lr", "tokens_per_s", "step_flops"} <= set(rows[0])
    assert rows[-1]["loss"] < rows[0]["loss"]  # it learns theta = E[x]
    assert "ce_reasoning" not in rows[0]  # metrics are whatever the loss returns

    first = driver.run(cfg, tmp_path / "b", _task(holder), mesh=mesh, progress=False, max_steps=2)
    assert first.reason == "stopped" and holder["source"].get_state() == {"k": 2}
    resumed = driver.run(cfg, tmp_path / "b", _task(holder), mesh=mesh, progress=False)
    assert resumed.step == 4 and [r["loss"] for r in _rows(tmp_path / "b")] == [r["loss"] for r in rows]


def test_grad_accum_over_the_spec_equals_the_whole_batch(cfg):
    """Micro-batches split `x` on dim 1 and `w` on dim 0; with weight totals the accumulated loss and
    gradient are the whole batch's."""
    from ar1_jax.train.trainer import Trainer

    mesh = make_mesh(cfg.mesh, jax.devices()[:1])
    whole = Trainer(get_config("ar1_tiny", ["data.batch_size=8", "train.grad_accum=1"]), mesh, loss_fn=toy_loss,
                    spec=TOY_SPEC)
    accum = Trainer(cfg, mesh, loss_fn=toy_loss, spec=TOY_SPEC)
    params = whole.init_state()["params"]
    batch = next(ToySource(mesh, 1, 8))
    g1, m1 = jax.jit(whole._grads)(params, batch, jax.random.key(0))
    g2, m2 = jax.jit(accum._grads)(params, batch, jax.random.key(0))
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
    k1 = g1["expert"]["action_out"]["kernel"]
    k2 = g2["expert"]["action_out"]["kernel"]
    assert np.abs(k1).max() > 0
    np.testing.assert_allclose(k1, k2, rtol=1e-5, atol=1e-7)
