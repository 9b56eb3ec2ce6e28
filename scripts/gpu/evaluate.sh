#!/usr/bin/env bash
# docs/EVALUATION.md on a GPU machine: `infini eval memory --device cuda` (bf16) with the real model,
# which travels in two parts (a machine call carries at most 64 MiB; scripts/gpu/pack_evaluation.sh
# makes .gpu/a and .gpu/b). Run from the repository root on the GPU machine:
#   scripts/gpu/evaluate.sh OUT_DIR   (INFINI_XZ: another xz'd binary than .gpu/a/infini.xz)
# 1. every reading at the default STM (1,024), the default row first, so that a run cut short
#    still has it; 2. the default reading with an STM of 512 (what a shorter STM costs); 3. the
#    int8 archive at 100k. Each report is rewritten after every reading, so OUT_DIR always holds
#    what finished.
set -euo pipefail
OUT=$1
TORCH_LIB=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH=$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
WORK=$(mktemp -d)
xz -dc "${INFINI_XZ:-.gpu/a/infini.xz}" > "$WORK/infini" && chmod +x "$WORK/infini"
xz -dc .gpu/a/kjv.txt.xz > "$WORK/kjv.txt"
cat .gpu/a/model.part .gpu/b/model.part > "$WORK/model.gguf"
(cd "$WORK" && sha256sum -c "$OLDPWD/.gpu/a/model.sha256")
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
eval_memory() { "$WORK/infini" eval memory --text "$WORK/kjv.txt" --model "$WORK/model.gguf" --device cuda "$@"; }
ALL=1200,4800,16000,32000
step() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }
step "1. the default reading, every length"
eval_memory --out "$OUT/EVALUATION.md" --only default --lengths $ALL,100000
step "2. the other readings, up to 32k"
eval_memory --out "$OUT/EVALUATION.md" --resume --lengths $ALL
step "3. the default reading with an STM of 512"
eval_memory --out "$OUT/EVALUATION-stm512.md" --stm-len 512 --only default --lengths $ALL,100000
step "4. the int8 archive at 100k"
eval_memory --out "$OUT/EVALUATION.md" --resume --only int8 --lengths 100000
step done
