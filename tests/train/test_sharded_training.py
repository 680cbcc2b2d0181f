"""Sharded training: 8 fake devices on three meshes agree with one device; checkpoints move between
meshes; two gloo processes running `ar1 train` agree with one process on the same global batches."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import ar1_fixtures as F

HERE = pathlib.Path(__file__).resolve().parent
# One xdist worker takes the whole module (`--dist loadgroup`), so the shared run happens once.
pytestmark = pytest.mark.xdist_group("sharded_training")

ROOT = HERE.parents[1]
WORKER = HERE / "train_worker.py"


def _run(args, devices, timeout=F.HANG_GUARD_S):
    env = F.fake_devices_env(devices)
    out = subprocess.run([sys.executable, str(WORKER), *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    return out


@pytest.fixture(scope="session")  # once per xdist worker, whatever the test order
def meshes_report(train_env, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("meshes")
    out = _run(["meshes", train_env["data"], train_env["tok_dir"], tmp / "report.json", tmp / "ckpt"], devices=8)
    return dict(json.loads((tmp / "report.json").read_text()), stderr=out.stderr)


def test_sharded_meshes_give_the_one_device_losses(meshes_report):
    runs = meshes_report["runs"]
    assert meshes_report["device_count"] == 8
    one = runs["one"]["losses"]
    assert one[-1] < one[0]  # it trains
    np.testing.assert_allclose(runs["2x2x2"]["losses"], one, rtol=2e-5)
    assert runs["2x2x2"]["max_param_diff_vs_one"] < 1e-4
    assert runs["2x2x2"]["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}


def test_large_params_are_sharded_as_the_rules_say(meshes_report):
    runs = meshes_report["runs"]
    # default rules: embed -> fsdp, mlp/heads/kv_heads/vocab -> tensor, layers replicated.
    assert runs["fsdp8"]["specs"]["text.layers.mlp.up_kernel"] == [None, "fsdp", None]
    assert runs["fsdp8"]["shard_shapes"]["text.layers.mlp.up_kernel"] == [2, 8, 128]  # [layers, 64 / 8, mlp]
    assert runs["fsdp8"]["specs"]["text.embed"] == [None, "fsdp"]
    assert runs["2x2x2"]["specs"]["text.layers.mlp.up_kernel"] == [None, "fsdp", "tensor"]
    assert runs["2x2x2"]["shard_shapes"]["text.layers.mlp.up_kernel"] == [2, 32, 64]
    assert runs["2x2x2"]["specs"]["text.layers.attn.q_kernel"] == [None, "fsdp", "tensor", None]
    assert runs["2x2x2"]["specs"]["expert.layers.mlp.down_kernel"] == [None, "tensor", "fsdp"]
    assert runs["2x2x2"]["specs"]["vision.blocks.mlp.fc1_kernel"] == [None, "fsdp", "tensor"]
    assert runs["2x2x2"]["specs"]["text.embed"] == ["tensor", "fsdp"]
    # No layout the partitioner can only reach by replicating a tensor (it warns when it must).
    assert "Involuntary full rematerialization" not in meshes_report["stderr"]
    # Pure data parallelism replicates every parameter.
    assert all(all(s is None for s in spec) for spec in runs["data8"]["specs"].values())
    # Adam's moments (mu, nu) are sharded like their parameter.
    assert runs["2x2x2"]["embed_moment_specs"] == [["tensor", "fsdp"]] * 2


def test_checkpoint_from_8_devices_restores_onto_1_and_4(meshes_report):
    for n in ("1", "4"):
        r = meshes_report["restored"][n]
        assert r["params_equal"] and r["devices"] == int(n) and r["step"] == 3
        assert r["data_state"] == {"note": "test"}


TOTAL_STEPS = 500  # the schedule's length; the two-process run is stopped by SIGTERM long before


def _two_processes(env, workdir, *sets):
    """Starts `ar1 train` as two gloo processes (one CPU device each) on `env`'s data; returns them."""
    port = F.free_port()
    args = ["-m", "ar1_jax.cli", "train", "--config", "ar1_tiny", "--workdir", str(workdir), "--no-progress",
            "--set", f"data.dataset_dir={env['data']}", "--set", "train.log_every=1",
            "--set", "train.tensorboard=false"]
    for item in sets:
        args += ["--set", item]
    procs = []
    for i in range(2):
        penv = F.fake_devices_env(None, AR1_COORDINATOR=f"localhost:{port}", AR1_NUM_PROCESSES="2",
                                  AR1_PROCESS_ID=str(i))
        procs.append(subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, cwd=ROOT, env=penv))
    return procs


def test_two_gloo_processes_train_like_one_and_a_sigterm_to_one_stops_both_with_a_checkpoint(train_env, tmp_path):
    """Two processes train like one process on the same global batches; SIGTERM to one of them goes
    through JAX's preemption service: the processes agree on the step to stop at, then save together.
    (One pair of processes for both checks: each start compiles the step anew.)"""
    import signal

    workdir = tmp_path / "run"
    procs = _two_processes(train_env, workdir, "data.batch_size=8", "data.shuffle=false", "train.warmup_steps=1",
                           f"train.steps={TOTAL_STEPS}", "train.checkpoint_every=1000")
    metrics = workdir / "metrics.jsonl"
    F.wait_for_lines(metrics, 3, procs)
    procs[1].send_signal(signal.SIGTERM)
    logs = F.communicate_all(procs, timeout=F.HANG_GUARD_S)
    assert [p.returncode for p in procs] == [143, 143], "\n---\n".join(x[-3000:] for x in logs)
    assert "2 process(es) (env), 2 cpu device(s)" in logs[0]
    assert "ar1 train:" not in logs[1]  # only process 0 reports
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    stopped = rows[-1]["step"]
    assert [r["step"] for r in rows] == list(range(1, stopped + 1))
    assert f"preempted at step {stopped}" in logs[0]
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [stopped]

    _run(["reference", train_env["data"], train_env["tok_dir"], tmp_path / "ref.json", TOTAL_STEPS, workdir],
         devices=2)
    ref = json.loads((tmp_path / "ref.json").read_text())
    assert ref["device_count"] == 2 and ref["other_step"] == stopped
    np.testing.assert_allclose([r["loss"] for r in rows], ref["losses"], rtol=1e-5)
    assert ref["max_param_diff"] < 1e-6  # bitwise equal here: a two-way sum is exact in either order
