#!/usr/bin/env bash
# The memory figures of docs/OPERATIONS.md ("Sizing"): starts `infini serve` (default model, int4,
# CPU, INFINI_THREADS=1, SQLite in a temporary folder), then prints the process's RSS and anonymous
# memory (/proc/PID/smaps_rollup) idle, after 1, 5, 10, 15 and 20 sessions of one ~1,100-token turn
# each, and while one more session grows by 16 such turns.
#   usage: scripts/measure_rss.sh [BINARY]       (default: target/release/infini; `make build` first)
set -euo pipefail
cd "$(dirname "$0")/.."

BINARY=${1:-target/release/infini}
PORT=${PORT:-18184}
URL=http://127.0.0.1:$PORT
data=$(mktemp -d)
INFINI_DATA_DIR=$data INFINI_ADDR=127.0.0.1:$PORT INFINI_THREADS=1 INFINI_LOG=warn \
  "$BINARY" serve >"$data/server.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$data"' EXIT
until curl -fs "$URL/ready" >/dev/null; do
  kill -0 "$pid" 2>/dev/null || { cat "$data/server.log"; exit 1; }
  sleep 0.5
done

rss() {
  awk '/^Rss:/ {r = $2} /^Anonymous:/ {a = $2} END {printf "RSS %.2f GB, anonymous %.2f GB", r / 2^20, a / 2^20}' \
    "/proc/$pid/smaps_rollup"
  awk '/VmHWM/ {printf ", peak %.2f GB\n", $2 / 2^20}' "/proc/$pid/status"
}
# 60 numbered sentences (~1,100 tokens with the chat template), distinct per turn.
notes() { python3 -c 'import sys; t = int(sys.argv[1]); print(" ".join(f"Note {i}: the keeper counted {i*7%97} gulls near rock {i%13}." for i in range(t*60, t*60+60)))' "$1"; }
new_session() { curl -fs -X POST "$URL/v1/sessions" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])'; }
turn() {
  python3 -c 'import json, sys; print(json.dumps({"max_tokens": 16, "temperature": 0, "session_id": sys.argv[1], "messages": [{"role": "user", "content": sys.argv[2]}]}))' "$1" "$2" \
    | curl -fs "$URL/v1/chat/completions" -H 'Content-Type: application/json' -d @- >/dev/null
}
stats() { curl -fs "$URL/v1/sessions/$1" | python3 -c 'import json, sys; d = json.load(sys.stdin); print("%d tokens, memory %.1f MB" % (d["tokens_seen"], d["memory"]["total_bytes"] / 2**20))'; }

sleep 1
echo "loaded, idle: $(rss)"
for n in $(seq 1 20); do
  id=$(new_session)
  turn "$id" "$(notes 0)"
  if [ "$n" = 1 ] || [ $((n % 5)) = 0 ]; then echo "$n sessions of $(stats "$id"): $(rss)"; fi
done
id=$(new_session)
for t in $(seq 1 16); do
  turn "$id" "$(notes "$t")"
  if [ $((t % 4)) = 0 ]; then echo "+ one session at $(stats "$id"): $(rss)"; fi
done
