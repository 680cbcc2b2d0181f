#!/usr/bin/env bash
# The same `ar1 train` on every worker of a Cloud TPU VM slice, over `gcloud ... ssh --worker=all`.
# See launch/README.md.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [ar1 train args...]

Runs `ar1 train --config CONFIG --workdir WORKDIR [args...]` on every worker of the TPU VM
TPU_NAME with `gcloud compute tpus tpu-vm ssh --worker=all`; the processes find each other
through JAX's TPU detection (AR1_DISTRIBUTED=auto). Default mesh: mesh.data=1 mesh.fsdp=-1
(FSDP over all chips of the slice) unless the arguments contain a --set mesh.* of their own.

WORKDIR and data.dataset_dir (and --init-from) must be the same path on every worker, on a
shared filesystem: Filestore/NFS, or a GCS bucket mounted with gcsfuse (e.g. /gcs/BUCKET/run).
`ar1 train` uses local file APIs, so gs:// URLs are refused. Process 0 writes the logs and
metrics; the checkpoints go to WORKDIR/checkpoints. Rerunning the same command resumes.

environment:
  PROJECT=ID          gcloud --project (default: gcloud's configured project)
  AR1_REMOTE_DIR=DIR  cd here on each worker first, e.g. ~/ar1_jax (default: the login dir)
  AR1_REMOTE_VENV=D   virtualenv to activate on each worker if it exists, relative to
                      AR1_REMOTE_DIR (default: .venv; set it empty to activate none)
  AR1=CMD             the ar1 command on the workers (default: ar1)
  AR1_REMOTE_ENV=...  extra VAR=value words put before the command on the workers, verbatim
                      (e.g. 'LIBTPU_INIT_ARGS=--xla_tpu_enable_async_collective_fusion=true')
  GCLOUD_FLAGS=...    extra flags for `gcloud compute tpus tpu-vm ssh` (e.g. --internal-ip)
  DRY_RUN=1           print the gcloud command instead of running it

examples:
  launch/tpu_pod.sh my-v5p-64 us-east5-a ar1_3b /mnt/shared/runs/s1 --stage sft1 \
      --set data.dataset_dir=/mnt/shared/data/synth
  AR1_REMOTE_DIR='~/ar1_jax' launch/tpu_pod.sh my-v4-32 us-central2-b ar1_0p5b /gcs/bkt/runs/a \
      --set mesh.data=2 --set mesh.fsdp=-1 --set data.dataset_dir=/gcs/bkt/data/synth
USAGE
}

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
esac
if [[ $# -lt 4 ]]; then
  echo "tpu_pod.sh: TPU_NAME, ZONE, CONFIG and WORKDIR are required" >&2
  usage >&2
  exit 2
fi
for a in "$1" "$2" "$3" "$4"; do
  if [[ -z "$a" || "$a" == -* ]]; then
    echo "tpu_pod.sh: TPU_NAME, ZONE, CONFIG and WORKDIR must come first (got '$a')" >&2
    usage >&2
    exit 2
  fi
done
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4

# Paths every worker opens must be shared; `ar1 train` opens them with local file APIs.
check_path() {  # what, value
  if [[ "$2" == gs://* ]]; then
    echo "tpu_pod.sh: $1 '$2' is a gs:// URL, but ar1 train reads and writes it as a local path:" \
         "mount the bucket with gcsfuse on every worker (e.g. /gcs/BUCKET/...) or use a shared filesystem" >&2
    exit 2
  fi
}
check_path WORKDIR "$workdir"
has_mesh=0
prev=""
for arg in "$@"; do
  value=""
  if [[ "$prev" == "--set" ]]; then value=$arg; elif [[ "$arg" == --set=* ]]; then value=${arg#--set=}; fi
  case "$value" in
    mesh.*) has_mesh=1 ;;
    data.dataset_dir=*) check_path data.dataset_dir "${value#*=}" ;;
    train.init_from=*) check_path train.init_from "${value#*=}" ;;
  esac
  if [[ "$prev" == "--init-from" ]]; then check_path --init-from "$arg"; fi
  if [[ "$arg" == --init-from=* ]]; then check_path --init-from "${arg#--init-from=}"; fi
  prev=$arg
done
if [[ "$workdir" != /* ]]; then
  echo "tpu_pod.sh: note: WORKDIR '$workdir' is relative: each worker resolves it in its own" \
       "${AR1_REMOTE_DIR:-login dir}, which must be on a shared filesystem" >&2
fi

train_args=(train --config "$config" --workdir "$workdir")
if [[ $has_mesh -eq 0 ]]; then
  train_args+=(--set mesh.data=1 --set mesh.fsdp=-1)
  mesh_note="mesh data=1 fsdp=-1 tensor=1 (FSDP over all chips)"
else
  mesh_note="mesh from the config and the --set mesh.* arguments"
fi
train_args+=("$@")

# POSIX shell quoting (single quotes) for the workers' shell and for printing.
sq() {
  if [[ "$1" =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
quote() {  # as sq, but a leading ~/ stays expandable on the worker
  # shellcheck disable=SC2088
  if [[ "$1" == "~/"* ]]; then printf '~/%s' "$(sq "${1:2}")"; else sq "$1"; fi
}
remote=""
if [[ -n "${AR1_REMOTE_DIR:-}" ]]; then
  remote+="cd $(quote "$AR1_REMOTE_DIR") && "
fi
venv=${AR1_REMOTE_VENV-.venv}
if [[ -n "$venv" ]]; then
  v=$(quote "$venv")
  remote+="if [ -f $v/bin/activate ]; then . $v/bin/activate; fi && "
fi
remote+="env AR1_DISTRIBUTED=auto ${AR1_REMOTE_ENV:+$AR1_REMOTE_ENV }${AR1:-ar1}"
for a in "${train_args[@]}"; do
  remote+=" $(quote "$a")"
done

cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone")
if [[ -n "${PROJECT:-}" ]]; then cmd+=(--project "$PROJECT"); fi
if [[ -n "${GCLOUD_FLAGS:-}" ]]; then
  read -r -a extra <<< "$GCLOUD_FLAGS"
  cmd+=(${extra[@]+"${extra[@]}"})
fi
cmd+=(--worker=all --command "$remote")

echo "tpu_pod.sh: $tpu ($zone), every worker, AR1_DISTRIBUTED=auto, $mesh_note" >&2
if [[ -n "${DRY_RUN:-}" && "${DRY_RUN}" != 0 ]]; then
  line=""
  for a in "${cmd[@]}"; do line+="${line:+ }$(sq "$a")"; done
  echo "$line"
  exit 0
fi
exec "${cmd[@]}"
