#!/usr/bin/env bash
# The GPU check of issue #6, for a machine whose libtorch sees a CUDA device: the same release
# binary built on the CPU machine, pointed at the local PyTorch 2.11.0's libraries.
#   scripts/gpu/check.sh BIN MODEL_DIR [OUT_DIR]
# 1. greedy generation on cuda (bf16, the device's default precision) and on the CPU in bf16;
# 2. a long prompt (8,660 tokens) through every memory tier on cuda (sinks, STM, archive, signal);
# 3. `infini serve --device cuda` answering 8 concurrent chats in one batch.
# Exits non-zero when any step fails.
set -uo pipefail
BIN=$1 MODEL=$2 OUT=${3:-/tmp}
TORCH_LIB=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH=$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
failed=0
step() { printf '\n== %s\n' "$*"; }
run() { "$@" || { echo "FAILED: $*"; failed=1; }; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
step "1. greedy generation: cuda (default precision there: bf16), then cpu bf16"
run "$BIN" generate --model "$MODEL" --device cuda --prompt "The capital of France is" \
  --max-tokens 16 --temperature 0 --memory-stats
run "$BIN" generate --model "$MODEL" --device cpu --precision bf16 --prompt "The capital of France is" \
  --max-tokens 16 --temperature 0

step "2. an 8,660-token prompt through sinks, a 256-token STM, a 512-token archive and the signal, on cuda"
PROMPT=$(python3 -c "print(' '.join('w%d' % (i % 89) for i in range(3000)))")
run "$BIN" generate --model "$MODEL" --device cuda --prompt "$PROMPT" --max-tokens 8 \
  --temperature 0 --stm-len 256 --archive-budget 512 --memory-stats

step "3. infini serve --device cuda: 8 concurrent completions (the tiny model has no chat template)"
DATA=$(mktemp -d)
INFINI_ADDR=127.0.0.1:0 INFINI_DATA_DIR=$DATA INFINI_MODEL=$MODEL INFINI_DEVICE=cuda \
  INFINI_MAX_RUNNING=8 "$BIN" serve > "$OUT/serve.out" 2> "$OUT/serve.log" &
SERVER=$!
for _ in $(seq 120); do
  ADDR=$(sed -n 's/^infini listening on //p' "$OUT/serve.out")
  [ -n "$ADDR" ] && curl -fs "$ADDR/ready" > /dev/null && break
  sleep 1
done
for i in $(seq 8); do
  curl -s -o "$OUT/chat$i.json" -w '%{http_code}\n' "$ADDR/v1/completions" \
    -H 'Content-Type: application/json' \
    -d "{\"prompt\":\"Question number $i\",\"max_tokens\":32,\"temperature\":0}" > "$OUT/code$i" &
done
wait $(jobs -p | grep -v "^$SERVER$") 2>/dev/null
for i in $(seq 8); do
  code=$(cat "$OUT/code$i")
  tokens=$(python3 -c "import json; print(json.load(open('$OUT/chat$i.json'))['usage']['completion_tokens'])" 2>/dev/null)
  echo "chat $i: HTTP $code, $tokens tokens"
  [ "$code" = 200 ] || failed=1
done
curl -s "$ADDR/metrics" | grep -E '^infini_batch_size_(sum|count)|^infini_time_to_first_token_seconds_count'
kill -TERM $SERVER; wait $SERVER
echo
[ $failed = 0 ] && echo "GPU CHECK PASSED" || echo "GPU CHECK FAILED"
exit $failed
