#!/usr/bin/env bash
# The GPU benchmark of one H100 / H200 in one go (about 8 minutes), rows appended to docs/benchmarks.md.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch/gpu_bench.sh [--dry-run] [OUT_DIR]

On one GPU, from the repository root:
  1. ar1 bench kernels (bf16): flash / decode / denoise attention against cuDNN and XLA;
  2. ar1 bench infer, random weights in bf16, 16 images, 40 reasoning tokens, 5 flow steps:
     ar1_0p5b at B = 1, 8, 32 and ar1_10b_release at B = 1, 8 (and ar1_0p5b --int8 at B = 1, 8),
     with decode against the HBM roofline (--peak-gbs from the GPU's name);
  3. ar1 train --config ar1_0p5b for 12 steps on 32 synthetic scenes: step time, tokens/s, MFU;
  4. python -m ar1_jax.bench.report: a dated section appended to $DOCS (default docs/benchmarks.md).
Results (JSON, Markdown, logs) go to OUT_DIR (default: $OUT if set, else out/gpu_bench).

--dry-run: the same steps on CPU with tiny configs (ar1_tiny, --quick kernels, 2 train steps),
appending to OUT_DIR/benchmarks.md instead of docs/: checks the script, not the GPU.

environment: PYTHON (default: python3), AR1 (default: $PYTHON -m ar1_jax.cli), DOCS, PEAK_GBS, PEAK_TFLOPS (override the
table below: H200 4800 GB/s, H100 3350 GB/s; 989 dense bf16 TFLOP/s for both).
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
start=$(date +%s)
stamp() { echo "[gpu_bench $(( $(date +%s) - start )) s] $*"; }

if (( DRY )); then
  export JAX_PLATFORMS=cpu
  DOCS="${DOCS:-$OUT_DIR/benchmarks.md}"
  GPU="cpu (dry run)"; PEAK_GBS="${PEAK_GBS:-20}"; PEAK_TFLOPS="${PEAK_TFLOPS:-1}"
  KERNEL_ARGS=(--quick)
  SMALL=(ar1_tiny); BIG=(); SMALL_BATCH=1,2; INT8_BATCH=1; RUNS=1; TRAIN_CFG=ar1_tiny; TRAIN_STEPS=2; TRAIN_SCENES=16
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
fi
stamp "machine: $GPU; peak $PEAK_GBS GB/s, $PEAK_TFLOPS TFLOP/s; results in $OUT_DIR; docs $DOCS"

INFER_SET=(--set infer.max_reasoning_tokens=40 --set infer.flow_steps=5 --set infer.temperature=0.0)
BF16=(--set model.dtype=bfloat16 --set model.param_dtype=bfloat16)
(( DRY )) && BF16=()
roof=(); [[ "$PEAK_GBS" != 0 ]] && roof=(--peak-gbs "$PEAK_GBS")

stamp "1/4 attention kernels"
$AR1 bench kernels --out "$OUT_DIR/kernels" --dtype bfloat16 "${KERNEL_ARGS[@]}" > "$OUT_DIR/kernels.log" 2>&1 \
  || stamp "kernels failed (see kernels.log)"

stamp "2/4 inference"
for cfg in "${SMALL[@]}"; do
  $AR1 bench infer --config "$cfg" --batch "$SMALL_BATCH" --runs "$RUNS" "${INFER_SET[@]}" "${BF16[@]}" "${roof[@]}" \
    --out "$OUT_DIR/infer_${cfg}" 2>&1 | tee "$OUT_DIR/infer_${cfg}.log" || stamp "$cfg failed"
  $AR1 bench infer --config "$cfg" --batch "$INT8_BATCH" --runs "$RUNS" --int8 "${INFER_SET[@]}" "${BF16[@]}" "${roof[@]}" \
    --out "$OUT_DIR/infer_${cfg}_int8" 2>&1 | tee "$OUT_DIR/infer_${cfg}_int8.log" || stamp "$cfg int8 failed"
done
for cfg in "${BIG[@]}"; do
  $AR1 bench infer --config "$cfg" --batch 1,8 --runs 3 "${INFER_SET[@]}" "${BF16[@]}" "${roof[@]}" \
    --out "$OUT_DIR/infer_${cfg}" 2>&1 | tee "$OUT_DIR/infer_${cfg}.log" || stamp "$cfg failed"
done

stamp "3/4 train step MFU ($TRAIN_CFG)"
rm -rf "$OUT_DIR/train"
$AR1 train --config "$TRAIN_CFG" --workdir "$OUT_DIR/train" --synth-scenes "$TRAIN_SCENES" --no-progress \
  --set train.steps="$TRAIN_STEPS" --set train.log_every=1 --set train.checkpoint_every=100000 \
  --set train.peak_tflops="$PEAK_TFLOPS" --set data.batch_size=8 > "$OUT_DIR/train.log" 2>&1 || stamp "train failed (see train.log)"
rm -rf "$OUT_DIR/train/data" "$OUT_DIR/train/checkpoints"

stamp "4/4 report -> $DOCS"
$PYTHON -m ar1_jax.bench.report "$OUT_DIR" "$DOCS" --note "$GPU" > "$OUT_DIR/report.md"
stamp "done"
