#!/usr/bin/env bash
# The GPU benchmark of one H100 / H200 in one go (8 minutes by default), rows appended to docs/benchmarks.md.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch/gpu_bench.sh [--dry-run] [OUT_DIR]

On one GPU, from the repository root, within BUDGET_S seconds (default 480), in this order:
  1. ar1 bench infer, random weights in bf16, 16 images, 40 reasoning tokens, 5 flow steps, attention
     model.attention_impl=auto (the Pallas kernels):
     ar1_0p5b at B = 1, 8, 32, with decode against the HBM roofline (--peak-gbs from the GPU's name);
  2. the same for ar1_10b_release at B = 1, 8;
  3. ar1 train --config ar1_0p5b for 12 steps on 32 synthetic scenes: step time, tokens/s, MFU;
  4. ar1 bench kernels (bf16): flash / decode / denoise attention against cuDNN and XLA;
  5. ar1_0p5b with weight-only int8 at B = 1, 8;
  then python -m ar1_jax.bench.report: a dated section (with a table against the paper's 99 ms)
  appended to $DOCS (default docs/benchmarks.md).
Each step has a time limit (the smaller of its cap and what is left of the budget); a step stopped at
its limit keeps the rows it wrote (the benchmarks write their JSON after each batch size or shape).
Results (JSON, Markdown, logs) go to OUT_DIR (default: $OUT if set, else out/gpu_bench).

--dry-run: the same steps on CPU with tiny configs (ar1_tiny, --quick kernels, 2 train steps),
appending to OUT_DIR/benchmarks.md instead of docs/: checks the script, not the GPU.

environment: PYTHON (default: python3), AR1 (default: $PYTHON -m ar1_jax.cli), DOCS, BUDGET_S, PEAK_GBS,
PEAK_TFLOPS (override the datasheet table: H200 4800 GB/s, H100 3350 GB/s; 989 dense bf16 TFLOP/s),
CAP_SMALL, CAP_BIG, CAP_TRAIN, CAP_KERNELS, CAP_INT8 (per-step caps, s), MIN_STEP_S (skip a step with
less time left; default 20).
USAGE
}

DRY=0
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then usage; exit 0; fi
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT_DIR="${1:-${OUT:-out/gpu_bench}}"
mkdir -p "$OUT_DIR"
PYTHON="${PYTHON:-python3}"
AR1="${AR1:-$PYTHON -m ar1_jax.cli}"
export PYTHONUNBUFFERED=1
BUDGET_S="${BUDGET_S:-480}"
start=$(date +%s)
stamp() { echo "[gpu_bench $(( $(date +%s) - start )) s] $*"; }

if (( DRY )); then
  export JAX_PLATFORMS=cpu
  DOCS="${DOCS:-$OUT_DIR/benchmarks.md}"
  GPU="cpu (dry run)"; PEAK_GBS="${PEAK_GBS:-20}"; PEAK_TFLOPS="${PEAK_TFLOPS:-1}"
  KERNEL_ARGS=(--quick)
  SMALL=(ar1_tiny); BIG=(); SMALL_BATCH=1,2; INT8_BATCH=1; RUNS=1; TRAIN_CFG=ar1_tiny; TRAIN_STEPS=2; TRAIN_SCENES=16
  CAPS=(300 300 300 300 300); OUR_TOKENS=()
else
  DOCS="${DOCS:-docs/benchmarks.md}"
  GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  case "$GPU" in
    *H200*) PEAK_GBS="${PEAK_GBS:-4800}" ;;
    *H100*) PEAK_GBS="${PEAK_GBS:-3350}" ;;
    *) PEAK_GBS="${PEAK_GBS:-0}" ;;
  esac
  PEAK_TFLOPS="${PEAK_TFLOPS:-989}"
  KERNEL_ARGS=()
  SMALL=(ar1_0p5b); BIG=(ar1_10b_release); SMALL_BATCH=1,8,32; INT8_BATCH=1,8; RUNS=5; TRAIN_CFG=ar1_0p5b; TRAIN_STEPS=12
  TRAIN_SCENES=32
  CAPS=(110 130 100 110 70)
  OUR_TOKENS=(--our-tokens)  # ar1_0p5b has the release's token layout; the synthetic data is tokenized by ours
fi
# Per-step caps in seconds (inference small, big, train, kernels, int8); each overridable from the environment.
CAP_SMALL="${CAP_SMALL:-${CAPS[0]}}"; CAP_BIG="${CAP_BIG:-${CAPS[1]}}"; CAP_TRAIN="${CAP_TRAIN:-${CAPS[2]}}"
CAP_KERNELS="${CAP_KERNELS:-${CAPS[3]}}"; CAP_INT8="${CAP_INT8:-${CAPS[4]}}"
MIN_STEP_S="${MIN_STEP_S:-20}"  # a step with less time than this left is skipped
stamp "machine: $GPU; peak $PEAK_GBS GB/s, $PEAK_TFLOPS TFLOP/s; results in $OUT_DIR; docs $DOCS"

# attention_impl=auto: the Pallas kernels on a GPU (XLA on CPU). On an H200 (2026-12-04) they cut ar1_0p5b's
# B = 1 prefill from 29.5 to 10.0 ms and ar1_10b_release's from 170 to 97 ms against the configs' default (xla).
INFER_SET=(--set infer.max_reasoning_tokens=40 --set infer.flow_steps=5 --set infer.temperature=0.0
           --set model.attention_impl=auto)
BF16=(--set model.dtype=bfloat16 --set model.param_dtype=bfloat16)
(( DRY )) && BF16=()
roof=(); [[ "$PEAK_GBS" != 0 ]] && roof=(--peak-gbs "$PEAK_GBS")

# Each step runs under a time limit taken from what is left of BUDGET_S (the benchmarks write their JSON
# after every batch size / shape, so a step stopped at its limit keeps what it measured); the report
# always runs. Order: what the paper's 99 ms is compared with first.
left() { echo $(( BUDGET_S - ($(date +%s) - start) - ${REPORT_S:-15} )); }  # REPORT_S: kept for the report
step() {  # step NAME CAP_S LOG cmd...: runs cmd for at most min(CAP_S, time left), output to LOG and stdout
  local name=$1 cap=$2 log=$3; shift 3
  local t; t=$(left); (( t > cap )) && t=$cap
  if (( t < MIN_STEP_S )); then stamp "$name: skipped, ${t}s of the budget left"; return 0; fi
  stamp "$name (limit ${t}s)"
  set +e
  timeout --signal=TERM --kill-after=10 "$t" "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  set -e
  (( rc == 124 || rc == 137 )) && stamp "$name: stopped at its ${t}s limit (kept what it wrote)"
  (( rc != 0 && rc != 124 && rc != 137 )) && stamp "$name failed (exit $rc; see $log)"
  return 0
}

for cfg in "${SMALL[@]}"; do
  step "1/5 inference $cfg" "$CAP_SMALL" "$OUT_DIR/infer_${cfg}.log" \
    $AR1 bench infer --config "$cfg" --batch "$SMALL_BATCH" --runs "$RUNS" "${INFER_SET[@]}" "${BF16[@]}" "${roof[@]}" \
    --out "$OUT_DIR/infer_${cfg}"
done
for cfg in "${BIG[@]}"; do
  step "2/5 inference $cfg" "$CAP_BIG" "$OUT_DIR/infer_${cfg}.log" \
    $AR1 bench infer --config "$cfg" --batch 1,8 --runs 3 "${INFER_SET[@]}" "${BF16[@]}" "${roof[@]}" \
    --out "$OUT_DIR/infer_${cfg}"
done

rm -rf "$OUT_DIR/train"
step "3/5 train step MFU ($TRAIN_CFG)" "$CAP_TRAIN" "$OUT_DIR/train.log" \
  $AR1 train --config "$TRAIN_CFG" --workdir "$OUT_DIR/train" --synth-scenes "$TRAIN_SCENES" --no-progress "${OUR_TOKENS[@]}" \
  --set train.steps="$TRAIN_STEPS" --set train.log_every=1 --set train.checkpoint_every=100000 \
  --set train.peak_tflops="$PEAK_TFLOPS" --set data.batch_size=8
rm -rf "$OUT_DIR/train/data" "$OUT_DIR/train/checkpoints"

step "4/5 attention kernels" "$CAP_KERNELS" "$OUT_DIR/kernels.log" \
  $AR1 bench kernels --out "$OUT_DIR/kernels" --dtype bfloat16 "${KERNEL_ARGS[@]}"

for cfg in "${SMALL[@]}"; do
  step "5/5 inference $cfg int8" "$CAP_INT8" "$OUT_DIR/infer_${cfg}_int8.log" \
    $AR1 bench infer --config "$cfg" --batch "$INT8_BATCH" --runs "$RUNS" --int8 "${INFER_SET[@]}" "${BF16[@]}" \
    "${roof[@]}" --out "$OUT_DIR/infer_${cfg}_int8"
done

stamp "report -> $DOCS"
$PYTHON -m ar1_jax.bench.report "$OUT_DIR" "$DOCS" --note "$GPU" | tee "$OUT_DIR/report.md"
stamp "done"
