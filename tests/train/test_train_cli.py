"""`ar1 train` end to end on ar1_tiny: metrics, exact resume, SIGTERM, partial checkpoints,
divergence, and start-up errors that name the bad input."""

import json
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ar1_fixtures as F

from ar1_jax import cli
from ar1_jax.model import vla
from ar1_jax.parallel.mesh import make_mesh
from ar1_jax.train import checkpoint as ckpt_lib
from ar1_jax.train import driver, sft
from ar1_jax.train.trainer import Trainer

# One xdist worker takes the whole module (`--dist loadgroup`), so the shared run happens once.
pytestmark = pytest.mark.xdist_group("train_cli")

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _base(env, steps=6):
    return ["--config", "ar1_tiny", "--no-progress", "--set", f"data.dataset_dir={env['data']}",
            "--set", "data.batch_size=4", "--set", f"train.steps={steps}", "--set", "train.log_every=1",
            "--set", "train.checkpoint_every=2", "--set", "train.keep_checkpoints=2", "--set", "train.tensorboard=false"]


def _train(env, workdir, *extra, steps=6):
    return cli.main(["train", "--workdir", str(workdir), *_base(env, steps), *extra])


def _rows(workdir):
    return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def _final_params(env, workdir):
    cfg = env["config"]()
    ckpt = ckpt_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints", cfg, read_only=True)
    try:
        state, data_state = ckpt.restore(ckpt.latest_step(), Trainer(cfg, make_mesh(cfg.mesh)).abstract_state)
    finally:
        ckpt.close()
    return ckpt.latest_step(), jax.tree.map(np.asarray, state), data_state


@pytest.fixture(scope="session")  # once per xdist worker, whatever the test order
def straight(train_env, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    assert _train(train_env, workdir) == 0
    return workdir


def test_without_a_dataset_it_synthesises_one_and_a_rerun_resumes_without_a_config_note(tmp_path, capsys):
    args = ["train", "--config", "ar1_tiny", "--workdir", str(tmp_path), "--no-progress", "--synth-scenes", "8",
            "--set", "data.batch_size=4", "--set", "train.log_every=1", "--set", "train.tensorboard=false"]
    assert cli.main([*args, "--set", "train.steps=1"]) == 0
    out = capsys.readouterr()
    assert "writing 8 synthetic scenes" in out.out and (tmp_path / "data" / "dataset_info.json").exists()
    assert json.loads((tmp_path / "config.json").read_text())["data"]["dataset_dir"] == str(tmp_path / "data")
    assert [r["step"] for r in _rows(tmp_path)] == [1]
    # The same command again: nothing to do, and nothing reported as changed.
    assert cli.main([*args, "--set", "train.steps=1"]) == 0
    out = capsys.readouterr()
    assert "note: config differs" not in out.err and "writing" not in out.out and "done at step 1" in out.out
    # A real change is reported, and only it (one that leaves the compiled step as it is).
    assert cli.main([*args, "--set", "train.steps=1", "--set", "train.log_every=2"]) == 0
    err = capsys.readouterr().err
    assert "note: config differs" in err and "train.log_every: 1 -> 2" in err and "dataset_dir" not in err
    assert [r["step"] for r in _rows(tmp_path)] == [1]


def test_metrics_and_checkpoints_of_a_run(straight):
    rows = _rows(straight)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "ce_reasoning", "ce_trajectory", "flow", "grad_norm", "lr", "tokens_per_s", "step_time_s",
                "step_flops"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert rows[-1]["ce_reasoning"] < rows[0]["ce_reasoning"] - 0.1  # the flow term is noisy over 6 steps
    assert rows[0]["includes_compile"] and "mfu" in rows[0]  # null on CPU: no known peak
    assert sorted(int(p.name) for p in (straight / "checkpoints").iterdir()) == [4, 6]  # keep the latest 2
    assert json.loads((straight / "config.json").read_text())["name"] == "ar1_tiny"


def test_resume_is_bitwise_exact(train_env, straight, tmp_path):
    assert _train(train_env, tmp_path, "--stop-after", "3") == 0
    assert ckpt_lib.Checkpointer(tmp_path / "checkpoints", train_env["config"](), read_only=True).latest_step() == 3
    assert _train(train_env, tmp_path) == 0  # the same command again: resumes at 3
    a, b = _rows(straight), _rows(tmp_path)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    step_a, state_a, data_a = _final_params(train_env, straight)
    step_b, state_b, data_b = _final_params(train_env, tmp_path)
    assert step_a == step_b == 6 and data_a == data_b
    for x, y in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
        np.testing.assert_array_equal(x, y)  # params, optimizer state, rng, step


def test_a_partial_checkpoint_is_never_picked(train_env, straight, tmp_path):
    import shutil

    shutil.copytree(straight / "checkpoints", tmp_path / "checkpoints")
    # What a save of step 6 killed mid-write leaves: orbax's temporary directory, half filled.
    shutil.rmtree(tmp_path / "checkpoints" / "6")
    partial = tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "junk").write_bytes(b"\0" * 100)
    ckpt = ckpt_lib.Checkpointer(tmp_path / "checkpoints", train_env["config"](), read_only=True)
    assert ckpt.latest_step() == 4 and ckpt.all_steps() == [4]
    ckpt.close()
    shutil.copy(straight / "metrics.jsonl", tmp_path / "metrics.jsonl")
    assert _train(train_env, tmp_path, "--stop-after", "1") == 0
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2, 3, 4, 5]  # resumed from 4
    assert not partial.exists()  # and the leftover was removed


def test_keep_latest_and_best(tmp_path, train_env):
    cfg = train_env["config"]()
    ckpt = ckpt_lib.Checkpointer(tmp_path, cfg, keep=2, keep_best=1, async_save=False)
    state = {"params": {"w": jnp.arange(3.0)}, "step": jnp.int32(0)}
    for step, loss in zip(range(1, 6), [5.0, 1.0, 4.0, 3.0, 2.0]):
        ckpt.save(step, state, {"i": step}, metrics={"loss": loss})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 4, 5]  # the best (step 2) and the latest two
    ckpt.close()


def test_sigterm_saves_a_restorable_checkpoint(train_env, tmp_path):
    cmd = [sys.executable, "-m", "ar1_jax.cli", "train", "--workdir", str(tmp_path), *_base(train_env, steps=500)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "metrics.jsonl"
    F.wait_for_lines(metrics, 3, [proc])
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=F.HANG_GUARD_S)[0]
    assert proc.returncode == 143, out[-3000:]
    assert "preempted at step" in out
    stopped = _rows(tmp_path)[-1]["step"]
    step, state, data_state = _final_params(train_env, tmp_path)
    assert step >= stopped and int(state["step"]) == step and "grain" in data_state
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))
    assert _train(train_env, tmp_path, "--stop-after", "1", steps=500) == 0  # and training goes on from there
    assert _rows(tmp_path)[-1]["step"] == step + 1


def test_divergence_stops_and_keeps_the_last_good_checkpoint(train_env, tmp_path):
    cfg = train_env["config"]("train.steps=40", "train.log_every=1", "train.checkpoint_every=2",
                              "train.tensorboard=false")

    def blows_up(params, cfg, batch, rng):  # NaN once the model has learned a little
        loss, metrics = vla.sft_loss(params, cfg, batch, rng)
        loss = jnp.where(metrics["ce_reasoning"] < 8.0, jnp.nan, loss)
        return loss, dict(metrics, loss=loss)

    with pytest.raises(driver.TrainingDiverged, match=r"step (\d+): loss is not finite") as err:
        sft.run(cfg, tmp_path, tokenizer=train_env["tok"], progress=False, loss_fn=blows_up)
    bad = int(err.value.args[0].split()[1].rstrip(":"))
    rows = _rows(tmp_path)
    assert all(np.isfinite(r["loss"]) for r in rows) and rows[-1]["step"] < bad
    step, state, _ = _final_params(train_env, tmp_path)
    assert step < bad and all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))
    assert f"after step {step}" in err.value.args[0]


@pytest.mark.parametrize("extra, message", [
    (["--set", "mesh.data=3"], "mesh data=3 x fsdp=1 x tensor=1 = 3 devices, but 1 are available"),
    (["--set", "train.grad_accum=3"], "config field `data.batch_size`: 4 is not divisible"),
    (["--set", "train.stepz=5"], "unknown config field `train.stepz`"),
    (["--stage", "sft3"], "unknown SFT stage 'sft3'"),
    (["--set", "train.frozen=vison"], "`train.frozen`: 'vison' matches no parameter"),
])
def test_bad_input_fails_at_start_naming_it(train_env, tmp_path, capsys, extra, message):
    assert _train(train_env, tmp_path, *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_a_checkpoint_of_another_model_is_refused(train_env, straight, tmp_path, capsys):
    import shutil

    shutil.copytree(straight / "checkpoints", tmp_path / "checkpoints")
    assert _train(train_env, tmp_path, "--set", "model.text.intermediate_size=96") == 2
    err = capsys.readouterr().err
    assert "model 'ar1_tiny'" in err and "`params.text.layers.mlp.down_kernel` has shape (2, 128, 64)" in err and "(2, 96, 64)" in err
    assert _train(train_env, tmp_path / "fresh", "--init-from", str(straight),
                  "--set", "model.text.intermediate_size=96") == 2
    assert "text.layers.mlp" in capsys.readouterr().err


def test_init_from_another_run_starts_from_its_weights(train_env, straight, tmp_path):
    assert _train(train_env, tmp_path, "--init-from", str(straight), "--stop-after", "1", "--stage", "sft1") == 0
    row = _rows(tmp_path)[0]
    assert row["step"] == 1 and row["loss"] < _rows(straight)[0]["loss"]
    assert json.loads((tmp_path / "config.json").read_text())["train"]["stage"] == "sft1"
    assert json.loads((tmp_path / "config.json").read_text())["loss"]["reasoning_weight"] == 0


def _damage(step_dir: pathlib.Path) -> pathlib.Path:
    """Overwrites the head of the step's state metadata file, as a bad disk or a stray write would."""
    target = step_dir / "state" / "_METADATA"
    data = target.read_bytes()
    target.write_bytes(b"\x00garbage\x00" + data[9:])
    return target


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_one_before_resumes(train_env, straight, tmp_path, capsys):
    import shutil

    shutil.copytree(straight / "checkpoints", tmp_path / "checkpoints")
    shutil.copy(straight / "metrics.jsonl", tmp_path / "metrics.jsonl")
    _damage(tmp_path / "checkpoints" / "6")
    assert _train(train_env, tmp_path) == 0  # the same command: resumes from 4, not from the damaged 6
    warning = capsys.readouterr().err
    assert "checkpoint step 6" in warning and "damaged" in warning and "resuming from the step before" in warning
    assert (tmp_path / "checkpoints" / "damaged" / "6" / "state").is_dir()  # kept, not deleted
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in _rows(tmp_path)] == [r["loss"] for r in _rows(straight)]
    step_a, state_a, _ = _final_params(train_env, straight)
    step_b, state_b, _ = _final_params(train_env, tmp_path)
    assert step_a == step_b == 6
    for x, y in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
        np.testing.assert_array_equal(x, y)  # steps 5 and 6 redone exactly


def test_from_step_picks_a_checkpoint_and_keeps_the_newer_ones(train_env, straight, tmp_path, capsys):
    import shutil

    shutil.copytree(straight / "checkpoints", tmp_path / "checkpoints")
    shutil.copy(straight / "metrics.jsonl", tmp_path / "metrics.jsonl")
    assert _train(train_env, tmp_path, "--from-step", "5") == 2
    err = capsys.readouterr().err
    assert "--from-step 5: no such checkpoint" in err and "[4, 6]" in err
    assert _train(train_env, tmp_path, "--from-step", "4", "--stop-after", "1") == 0
    assert (tmp_path / "checkpoints" / "superseded" / "6" / "state").is_dir()
    assert ckpt_lib.Checkpointer(tmp_path / "checkpoints", train_env["config"](), read_only=True).all_steps() == [4, 5]
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2, 3, 4, 5]
    assert _rows(tmp_path)[-1]["loss"] == _rows(straight)[4]["loss"]
    _damage(tmp_path / "checkpoints" / "5")
    assert _train(train_env, tmp_path, "--from-step", "5") == 2
    assert "checkpoint step 5" in capsys.readouterr().err


def test_infer_reads_a_run_its_step_directories_and_its_tokenizer(straight, tmp_path, capsys):
    """`ar1 infer --checkpoint` takes an `ar1 train` run (its latest checkpoint, with the run's config and
    tokenizer) or one of its step directories; anything else is named."""
    from ar1_jax.infer.run import load_weights

    step, state, _ = _final_params({"config": lambda: ckpt_lib.saved_run_config(straight)}, straight)
    cfg, params = load_weights(None, straight)
    assert cfg == ckpt_lib.saved_run_config(straight) and cfg.data.batch_size == 4  # the run's config
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state["params"])):
        np.testing.assert_array_equal(np.asarray(a), b)
    older = min(int(p.name) for p in (straight / "checkpoints").iterdir() if p.name.isdigit())
    assert older < step
    _, params_older = load_weights(None, straight / "checkpoints" / str(older))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(params_older), jax.tree.leaves(params)))

    out = tmp_path / "infer"
    assert cli.main(["infer", "--config", "ar1_tiny", "--checkpoint", str(straight), "--scene", "random",
                     "--out", str(out), "--samples", "2"]) == 0
    record = json.loads((out / "trajectory.json").read_text())
    assert len(record["samples"]) == 2 and np.isfinite(record["samples"][0]["trajectory_xy"]).all()
    assert not (out / "tokenizer").exists()  # the run's own tokenizer, not a new one
    (tmp_path / "junk").mkdir()
    capsys.readouterr()
    assert cli.main(["infer", "--config", "ar1_tiny", "--checkpoint", str(tmp_path / "junk"), "--scene", "random",
                     "--out", str(out)]) == 2
    assert "neither an `ar1 train` / `ar1 rl` run" in capsys.readouterr().err


def test_eval_reads_a_run_and_drives_it_closed_loop(straight, tmp_path):
    """`ar1 eval --checkpoint RUN`: the run's model on held-out synthetic scenes, open and closed loop,
    with the run's config and tokenizer; eval.json has the documented keys and the tracks are written."""
    out = tmp_path / "eval"
    assert cli.main(["eval", "--checkpoint", str(straight), "--synthetic", "1", "--samples", "2", "--batch", "1",
                     "--closed-loop", "--seconds", "1.0", "--no-baselines", "--out", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    overall = report["overall"]
    for key in ("min_ade@3.0", "min_fde@3.0", "collision_rate", "offroad_rate", "close_encounter_rate",
                "consistency_rate", "score", "num_scenes", "cl/score", "cl/offroad_rate", "cl/consistency_rate"):
        assert key in overall, key
    assert overall["num_scenes"] == 1 and report["config"] == "ar1_tiny" and report["baselines"] == {}
    assert 0.0 <= overall["min_ade@3.0"] <= overall["ade"] + 1e-6  # best of 2 is no worse than the driven one
    assert overall["cl/consistency_rate"] is None or 0.0 <= overall["cl/consistency_rate"] <= 1.0
    (track,) = (out / "closed_loop").glob("*.npz")
    with np.load(track) as z:
        assert z["ego"].shape == (11, 4) and len(z["reasoning"]) == 2
    assert not (out / "tokenizer_cache").exists()  # the run's own tokenizer
