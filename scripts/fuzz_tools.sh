#!/usr/bin/env bash
# Installs the API fuzzer that tests/api_fuzz.rs runs (part of `make test`, so of CI): schemathesis,
# pinned, into .venv (or $VENV) through pip, so a user's pip configuration (mirror, proxy) applies.
# Skipped when the pinned version is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS=4.32.5
VENV=${VENV:-.venv}
PY=$VENV/bin/python

if "$PY" -c "import sys; from importlib.metadata import version; sys.exit(version('schemathesis') != '$SCHEMATHESIS')" 2>/dev/null; then
  exit 0
fi
echo "fuzz_tools: installing schemathesis==$SCHEMATHESIS into $VENV" >&2
"$PY" -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS"
