#!/usr/bin/env bash
# Set up thaw on a fresh Debian 12 machine (as root): system packages, a portable CRIU 4 (the host's
# C library and packages are left as they are), and the thaw Python package with its dependencies
# in .venv. Safe to run again: every step skips what is already there, and repairs what is broken.
# Packages come from apt and pip as they are configured on the machine.
#
#   sudo scripts/setup.sh            then: .venv/bin/thaw doctor, .venv/bin/thaw demo
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "setup.sh: run as root (CRIU and namespaces need it)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# what each package is for:
#   python3-venv   thaw's .venv (Debian ships venv's ensurepip apart from python3)
#   python3-dev    Python.h: torch.compile builds a C++ wrapper against it
#   g++            torch.compile's C++ compiler (the demo's worker compiles its encoder)
#   util-linux     unshare, mount: thaw starts every worker in new namespaces
#   iproute2       ip, which CRIU runs for network namespaces
#   debian-archive-keyring, ca-certificates   install-criu.sh reads Debian 13's signed lists
packages=(python3-venv python3-dev g++ util-linux iproute2 debian-archive-keyring ca-certificates)
step "system packages (${packages[*]})"
need=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  apt-get update -qq
  # debconf's notes (no apt-utils, no terminal) are noise on a fresh root; apt's errors still show
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2> >(grep -v '^debconf: ' >&2)
fi
echo "ok"

step "CRIU >= 4 (portable tree in /opt/thaw/criu, from Debian 13 packages, not installed into the system)"
scripts/install-criu.sh /opt/thaw/criu

step "Python environment (.venv) with thaw and its dependencies"
PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
  || { echo "thaw needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
# a .venv from an interrupted run (a python but no pip) or from another python is made anew
if [ -e .venv ] && ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  echo "recreating .venv (it has no working pip)"
  rm -rf .venv
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip_install() {  # quiet, but all of pip's output when it fails
  local out
  out=$(.venv/bin/python -m pip install -q "$@" 2>&1) || { echo "$out" >&2; return 1; }
  [ -z "$out" ] || grep -v -i warning <<<"$out" || true
}
# Debian 12's pip (23.0) did not finish resolving thaw's dependencies in 25 minutes on a fresh root
pip_install --upgrade pip
# torch first, pinned. Which build comes (CPU or CUDA) is up to pip's configuration here: an
# index with CPU wheels (pip.conf, PIP_INDEX_URL) spares the multi-GB CUDA build on CPU hosts.
pip_install "torch==2.13.0" numpy
pip_install -e ".[engine,k8s,test]"
.venv/bin/thaw --help >/dev/null

step "host check"
.venv/bin/thaw doctor
echo "set up in ${SECONDS}s"
