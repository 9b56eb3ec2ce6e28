#!/usr/bin/env bash
# Installs what scripts/playground_browser.py (the playground's real-browser test) needs: Debian's
# Chromium and its chromedriver (apt), and Selenium, pinned, into .venv (or $VENV) through pip, so a
# user's pip configuration (mirror, proxy) applies. Selenium is always pointed at
# /usr/bin/chromedriver, so Selenium Manager never downloads a browser or a driver of its own.
# Each part is skipped when it is already there; the script says what it did.
set -euo pipefail
cd "$(dirname "$0")/.."

SELENIUM=4.27.1
VENV=${VENV:-.venv}
PY=$VENV/bin/python

# Root runs apt-get itself; anyone else through sudo, when there is one.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "browser_tools: need root (or sudo) to run: $*" >&2
    exit 1
  fi
}

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  echo "browser_tools: chromium and chromedriver already installed" >&2
else
  echo "browser_tools: installing chromium and chromium-driver (apt)" >&2
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    chromium chromium-driver
fi

if [ ! -x "$PY" ]; then
  echo "browser_tools: no $PY; create the virtual environment first (scripts/setup.sh)" >&2
  exit 1
fi
if "$PY" -c "import sys; from importlib.metadata import version; sys.exit(version('selenium') != '$SELENIUM')" 2>/dev/null; then
  echo "browser_tools: selenium $SELENIUM already in $VENV" >&2
else
  echo "browser_tools: installing selenium==$SELENIUM into $VENV" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check "selenium==$SELENIUM"
fi
