#!/usr/bin/env bash
# Run thaw's checks and test suite (as root: the CRIU tests checkpoint real processes): ruff, mypy and
# lint-imports as configured in pyproject.toml, then pytest.
# GPU tests are skipped without a GPU; scripts/gpu-suite.sh runs them on a GPU machine.
# The Kubernetes tests need kube-apiserver test binaries, built once (cached) from Debian's archive.
#
#   sudo scripts/test.sh [PYTEST ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pytest ] || { echo "run scripts/setup.sh first" >&2; exit 1; }
if [ "${THAW_SKIP_K8S:-0}" != 1 ]; then
  echo "==> Kubernetes test binaries (cached in /var/cache/k8s-testbin)"
  scripts/build-kube-testbin.sh
fi
echo "==> lint (ruff), types (mypy), import layering and cycles (lint-imports)"
.venv/bin/ruff check src tests bench
.venv/bin/mypy
.venv/bin/lint-imports
echo "==> tests"
exec .venv/bin/pytest "$@"
