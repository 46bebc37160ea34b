#!/usr/bin/env bash
# Set up thaw on a fresh Debian 12 machine (as root): system tools, a portable CRIU 4 (the host's
# C library and packages are left as they are), and the thaw Python package with its dependencies
# in .venv. Safe to run again: every step skips what is already there.
#
#   sudo scripts/setup.sh            then: .venv/bin/thaw doctor, .venv/bin/thaw demo
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "setup.sh: run as root (CRIU and namespaces need it)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "system packages (util-linux for unshare, iproute2, ca-certificates)"
need=()
for cmd_pkg in unshare:util-linux ip:iproute2 dpkg-deb:dpkg; do
  command -v "${cmd_pkg%%:*}" >/dev/null || need+=("${cmd_pkg##*:}")
done
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi
echo "ok"

step "CRIU >= 4 (portable tree in /opt/thaw/criu, from Debian 13 packages, not installed into the system)"
scripts/install-criu.sh /opt/thaw/criu

step "Python environment (.venv) with thaw and its dependencies"
PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
  || { echo "thaw needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# torch first, pinned: the CPU build (a few hundred MB) rather than a multi-GB CUDA build
.venv/bin/pip install -q "torch==2.13.0" numpy 2>&1 | grep -v -i warning || true
.venv/bin/python -c 'import torch' || .venv/bin/pip install -q torch --index-url https://download.pytorch.org/whl/cpu
.venv/bin/pip install -q -e ".[engine,k8s,test]" 2>&1 | grep -v -i warning || true
.venv/bin/thaw --help >/dev/null

step "host check"
.venv/bin/thaw doctor
