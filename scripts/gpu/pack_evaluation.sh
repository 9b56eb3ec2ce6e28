#!/usr/bin/env bash
# Packs what scripts/gpu/evaluate.sh needs into .gpu/a and .gpu/b (git-ignored), each under the
# 64 MiB one machine call carries: the stripped release binary and the text (xz), and the default
# GGUF cut in two halves with its sha256. Needs `cargo build --release` and fetch_eval_text.sh first.
set -euo pipefail
GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf
rm -rf .gpu/a .gpu/b && mkdir -p .gpu/a .gpu/b
strip -o .gpu/a/infini target/release/infini && xz -T2 -6 .gpu/a/infini
xz -T2 -6 -c data/kjv.txt > .gpu/a/kjv.txt.xz
half=$(( ($(stat -c %s $GGUF) + 1) / 2 ))
head -c $half $GGUF > .gpu/a/model.part
tail -c +$((half + 1)) $GGUF > .gpu/b/model.part
(cd "$(dirname $GGUF)" && sha256sum "$(basename $GGUF)") | sed 's/ .*/  model.gguf/' > .gpu/a/model.sha256
du -sh .gpu/a .gpu/b
