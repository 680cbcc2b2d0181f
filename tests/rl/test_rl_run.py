"""RL of ar1_tiny end to end: rollouts without recompilation, the RL batch, the loss of both heads
and its gradients, and `ar1 rl` on the training driver (metrics, resume)."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ar1_jax import cli
from ar1_jax.config import get_config
from ar1_jax.model.vla import AR1
from ar1_jax.rl import heldout
from ar1_jax.rl import rollout as rollout_lib
from ar1_jax.rl import task as rl_task
from ar1_jax.rl.batch import REWARD_COLUMNS, RL_SPEC
from ar1_jax.rl.loss import rl_loss
from ar1_jax.rl.scenes import ScenePool, prompts_of
from rl_fixtures import CLI_ARGS, SETS

pytestmark = pytest.mark.xdist_group("rl_run")  # with test_rl_sharded.py: they share `rl_cli_run`



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ar1_jax.train import sft

    cfg = rl_task.rl_config(get_config("ar1_tiny", SETS))
    tok = sft.default_tokenizer(cfg, tmp_path_factory.mktemp("tok"))
    params = nnx.to_pure_dict(nnx.state(AR1(cfg, rngs=nnx.Rngs(0)), nnx.Param))
    pool = ScenePool(cfg, tok, cfg.rl.scene_seed)
    return dict(cfg=cfg, tok=tok, params=params, pool=pool, roller=rollout_lib.Roller(cfg, tok))


def test_rollouts_have_the_documented_shapes_and_never_recompile(tiny):
    cfg, roller, pool = tiny["cfg"], tiny["roller"], tiny["pool"]
    b, h = 4, cfg.action.horizon
    first = roller.sample(tiny["params"], prompts_of(pool.scenes(0, 2)), jax.random.key(0))
    counts = roller.compiled_counts()
    other = jax.tree.map(lambda x: x * 1.01, tiny["params"])  # a new policy, two new scenes
    second = roller.sample(other, prompts_of(pool.scenes(2, 2)), jax.random.key(1))
    assert roller.compiled_counts() == counts
    assert all(v == 1 for k, v in counts.items() if k not in ("denoise", "trajectory")), counts
    for ro in (first, second):
        assert ro.reasoning_ids.shape == (b, cfg.infer.max_reasoning_tokens)
        assert ro.traj_ids.shape == ro.traj_logp.shape == (b, 2 * h)
        off = cfg.tokens.traj_token_offset
        assert ((ro.traj_ids >= off) & (ro.traj_ids < off + cfg.action.future_bins)).all()
        assert ro.expert_xy.shape == ro.token_xy.shape == (b, h, 2) and np.isfinite(ro.expert_xy).all()
        assert ro.sde_states.shape == (b, cfg.infer.flow_steps + 1, h, 2)
        assert ro.sde_logp.shape == (b, cfg.infer.flow_steps) and np.isfinite(ro.sde_logp).all()
        np.testing.assert_array_equal(ro.controls, ro.sde_states[:, -1])
        assert (ro.traj_logp <= 0).all() and (ro.traj_logp > -np.log(cfg.action.future_bins) - 20).all()
        drawn = np.arange(ro.reasoning_ids.shape[1])[None] <= ro.num_reasoning[:, None]
        assert (ro.reasoning_logp[drawn & ~ro.forced[:, None]] <= 0).all()
    # Samples of one scene differ (temperature 0.6), the G rows share the scene's v0.
    assert not np.array_equal(first.traj_ids[0], first.traj_ids[1])
    assert first.v0[0] == first.v0[1] and first.v0[2] == first.v0[3]


def test_batch_loss_and_gradients_of_both_heads(tiny):
    cfg = tiny["cfg"]
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    src = rl_task.RolloutSource(cfg, tiny["tok"], mesh)
    src.roller, src.pool = tiny["roller"], tiny["pool"]  # the compiled stages of the test above
    src.set_policy(tiny["params"])
    batch = next(src)
    RL_SPEC.check(jax.tree.map(np.asarray, {k: v for k, v in batch.items() if k != "ref_logp"}))
    host = jax.tree.map(np.asarray, batch)
    t0 = len(tiny["pool"].scene(0).ids)
    # Old log-probs sit exactly on the counted positions; the reference equals the policy at step 0.
    counted = host["reasoning_mask"] | host["traj_mask"]
    assert (host["old_logp"][~counted] == 0).all() and (host["old_logp"][counted] < 0).all()
    assert host["traj_mask"].sum(1).tolist() == [2 * cfg.action.horizon] * 4
    assert (host["reasoning_mask"][:, t0 - 1]).all()
    np.testing.assert_allclose(host["ref_logp"][counted], host["old_logp"][counted], atol=2e-3)
    assert host["rewards"].shape == (4, len(REWARD_COLUMNS))

    loss_and_grads = jax.jit(jax.value_and_grad(lambda p: rl_loss(p, cfg, batch, jax.random.key(0)), has_aux=True))
    (loss, metrics), grads = loss_and_grads(tiny["params"])
    assert np.isfinite(float(loss))
    # On policy the token ratio is 1 up to the rollout's numerics, so nothing is clipped.
    assert abs(float(metrics["ratio"]) - 1) < 1e-3 and float(metrics["clip_frac"]) == 0
    assert abs(float(metrics["expert_ratio_mean"]) - 1) < 1e-3
    assert float(metrics["kl"]) < 1e-3 and float(metrics["entropy"]) > 0
    gnorm = {k: float(optax_norm(v)) for k, v in grads.items()}
    kept = host["rewards"][:, REWARD_COLUMNS.index("kept")]
    if kept.any() and np.abs(host["token_adv"]).max() > 0:
        assert gnorm["text"] > 0 and gnorm["vision"] > 0
    if kept.any() and np.abs(host["expert_adv"]).max() > 0:
        assert gnorm["expert"] > 0
    assert all(np.isfinite(v) for v in gnorm.values())


@pytest.mark.parametrize("method", ["awfm", "fpo"])
def test_the_step_compiles_for_the_likelihood_free_expert_methods(tiny, method):
    """Without Flow-GRPO the batches carry no SDE chain, and the driver's step is built for exactly the
    fields they carry (`ar1 rl --set rl.expert_loss=awfm` failed with a pytree mismatch before)."""
    from ar1_jax.train.trainer import Trainer

    cfg = rl_task.rl_config(get_config("ar1_tiny", SETS + (f"rl.expert_loss={method}",)))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    src = rl_task.RolloutSource(cfg, tiny["tok"], mesh)
    src.pool = tiny["pool"]
    src.set_policy(tiny["params"])
    batch = next(src)
    assert "sde_states" not in batch and "sde_logp" not in batch
    task = rl_task.rl_task(cfg, tiny["tok"])
    trainer = Trainer(cfg, mesh, loss_fn=task.loss_fn, spec=task.spec)
    trainer.compile_step().lower(trainer.abstract_state, batch)  # traces the loss; raised before the fix


def test_heldout_scores_are_rates_and_repeat_for_the_same_policy(tiny):
    cfg = tiny["cfg"]
    a = heldout.evaluate(cfg, tiny["params"], tiny["tok"], 2, roller=tiny["roller"])
    b = heldout.evaluate(cfg, tiny["params"], tiny["tok"], 2, roller=tiny["roller"])
    assert a == b and a["scenes"] == 2 and a["rollouts"] == 4
    for key in heldout.RATES:
        assert 0.0 <= a[key] <= 1.0, key
    assert a["collision_or_offroad_rate"] >= max(a["collision_rate"], a["offroad_rate"])
    with pytest.raises(ValueError, match="multiple of rl.scenes_per_step=2"):
        heldout.evaluate(cfg, tiny["params"], tiny["tok"], 3, roller=tiny["roller"])


def optax_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_ar1_rl_logs_every_metric_and_resumes_exactly(rl_cli_run, tmp_path):
    code, stdout, run = rl_cli_run
    assert code == 0 and "done at step 2" in stdout
    rows = _rows(run)
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward/total", "reward/consistency", "reward/trajectory", "consistency_rate", "kl", "clip_frac",
                "entropy", "groups_kept", "rollout_s", "rollout_tokens_per_s", "loss", "grad_norm", "expert_loss"):
        assert all(r[key] is not None and np.isfinite(r[key]) for r in rows), key
    assert rows[0]["update_s"] is None and rows[1]["update_s"] > 0
    # The run as it stood after step 1 (its checkpoint, --from-step 1) redoes step 2 exactly: the batch
    # is regenerated from (config, step, params), so the rollouts, rewards and update are the same.
    shutil.copytree(run, tmp_path / "b")
    assert cli.main([*CLI_ARGS, "--workdir", str(tmp_path / "b"), "--from-step", "1"]) == 0
    resumed = _rows(tmp_path / "b")
    assert [r["step"] for r in resumed] == [1, 2]
    for key in ("loss", "reward/total", "grad_norm", "kl"):
        assert [r[key] for r in resumed] == [r[key] for r in rows], key
