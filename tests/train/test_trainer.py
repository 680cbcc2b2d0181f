"""ar1_jax/train/trainer.py: the sharded state, the step (accumulation, freezing, EMA, NaN guard)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ar1_jax.config import ConfigError
from ar1_jax.data import pipeline as pl
from ar1_jax.data.sft_batch import SFT_SPEC
from ar1_jax.model import vla
from ar1_jax.parallel.mesh import make_mesh
from ar1_jax.train import sft, trainer as trainer_lib


def _mesh(cfg):
    return make_mesh(cfg.mesh, jax.devices()[:1])


def _first_batch(cfg, env):
    mesh = _mesh(cfg)
    it = pl.make_pipeline(cfg, env["tok"], mesh, shuffle=False)
    try:
        return next(it)
    finally:
        it.close()


def _rows(batch, rows):
    """The sub-batch of `rows`, by plain indexing (independent of split_microbatches)."""
    out = {k: np.asarray(v)[rows] for k, v in batch.items() if k not in ("media", "positions")}
    out["positions"] = np.asarray(batch["positions"])[:, rows]
    image = batch["media"]["image"]
    out["media"] = {"image": {"pixel_values": np.asarray(image["pixel_values"])[rows],
                              "layout": jax.tree.map(np.asarray, image["layout"])}}
    return out


def test_gradient_accumulation_equals_the_whole_batch_gradient(train_env):
    cfg = train_env["config"]("train.grad_accum=2", "loss.flow_weight=0")
    trainer = trainer_lib.Trainer(cfg, _mesh(cfg))
    state = trainer.init_state()
    batch = _first_batch(cfg, train_env)
    # Micro-batch k takes rows k, k + m, ...: the two hold different numbers of reasoning tokens, so a
    # plain mean of micro-batch means would not be the whole batch's token mean.
    halves = [_rows(batch, rows) for rows in ([0, 2], [1, 3])]
    counts = [int(np.sum(h["reasoning_mask"])) for h in halves]
    assert counts[0] != counts[1], counts

    grads, metrics = jax.jit(trainer._grads)(state["params"], batch, jax.random.key(0))
    whole = jax.jit(jax.value_and_grad(lambda p, b: vla.sft_loss(p, cfg, b, jax.random.key(0)), has_aux=True))
    (loss, ref_mets), ref_g = whole(state["params"], batch)
    for name in ("loss", "ce_reasoning", "ce_trajectory"):
        assert float(metrics[name]) == pytest.approx(float(ref_mets[name]), rel=1e-5), name
    for ours, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_g)):
        np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=1e-6)
    # ...whereas the mean of the halves' own-mean gradients is measurably off.
    own = [whole(state["params"], h)[1] for h in halves]  # one compiled program for both halves
    flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])  # noqa: E731
    off = np.linalg.norm((flat(own[0]) + flat(own[1])) / 2 - flat(ref_g)) / np.linalg.norm(flat(ref_g))
    assert off > 3e-3, off  # about 1e-2 here; the match above is within 2e-4


def test_frozen_modules_stay_put_and_ema_follows(train_env):
    cfg = sft.apply_stage(train_env["config"]("train.ema_decay=0.5"), "release_expert")
    assert cfg.train.frozen == ("vision", "text") and cfg.loss.reasoning_weight == 0
    trainer = trainer_lib.Trainer(cfg, _mesh(cfg))
    assert trainer.num_trainable < trainer.num_params
    state = trainer.init_state()
    before = jax.tree.map(np.asarray, state["params"])
    step = trainer.compile_step(pl.batch_shardings(cfg, _mesh(cfg)))
    batch = _first_batch(cfg, train_env)
    state, metrics = step(state, batch)
    state, metrics = step(state, batch)
    after = jax.tree.map(np.asarray, state["params"])
    for part in ("vision", "text"):
        for a, b in zip(jax.tree.leaves(before[part]), jax.tree.leaves(after[part])):
            np.testing.assert_array_equal(a, b)
    moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(before["expert"]), jax.tree.leaves(after["expert"]))]
    assert min(moved) > 0
    # EMA with decay 0.5 after two steps: 0.25 * p0 + 0.25 * p1 + 0.5 * p2 -- check it lies between p0 and p2.
    e, p0, p2 = (np.asarray(state["ema"]["expert"]["action_out"]["kernel"]), before["expert"]["action_out"]["kernel"],
                 after["expert"]["action_out"]["kernel"])
    assert np.all(e >= np.minimum(p0, p2) - 1e-7) and np.all(e <= np.maximum(p0, p2) + 1e-7)
    assert not np.array_equal(e, p2) and int(state["step"]) == 2 and float(metrics["finite"]) == 1


def test_non_finite_step_leaves_the_state_unchanged(train_env):
    cfg = train_env["config"]()

    def nan_loss(params, cfg, batch, rng):
        loss, metrics = vla.sft_loss(params, cfg, batch, rng)
        loss = loss * jnp.nan
        return loss, dict(metrics, loss=loss)

    trainer = trainer_lib.Trainer(cfg, _mesh(cfg), loss_fn=nan_loss)
    state = trainer.init_state()
    before = jax.tree.map(np.asarray, {k: state[k] for k in ("params", "opt_state")})
    state, metrics = trainer.compile_step(pl.batch_shardings(cfg, _mesh(cfg)))(state, _first_batch(cfg, train_env))
    assert float(metrics["finite"]) == 0 and np.isnan(float(metrics["loss"]))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves({k: state[k] for k in ("params", "opt_state")})):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_batch_divisibility_is_checked_at_start(train_env):
    cfg = train_env["config"]("train.grad_accum=3")
    with pytest.raises(ConfigError, match=r"data\.batch_size`: 4 is not divisible .* train\.grad_accum=3"):
        trainer_lib.check_batch_divisibility(cfg, _mesh(cfg))


def test_the_pipeline_batches_are_what_the_sft_spec_describes(train_env):
    """A real pipeline batch passes the spec's check, in the spec's shardings."""
    cfg = train_env["config"]()
    mesh = _mesh(cfg)
    batch = _first_batch(cfg, train_env)
    host = jax.tree.map(np.asarray, batch)
    dims = SFT_SPEC.check(host)
    assert dims["B"] == 4 and dims["A"] == cfg.action.horizon and dims["T"] % 64 == 0
    want = pl.batch_shardings(cfg, mesh)
    got = jax.tree.map(lambda x: x.sharding, batch)
    assert jax.tree.structure(want) == jax.tree.structure(got)
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        assert w.is_equivalent_to(g, 2)
