#!/usr/bin/env bash
# The sorting experiment of docs/SORTING.md, end to end on this CPU: train the ∞-former and the
# memoryless baseline with the `cpu` preset (same steps, batches and data), evaluate both on
# freshly generated held-out sequences, and plot accuracy against length.
#
#   scripts/sorting_experiment.sh [RUN_DIR]      (default runs/final; resumes unfinished runs)
#
# Extra flags for both trainings can be passed in TRAIN_FLAGS, e.g. TRAIN_FLAGS="--steps 100".
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/final}
LENGTHS=${LENGTHS:-64,256,512,1024}
SEQUENCES=${SEQUENCES:-512}
export PATH="$PWD/.venv/bin:$PATH" LIBTORCH_USE_PYTORCH=1
cargo build --release
BIN=./target/release/infini
mkdir -p "$RUN"
train() { # name, extra flags...
  local name=$1; shift
  if [ -f "$RUN/$name/run.json" ]; then
    "$BIN" train sorting --out "$RUN/$name" --resume
  else
    # shellcheck disable=SC2086
    "$BIN" train sorting --out "$RUN/$name" --log-every 50 ${TRAIN_FLAGS:-} "$@"
  fi
}
train ltm 2> >(tee -a "$RUN/ltm.log" >&2) &
train baseline --no-ltm 2> >(tee -a "$RUN/baseline.log" >&2) &
wait
for name in ltm baseline; do
  "$BIN" eval sorting --checkpoint "$RUN/$name" --lengths "$LENGTHS" --sequences "$SEQUENCES" \
    --json "$RUN/eval_$name.json" | tee "$RUN/eval_$name.md"
done
.venv/bin/python scripts/plot_sorting.py docs/sorting_accuracy.png "$RUN/eval_ltm.json" "$RUN/eval_baseline.json"
