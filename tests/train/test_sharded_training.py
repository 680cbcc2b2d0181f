"""Sharded training: 8 fake devices on three meshes agree with one device; checkpoints move between
meshes; two gloo processes running `ar1 train` agree with one process on the same global batches."""

import json
import os
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


def _run(args, devices, timeout=900, env=None):
    env = dict(os.environ if env is None else env)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    out = subprocess.run([sys.executable, str(WORKER), *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    return out


@pytest.fixture(scope="session")  # once per xdist worker, whatever the test order
def meshes_report(train_env, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("meshes")
    out = _run(["meshes", train_env["data"], train_env["tok_dir"], tmp / "report.json", tmp / "ckpt"], devices=8)
    return dict(json.loads((tmp / "report.json").read_text()), stderr=out.stderr)


def test_three_meshes_give_the_one_device_losses(meshes_report):
    runs = meshes_report["runs"]
    assert meshes_report["device_count"] == 8
    one = runs["one"]["losses"]
    assert one[-1] < one[0]  # it trains
    for name in ("data8", "fsdp8", "2x2x2"):
        np.testing.assert_allclose(runs[name]["losses"], one, rtol=2e-5, err_msg=name)
        assert runs[name]["max_param_diff_vs_one"] < 1e-4, name
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
        penv = dict(os.environ, AR1_COORDINATOR=f"localhost:{port}", AR1_NUM_PROCESSES="2", AR1_PROCESS_ID=str(i))
        penv.pop("XLA_FLAGS", None)
        procs.append(subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, cwd=ROOT, env=penv))
    return procs


def test_two_gloo_processes_train_like_one(train_env, tmp_path):
    workdir = tmp_path / "run"
    procs = _two_processes(train_env, workdir, "data.batch_size=8", "data.shuffle=false", "train.warmup_steps=1",
                           "train.steps=3")
    logs = F.communicate_all(procs, timeout=600)
    assert all(p.returncode == 0 for p in procs), "\n---\n".join(x[-4000:] for x in logs)
    assert "2 process(es) (env), 2 cpu device(s)" in logs[0]
    assert "ar1 train:" not in logs[1]  # only process 0 reports
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert [r["step"] for r in rows] == [1, 2, 3]

    _run(["reference", train_env["data"], train_env["tok_dir"], tmp_path / "ref.json", workdir], devices=2)
    ref = json.loads((tmp_path / "ref.json").read_text())
    assert ref["device_count"] == 2 and ref["other_step"] == 3
    np.testing.assert_allclose(losses, ref["losses"], rtol=1e-5)
    assert ref["max_param_diff"] < 1e-6  # bitwise equal here: a two-way sum is exact in either order


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step_with_a_checkpoint(train_env, tmp_path):
    """JAX's preemption service: the processes agree on the step to stop at, then save together."""
    import signal
    import time

    workdir = tmp_path / "run"
    procs = _two_processes(train_env, workdir, "data.batch_size=4", "train.steps=500", "train.checkpoint_every=1000")
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [143, 143], "\n---\n".join(x[-3000:] for x in logs)
    stopped = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert f"preempted at step {stopped}" in logs[0]
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [stopped]
