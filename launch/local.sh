#!/usr/bin/env bash
# One `ar1 train` process on this machine, over all its local devices (GPUs, TPU chips or CPU).
# See launch/README.md.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch/local.sh CONFIG WORKDIR [ar1 train args...]

Runs `ar1 train --config CONFIG --workdir WORKDIR [args...]` as one process over every local
device. The mesh is the config's (default mesh.data=-1: data parallel over all local devices);
change it with e.g. `--set mesh.data=1 --set mesh.fsdp=-1` (at most one axis may be -1).
Rerunning the same command resumes from WORKDIR/checkpoints.

environment:
  NUM_CPU_DEVICES=N  fake an N-device CPU mesh: XLA_FLAGS=--xla_force_host_platform_device_count=N
                     (and JAX_PLATFORMS=cpu unless JAX_PLATFORMS is set)
  AR1=CMD            the ar1 command (default: ar1), e.g. AR1="python -m ar1_jax.cli"

Multi-process variables (AR1_COORDINATOR, JAX_COORDINATOR_ADDRESS, SLURM_NTASKS/SLURM_PROCID,
AR1_DISTRIBUTED) are cleared: this is always a single process.

examples:
  launch/local.sh ar1_tiny runs/tiny --set train.steps=60
  NUM_CPU_DEVICES=8 launch/local.sh ar1_tiny runs/tiny8 --set mesh.data=2 --set mesh.fsdp=4
  launch/local.sh ar1_0p5b runs/s1 --stage sft1 --set data.dataset_dir=data/synth
USAGE
}

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
esac
if [[ $# -lt 2 || -z "$1" || -z "$2" || "$1" == -* || "$2" == -* ]]; then
  echo "local.sh: CONFIG and WORKDIR are required" >&2
  usage >&2
  exit 2
fi
config=$1 workdir=$2
shift 2

read -r -a ar1_cmd <<< "${AR1:-ar1}"
if [[ ${#ar1_cmd[@]} -eq 0 ]]; then
  echo "local.sh: AR1 is empty" >&2
  exit 2
fi

if [[ -n "${NUM_CPU_DEVICES:-}" ]]; then
  if ! [[ "$NUM_CPU_DEVICES" =~ ^[1-9][0-9]*$ ]]; then
    echo "local.sh: NUM_CPU_DEVICES must be a positive integer, got '$NUM_CPU_DEVICES'" >&2
    exit 2
  fi
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$NUM_CPU_DEVICES"
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
fi
# One process: nothing may make `ar1 train` start multi-process JAX.
unset AR1_COORDINATOR JAX_COORDINATOR_ADDRESS AR1_DISTRIBUTED SLURM_NTASKS SLURM_PROCID

# The mesh this run asks for: the config's, changed by any --set mesh.* in the arguments.
mesh=()
prev=""
for arg in "$@"; do
  if [[ "$prev" == "--set" && "$arg" == mesh.* ]]; then
    mesh+=("${arg#mesh.}")
  elif [[ "$arg" == --set=mesh.* ]]; then
    mesh+=("${arg#--set=mesh.}")
  fi
  prev=$arg
done
if [[ -n "${NUM_CPU_DEVICES:-}" ]]; then
  devices="$NUM_CPU_DEVICES fake CPU devices (XLA_FLAGS=$XLA_FLAGS)"
else
  devices="all local devices"
fi
if [[ ${#mesh[@]} -gt 0 ]]; then
  echo "local.sh: 1 process, $devices; mesh: the config's with ${mesh[*]}"
else
  echo "local.sh: 1 process, $devices; mesh: the config's (default data=-1 fsdp=1 tensor=1)"
fi

exec "${ar1_cmd[@]}" train --config "$config" --workdir "$workdir" "$@"
