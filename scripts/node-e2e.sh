#!/usr/bin/env bash
# The real-node end-to-end run (tests/k8s/test_node.py): a real kubelet with containerd and runc, the agent
# DaemonSet and the operator as real pods from deploy/kubernetes, workers restored into the pods of a
# Deployment scaled 0 -> 3 behind a Service. Everything is built here, offline, and cached:
#   - kube-apiserver, -controller-manager, -scheduler, kubelet, kube-proxy from Debian's `kubernetes` source
#     package (scripts/build-kube-testbin.sh; /var/cache/k8s-testbin)
#   - containerd, runc, CNI plugins, mmdebstrap from Debian's archive (apt)
#   - thaw's image (deploy/image/build.sh; /var/cache/thaw-image) and two test images on its layers: a pause
#     image and the test worker (tests/workers/serve.py)
# Writes the summary (pods, timings from scale-up to Ready, cgroup and network placement) to
# ${THAW_E2E_SUMMARY:-deploy/kubernetes/e2e/node-e2e.json} and the pytest log next to it.
#
#   sudo scripts/node-e2e.sh            (as root; about 3 minutes when everything is cached)
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need=(); for c in containerd runc mmdebstrap iptables conntrack; do command -v $c >/dev/null || need+=("$c"); done
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi
WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy" \
  scripts/build-kube-testbin.sh
bash deploy/image/build.sh /var/cache/thaw-image
I=/var/cache/thaw-image
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
mkdir -p "$W/w/opt/thaw-test" && cp tests/workers/serve.py "$W/w/opt/thaw-test/"
tar --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$W/w" -cf "$W/worker.tar" .
python3 deploy/image/archive.py "$W/test-images.tar" \
  --image thaw.test/pause:e2e "$(cat $I/base-layer)" --cmd '["/usr/bin/python3", "-c", "import signal; signal.pause()"]' \
  --image thaw.test/worker:e2e "$(cat $I/base-layer),$(cat $I/thaw-layer),$W/worker.tar" \
  --env PATH=/usr/local/bin:/usr/bin:/bin --env "PYTHONPATH=/opt/thaw/lib/python3.11/site-packages" \
  --env PYTHONUNBUFFERED=1 --cmd '["python3", "/opt/thaw-test/serve.py"]'
out=${THAW_E2E_SUMMARY:-deploy/kubernetes/e2e/node-e2e.json}
mkdir -p "$(dirname "$out")"
THAW_NODE_E2E=1 THAW_E2E_SUMMARY="$out" THAW_E2E_IMAGE="thaw.dev/thaw:$(cat $I/version)" \
THAW_E2E_IMAGES="$I/thaw-image.tar:$W/test-images.tar" \
  .venv/bin/pytest tests/k8s/test_node.py -v -p no:cacheprovider "$@" 2>&1 | tee "${out%.json}.log"
exit "${PIPESTATUS[0]}"
