"""The launch wrappers in launch/: syntax, usage, and the `ar1 train` command each one builds.

Nothing here trains: `srun`, `scontrol`, `gcloud` and `ar1` are replaced by shims that print what
they were given.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import subprocess
import sys

import pytest

import ar1_fixtures as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = ("local.sh", "tpu_pod.sh", "slurm_gpu.sbatch")

# A shim that prints its arguments one per line, then the environment variables the launchers set.
ARGS_SHIM = """#!/usr/bin/env bash
for a in "$@"; do printf 'ARG %s\\n' "$a"; done
for v in XLA_FLAGS JAX_PLATFORMS JAX_LOCAL_DEVICE_IDS AR1_DISTRIBUTED AR1_COORDINATOR SLURM_NTASKS SLURM_PROCID \\
         VENV_ACTIVE; do
  printf 'ENV %s=%s\\n' "$v" "${!v-<unset>}"
done
exit "${SHIM_RC:-0}"
"""


def _clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without anything that would change what the launchers do."""
    drop = ("SLURM_", "AR1", "JAX_", "XLA_FLAGS", "NUM_CPU_DEVICES", "DRY_RUN", "PROJECT", "GCLOUD_FLAGS",
            "CONFIG", "WORKDIR", "EXTRA_ARGS", "SRUN_ARGS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra)
    return env


def _run(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True,
                          env=_clean_env() if env is None else env, timeout=F.HANG_GUARD_S, cwd=ROOT)


def _shim(directory: pathlib.Path, name: str, text: str = ARGS_SHIM) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def _args(stdout: str) -> list[str]:
    return [line[4:] for line in stdout.splitlines() if line.startswith("ARG ")]


def _envs(stdout: str) -> dict[str, str]:
    return dict(line[4:].split("=", 1) for line in stdout.splitlines() if line.startswith("ENV "))


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
    path = LAUNCH / script
    assert path.exists()
    assert os.access(path, os.X_OK), f"{script} is not executable"
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "set -euo pipefail" in path.read_text()


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help(script, flag):
    proc = _run(script, flag)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:")
    assert "ar1 train" in proc.stdout


@pytest.mark.parametrize("script,args", [("local.sh", ()), ("local.sh", ("ar1_tiny",)),
                                         ("tpu_pod.sh", ("tpu", "zone", "ar1_tiny")),
                                         ("slurm_gpu.sbatch", ()), ("slurm_gpu.sbatch", ("ar1_tiny",))])
def test_missing_args_print_usage(script, args):
    proc = _run(script, *args)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr
    assert proc.stdout == ""


# ---------------------------------------------------------------------------------------------------
# local.sh


def test_local_passes_arguments_through(tmp_path):
    ar1 = _shim(tmp_path, "ar1")
    env = _clean_env(AR1=str(ar1), AR1_COORDINATOR="h:1", SLURM_NTASKS="4", SLURM_PROCID="1")
    proc = _run("local.sh", "ar1_tiny", str(tmp_path / "run dir"), "--stage", "sft1", "--set",
                "train.steps=3", "--stop-after", "2", env=env)
    assert proc.returncode == 0, proc.stderr
    assert _args(proc.stdout) == ["train", "--config", "ar1_tiny", "--workdir", str(tmp_path / "run dir"),
                                  "--stage", "sft1", "--set", "train.steps=3", "--stop-after", "2"]
    envs = _envs(proc.stdout)
    assert envs["XLA_FLAGS"] == "<unset>" and envs["JAX_PLATFORMS"] == "<unset>"
    # Always one process: the multi-process variables are cleared.
    assert envs["AR1_COORDINATOR"] == envs["SLURM_NTASKS"] == envs["SLURM_PROCID"] == "<unset>"
    assert "mesh: the config's (default data=-1" in proc.stdout


def test_local_num_cpu_devices_sets_xla_flags(tmp_path):
    ar1 = _shim(tmp_path, "ar1")
    env = _clean_env(AR1=str(ar1), NUM_CPU_DEVICES="8", XLA_FLAGS="--xla_dump_to=/tmp/none")
    proc = _run("local.sh", "ar1_tiny", "runs/x", "--set", "mesh.data=2", "--set=mesh.fsdp=4", env=env)
    assert proc.returncode == 0, proc.stderr
    envs = _envs(proc.stdout)
    assert envs["XLA_FLAGS"] == "--xla_dump_to=/tmp/none --xla_force_host_platform_device_count=8"
    assert envs["JAX_PLATFORMS"] == "cpu"
    assert _args(proc.stdout)[-3:] == ["--set", "mesh.data=2", "--set=mesh.fsdp=4"]
    assert "8 fake CPU devices" in proc.stdout and "with data=2 fsdp=4" in proc.stdout


def test_local_rejects_bad_num_cpu_devices(tmp_path):
    env = _clean_env(AR1=str(_shim(tmp_path, "ar1")), NUM_CPU_DEVICES="eight")
    proc = _run("local.sh", "ar1_tiny", "runs/x", env=env)
    assert proc.returncode == 2 and "NUM_CPU_DEVICES" in proc.stderr


def test_local_with_echo_command():
    proc = _run("local.sh", "ar1_tiny", "runs/x", "--no-progress", env=_clean_env(AR1="echo ar1"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "ar1 train --config ar1_tiny --workdir runs/x --no-progress"


def test_local_reaches_the_real_cli(tmp_path):
    """`python -m ar1_jax.cli` works as AR1; `--help` at the end is answered by `ar1 train` itself."""
    env = _clean_env(AR1=f"{sys.executable} -m ar1_jax.cli", NUM_CPU_DEVICES="2")
    proc = _run("local.sh", "ar1_tiny", str(tmp_path / "run"), "--help", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "usage: ar1 train" in proc.stdout
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------
# tpu_pod.sh


def _gcloud_command(proc: subprocess.CompletedProcess) -> tuple[list[str], str]:
    assert proc.returncode == 0, proc.stderr
    words = shlex.split(proc.stdout.strip())
    assert words[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
    return words, words[words.index("--command") + 1]


def test_tpu_dry_run_prints_gcloud_command():
    env = _clean_env(DRY_RUN="1", PROJECT="my-proj")
    proc = _run("tpu_pod.sh", "my-v5p-64", "us-east5-a", "ar1_3b", "/mnt/shared/runs/s1", "--stage", "sft1",
                "--set", "data.dataset_dir=/mnt/shared/data", env=env)
    words, remote = _gcloud_command(proc)
    assert "--worker=all" in words
    assert words[5] == "my-v5p-64"
    assert words[words.index("--zone") + 1] == "us-east5-a"
    assert words[words.index("--project") + 1] == "my-proj"
    assert "AR1_DISTRIBUTED=auto" in remote
    rw = shlex.split(remote)
    i = rw.index("train")
    assert rw[i - 1] == "ar1"
    assert rw[i:] == ["train", "--config", "ar1_3b", "--workdir", "/mnt/shared/runs/s1",
                      "--set", "mesh.data=1", "--set", "mesh.fsdp=-1",  # default: FSDP over all chips
                      "--stage", "sft1", "--set", "data.dataset_dir=/mnt/shared/data"]
    assert "fsdp=-1" in proc.stderr


def test_tpu_user_mesh_replaces_default():
    proc = _run("tpu_pod.sh", "t", "z", "ar1_7b", "/nfs/run", "--set", "mesh.tensor=4", "--set", "mesh.data=2",
                env=_clean_env(DRY_RUN="1"))
    _, remote = _gcloud_command(proc)
    rw = shlex.split(remote)
    assert "mesh.fsdp=-1" not in rw
    assert rw[rw.index("train"):] == ["train", "--config", "ar1_7b", "--workdir", "/nfs/run",
                                      "--set", "mesh.tensor=4", "--set", "mesh.data=2"]
    assert "--project" not in shlex.split(proc.stdout)


@pytest.mark.parametrize("home_relative", [False, True])
def test_tpu_remote_command_runs_on_the_workers_shell(tmp_path, home_relative):
    """The --command text, run by a POSIX shell on a worker, gives `ar1` exactly the arguments passed."""
    remote_dir = tmp_path / "repo dir"
    _shim(remote_dir / "bin", "ar1")
    (remote_dir / "venv" / "bin").mkdir(parents=True)
    (remote_dir / "venv" / "bin" / "activate").write_text("export VENV_ACTIVE=1\n")
    env = _clean_env(DRY_RUN="1", AR1_REMOTE_DIR="~/repo dir" if home_relative else str(remote_dir),
                     AR1="bin/ar1", AR1_REMOTE_VENV="venv", AR1_REMOTE_ENV="XLA_FLAGS=--foo",
                     GCLOUD_FLAGS="--internal-ip")
    odd = "data.dataset_dir=/mnt/a b/it's $HOME; `x`"
    proc = _run("tpu_pod.sh", "t", "z", "ar1_tiny", "/mnt/run", "--set", odd, env=env)
    words, remote = _gcloud_command(proc)
    assert "--internal-ip" in words
    if home_relative:
        assert remote.startswith("cd ~/")
    out = subprocess.run(["sh", "-c", remote], capture_output=True, text=True, env=_clean_env(HOME=str(tmp_path)),
                         timeout=F.HANG_GUARD_S)
    assert out.returncode == 0, out.stderr
    assert _args(out.stdout) == ["train", "--config", "ar1_tiny", "--workdir", "/mnt/run", "--set", "mesh.data=1",
                                 "--set", "mesh.fsdp=-1", "--set", odd]
    envs = _envs(out.stdout)
    assert envs["AR1_DISTRIBUTED"] == "auto" and envs["XLA_FLAGS"] == "--foo" and envs["VENV_ACTIVE"] == "1"


@pytest.mark.parametrize("args", [("gs://bucket/run",), ("/nfs/run", "--set", "data.dataset_dir=gs://b/data"),
                                  ("/nfs/run", "--init-from", "gs://b/ckpt")])
def test_tpu_refuses_gcs_urls(args):
    proc = _run("tpu_pod.sh", "t", "z", "ar1_tiny", *args, env=_clean_env(DRY_RUN="1"))
    assert proc.returncode == 2
    assert "gcsfuse" in proc.stderr and proc.stdout == ""


def test_tpu_runs_gcloud_without_dry_run(tmp_path):
    bindir = tmp_path / "bin"
    _shim(bindir, "gcloud")
    env = _clean_env(PATH=f"{bindir}:{os.environ['PATH']}")
    proc = _run("tpu_pod.sh", "t", "z", "ar1_tiny", "/nfs/run", env=env)
    assert proc.returncode == 0, proc.stderr
    args = _args(proc.stdout)
    assert args[:6] == ["compute", "tpus", "tpu-vm", "ssh", "t", "--zone"] and "--worker=all" in args


# ---------------------------------------------------------------------------------------------------
# slurm_gpu.sbatch


def _slurm_env(tmp_path: pathlib.Path, **extra: str) -> dict[str, str]:
    bindir = tmp_path / "bin"
    _shim(bindir, "srun", ARGS_SHIM.replace("#!/usr/bin/env bash\n", "#!/usr/bin/env bash\necho SRUN\n"))
    _shim(bindir, "scontrol", '#!/usr/bin/env bash\necho "SCONTROL $*"\n')
    env = dict(PATH=f"{bindir}:{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="2",
               SLURM_NNODES="2", SLURM_JOB_NODELIST="gpu[003-004]", SLURM_GPUS_PER_NODE="h100:8",
               SLURM_NTASKS_PER_NODE="8", SLURM_NTASKS="16")
    env.update(extra)
    return _clean_env(**env)


def test_slurm_sbatch_header():
    text = (LAUNCH / "slurm_gpu.sbatch").read_text()
    for line in ("#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8", "#SBATCH --signal=TERM@120",
                 "#SBATCH --requeue", "#SBATCH --nodes="):
        assert line in text
    assert text.index("#SBATCH") < text.index("set -euo pipefail")  # sbatch stops at the first command


def test_slurm_runs_srun_ar1_train(tmp_path):
    proc = _run("slurm_gpu.sbatch", "ar1_7b", "/shared/runs/s1", "--stage", "sft1", "--set",
                "data.dataset_dir=/shared/data", env=_slurm_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "SRUN" in proc.stdout and "SCONTROL" not in proc.stdout
    assert _args(proc.stdout) == ["ar1", "train", "--config", "ar1_7b", "--workdir", "/shared/runs/s1",
                                  "--set", "mesh.data=-1", "--set", "mesh.fsdp=8",  # nodes x GPUs of a node
                                  "--stage", "sft1", "--set", "data.dataset_dir=/shared/data"]
    # One process per GPU: JAX's SLURM detection picks GPU SLURM_LOCALID, nothing to set.
    assert _envs(proc.stdout)["JAX_LOCAL_DEVICE_IDS"] == "<unset>"
    assert "fsdp=8" in proc.stdout


def test_slurm_config_from_environment(tmp_path):
    env = _slurm_env(tmp_path, CONFIG="ar1_3b", WORKDIR="/shared/b", EXTRA_ARGS="--stage sft2  --set mesh.fsdp=4",
                     AR1="python -m ar1_jax.cli", SRUN_ARGS="--gpu-bind=none")
    proc = _run("slurm_gpu.sbatch", env=env)
    assert proc.returncode == 0, proc.stderr
    assert _args(proc.stdout) == ["--gpu-bind=none", "python", "-m", "ar1_jax.cli", "train", "--config", "ar1_3b",
                                  "--workdir", "/shared/b", "--stage", "sft2", "--set", "mesh.fsdp=4"]


def test_slurm_one_process_per_node_sees_all_gpus(tmp_path):
    env = _slurm_env(tmp_path, SLURM_NTASKS_PER_NODE="1", SLURM_NTASKS="2", SLURM_GPUS_PER_NODE="4")
    proc = _run("slurm_gpu.sbatch", "ar1_7b", "/shared/r", env=env)
    assert proc.returncode == 0, proc.stderr
    assert _envs(proc.stdout)["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3"
    assert _args(proc.stdout)[-4:] == ["--set", "mesh.data=-1", "--set", "mesh.fsdp=4"]


def test_slurm_requeues_after_sigterm_checkpoint(tmp_path):
    proc = _run("slurm_gpu.sbatch", "ar1_7b", "/shared/r", env=_slurm_env(tmp_path, SHIM_RC="143"))
    assert proc.returncode == 0, proc.stderr
    assert "SCONTROL requeue 4242" in proc.stdout
    proc = _run("slurm_gpu.sbatch", "ar1_7b", "/shared/r", env=_slurm_env(tmp_path, SHIM_RC="143", AR1_REQUEUE="0"))
    assert proc.returncode == 143 and "SCONTROL" not in proc.stdout
    proc = _run("slurm_gpu.sbatch", "ar1_7b", "/shared/r", env=_slurm_env(tmp_path, SHIM_RC="1"))
    assert proc.returncode == 1 and "SCONTROL" not in proc.stdout


def test_slurm_outside_a_job_fails():
    proc = _run("slurm_gpu.sbatch", "ar1_7b", "/shared/r")
    assert proc.returncode == 2 and "sbatch" in proc.stderr
