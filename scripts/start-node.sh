#!/usr/bin/env bash
# Start a real Kubernetes node on this machine, for tests: containerd and runc (Debian's packages), the CNI
# bridge plugin (Debian's containernetworking-plugins), a kubelet and a kube-proxy (built from Debian's
# `kubernetes` source package by scripts/build-kube-testbin.sh), against the API server of
# scripts/start-control-plane.sh. Everything stays on this machine: pods get addresses on a bridge of
# their own (thaw0, 10.88.7.0/24), nothing is pulled from a registry (images come from `ctr image import`).
#
#   usage: D=/tmp/thaw-node KUBECONFIG=... [NODE=thaw-node] [LABELS=k=v,...] scripts/start-node.sh IMAGE.tar...
#   stop:  D=/tmp/thaw-node scripts/start-node.sh --stop
#
# It changes the machine while it runs, and --stop undoes it: kubelet sets four kernel sysctls
# (vm.overcommit_memory, vm.panic_on_oom, kernel.panic, kernel.panic_on_oops; saved first, restored on
# --stop), kube-proxy writes iptables rules (removed by `kube-proxy --cleanup`), and the bridge thaw0 is made.
# Cgroups: the kubelet's cgroupfs driver, cgroup v1 or v2, whichever this machine mounts at /sys/fs/cgroup.
set -euo pipefail
D=${D:-/tmp/thaw-node}; BIN=${BIN:-/var/cache/k8s-testbin}; NODE=${NODE:-thaw-node}
SYSCTLS="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops"
if [ "${1:-}" = --stop ]; then
  for p in kube-proxy kubelet; do [ -f "$D/$p.pid" ] && kill "$(cat "$D/$p.pid")" 2>/dev/null || true; done
  sleep 1
  # the pods' containers go with containerd's shims: stop every container first, then containerd
  if [ -S "$D/containerd.sock" ]; then
    for t in $(ctr -a "$D/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr -a "$D/containerd.sock" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
    done
    sleep 1
  fi
  [ -f "$D/containerd.pid" ] && kill "$(cat "$D/containerd.pid")" 2>/dev/null || true
  "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  [ -f "$D/sysctls" ] && while read -r k v; do sysctl -qw "$k=$v" || true; done < "$D/sysctls"
  ip link del thaw0 2>/dev/null || true
  # mounts the kubelet and containerd leave (volumes, shm, rootfs) must go before the directory can
  grep -o " $D/[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  exit 0
fi
for b in kubelet kube-proxy; do [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: WHAT='cmd/kubelet cmd/kube-proxy' scripts/build-kube-testbin.sh" >&2; exit 2; }; done
for c in containerd runc ctr; do command -v $c >/dev/null || { echo "missing $c: apt-get install containerd runc" >&2; exit 2; }; done
[ -x /usr/lib/cni/bridge ] || { echo "missing CNI plugins: apt-get install containernetworking-plugins" >&2; exit 2; }
: "${KUBECONFIG:?set KUBECONFIG to the admin kubeconfig of the control plane}"
mkdir -p "$D"/{containerd,cni/net.d,cni/ipam,kubelet}
: > "$D/sysctls"; for k in $SYSCTLS; do echo "$k $(sysctl -n "$k")" >> "$D/sysctls"; done

cat > "$D/containerd.toml" <<EOF
version = 2
root = "$D/containerd/root"
state = "$D/containerd/state"
[grpc]
  address = "$D/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${PAUSE_IMAGE:-thaw.test/pause:e2e}"
  # a container may not lower its oom_score_adj below containerd's own (the notes' kubelet needed it here)
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$D/cni/net.d"
EOF
cat > "$D/cni/net.d/10-thaw.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "thaw-e2e", "plugins": [
  {"type": "bridge", "bridge": "thaw0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$D/cni/ipam", "ranges": [[{"subnet": "10.88.7.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
# the pods' bridge, made now so that the node has an address of its own that is not loopback (the kubelet
# refuses 127.0.0.1 as node IP); the CNI bridge plugin takes it over as the pods' gateway
ip link show thaw0 >/dev/null 2>&1 || { ip link add thaw0 type bridge && ip addr add 10.88.7.1/24 dev thaw0; }
ip link set thaw0 up
containerd --config "$D/containerd.toml" > "$D/containerd.log" 2>&1 &
echo $! > "$D/containerd.pid"
for i in $(seq 1 100); do ctr -a "$D/containerd.sock" version >/dev/null 2>&1 && break; sleep 0.1; done
for image in "$@"; do ctr -a "$D/containerd.sock" -n k8s.io images import --no-unpack=false "$image" >/dev/null; done

"$BIN/kubelet" --kubeconfig="$KUBECONFIG" --container-runtime=remote \
  --container-runtime-endpoint="unix://$D/containerd.sock" --image-service-endpoint="unix://$D/containerd.sock" \
  --root-dir="$D/kubelet" --cert-dir="$D/kubelet/pki" --hostname-override="$NODE" --node-ip=10.88.7.1 \
  --address=127.0.0.1 --port="${KUBELET_PORT:-10250}" --healthz-port=0 --read-only-port=0 \
  --authorization-mode=AlwaysAllow --anonymous-auth=false \
  --cgroup-driver=cgroupfs --fail-swap-on=false --eviction-hard= --image-gc-high-threshold=100 \
  --node-labels="${LABELS:-}" --sync-frequency=5s --node-status-update-frequency=5s \
  --resolv-conf=/etc/resolv.conf --volume-plugin-dir="$D/kubelet/volume-plugins" --v="${KUBELET_V:-1}" \
  > "$D/kubelet.log" 2>&1 &
echo $! > "$D/kubelet.pid"
"$BIN/kube-proxy" --kubeconfig="$KUBECONFIG" --hostname-override="$NODE" --proxy-mode=iptables \
  --cluster-cidr=10.88.7.0/24 --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 \
  --conntrack-tcp-timeout-close-wait=0 --metrics-bind-address="127.0.0.1:${PROXY_METRICS_PORT:-10249}" \
  --healthz-bind-address="127.0.0.1:${PROXY_HEALTHZ_PORT:-10256}" \
  > "$D/kube-proxy.log" 2>&1 &
echo $! > "$D/kube-proxy.pid"
K=(${KUBECTL:-kubectl} --kubeconfig="$KUBECONFIG")
READY_PATH='{.status.conditions[?(@.type=="Ready")].status}'
node_ready() { [ "$("${K[@]}" get node "$NODE" -o jsonpath="$READY_PATH" 2>/dev/null)" = True ]; }
for i in $(seq 1 120); do node_ready && break; sleep 0.5; done
node_ready || { echo "node $NODE never became Ready" >&2; tail -30 "$D/kubelet.log" >&2; exit 1; }
kill -0 "$(cat "$D/kube-proxy.pid")" 2>/dev/null || { echo "kube-proxy exited:" >&2; tail -5 "$D/kube-proxy.log" >&2; exit 1; }
"${K[@]}" get node "$NODE" -o wide
