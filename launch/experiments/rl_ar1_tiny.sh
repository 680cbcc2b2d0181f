#!/usr/bin/env bash
# The RL experiments of docs/results.md on a CPU machine: SFT of ar1_tiny on synthetic scenes, then
# `ar1 rl` from it for 3 seeds with the default expert method and 1 seed of each other one, every run
# scored on held-out world scenes before and after (--heldout), and the tables written to OUT/summary.md.
#
#   launch/experiments/rl_ar1_tiny.sh OUT            # e.g. runs/rl_tiny
#
# Environment: RL_STEPS (200), SFT_STEPS (150), SFT_SCENES (64), HELDOUT (32 scenes), LR (1e-4),
# SEEDS ("0 1 2"), OTHER_METHODS ("awfm fpo"), JOBS (2 runs side by side, single-threaded XLA each),
# AR1 / PYTHON (the `ar1` and the Python of the install, e.g. .venv/bin/ar1).
# Rerunning resumes: every `ar1 train` / `ar1 rl` picks up its own checkpoints, finished runs are kept.
set -euo pipefail

if [[ $# -ne 1 || $1 == -h || $1 == --help ]]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  exit $(( $# == 1 ? 0 : 2 ))
fi
OUT=$1
RL_STEPS=${RL_STEPS:-200}
SFT_STEPS=${SFT_STEPS:-150}
SFT_SCENES=${SFT_SCENES:-64}
HELDOUT=${HELDOUT:-32}
LR=${LR:-1e-4}
SEEDS=${SEEDS:-"0 1 2"}
OTHER_METHODS=${OTHER_METHODS:-"awfm fpo"}
JOBS=${JOBS:-2}
AR1=${AR1:-ar1}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"

echo "== SFT: ar1_tiny, $SFT_STEPS steps on $SFT_SCENES synthetic scenes -> $OUT/sft"
$AR1 train --config ar1_tiny --workdir "$OUT/sft" --synth-scenes "$SFT_SCENES" --no-progress \
  --set train.steps="$SFT_STEPS" --set train.checkpoint_every=50

rl_run() {  # name seed method
  local dir=$OUT/$1
  if [[ -f $dir/heldout_after.json ]]; then echo "== $1: done"; return; fi
  # Held-out keys depend only on rl.eval_seed, so every run from this SFT checkpoint starts from the
  # same scores: computed once, copied (ar1 rl skips the "before" pass when the file is there).
  mkdir -p "$dir"
  if [[ -f $OUT/heldout_before.json && ! -f $dir/heldout_before.json ]]; then
    cp "$OUT/heldout_before.json" "$dir/"
  fi
  echo "== RL $1: expert $3, seed $2, $RL_STEPS steps, lr $LR"
  $AR1 rl --config ar1_tiny --init-from "$OUT/sft" --workdir "$dir" --heldout "$HELDOUT" --no-progress \
    --set seed="$2" --set rl.expert_loss="$3" --set train.steps="$RL_STEPS" --set train.learning_rate="$LR" \
    --set train.warmup_steps=0 --set train.checkpoint_every=50 --set train.tensorboard=false \
    > "$dir.log" 2>&1 || { echo "== RL $1 failed: see $dir.log"; return 1; }
  tail -n 3 "$dir.log"
}

runs=()
for s in $SEEDS; do runs+=("flow_grpo_s$s $s flow_grpo"); done
for m in $OTHER_METHODS; do runs+=("${m}_s${SEEDS%% *} ${SEEDS%% *} $m"); done

# The first run alone computes the shared held-out "before" scores.
read -r name seed method <<<"${runs[0]}"
rl_run "$name" "$seed" "$method"
cp -n "$OUT/$name/heldout_before.json" "$OUT/heldout_before.json"

pids=()
for spec in "${runs[@]:1}"; do
  read -r name seed method <<<"$spec"
  if (( JOBS > 1 )); then
    XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_multi_thread_eigen=false" rl_run "$name" "$seed" "$method" &
    pids+=($!)
    while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n || true; done
  else
    rl_run "$name" "$seed" "$method"
  fi
done
for p in "${pids[@]}"; do wait "$p" || true; done

dirs=()
for spec in "${runs[@]}"; do read -r name _ <<<"$spec"; dirs+=("$OUT/$name"); done
$PYTHON -m ar1_jax.rl.report "${dirs[@]}" --out "$OUT/summary.md"
