"""On a real node: kubelet, containerd and runc run the agent, the operator and the workers as real pods.

scripts/node-e2e.sh builds what this needs (kubelet and kube-proxy from Debian's source package, the
thaw image and the test images offline) and runs this module with THAW_NODE_E2E=1; it is skipped
otherwise. The path an autoscaler takes, end to end:

1. a worker pod runs thaw's entrypoint, which starts the worker in a sandbox in the pod;
2. a WorkerSnapshot of that pod: the agent (a DaemonSet pod) checkpoints the worker inside its pod;
3. a Deployment whose pods carry thaw.dev/restore-from is scaled 0 -> 3: each replica's entrypoint waits,
   the agent restores the worker INTO the pod (its network namespace, cgroup and root filesystem), and
   the pod turns Ready only after the canary (readiness gate) and its own readiness probe on the pod IP;
4. a Service (ClusterIP, kube-proxy) routes to the restored workers; each worker's process is in its
   pod's cgroup and network namespace (read from /proc);
5. scaled to 0: the restored workers are stopped and their pods, WorkerRestores and processes are gone.

A summary (pods, timings from scale-up to Ready, the placement proof) is written to $THAW_E2E_SUMMARY.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .conftest import DEPLOY, REPO, ControlPlane, wait_for, wait_phase

pytestmark = [pytest.mark.k8s, pytest.mark.criu, pytest.mark.node, pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("THAW_NODE_E2E") != "1",
                                 reason="node: a real kubelet run; scripts/node-e2e.sh runs it (THAW_NODE_E2E=1)")]

NODE = "thaw-node"
NS = "e2e"
IMAGE = os.environ.get("THAW_E2E_IMAGE", "thaw.dev/thaw:0.1.0")
WORKER_IMAGE = "thaw.test/worker:e2e"
SUMMARY: dict[str, Any] = {}


@pytest.fixture(scope="module")
def node(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = Path(os.environ.get("THAW_E2E_NODE_DIR") or tmp_path_factory.mktemp("node"))
    env = {**os.environ, "D": str(d), "KUBECONFIG": str(control_plane.kubeconfig), "NODE": NODE,
           "LABELS": "thaw.dev/pool=gpu", "KUBELET_PORT": str(_free_port()), "PROXY_METRICS_PORT": str(_free_port()),
           "PROXY_HEALTHZ_PORT": str(_free_port())}
    images = [p for p in os.environ.get("THAW_E2E_IMAGES", "").split(":") if p]
    t0 = time.monotonic()
    try:
        subprocess.run(["bash", str(REPO / "scripts" / "start-node.sh"), *images], env=env, check=True,
                       capture_output=True, text=True, timeout=300)
    except subprocess.CalledProcessError as exc:
        subprocess.run(["bash", str(REPO / "scripts" / "start-node.sh"), "--stop"], env=env, check=False)
        pytest.fail(f"the node did not start:\n{exc.stdout}\n{exc.stderr}")
    SUMMARY["node_ready_s"] = round(time.monotonic() - t0, 1)
    # the shared control plane runs without the node lifecycle controller (the other k8s tests' nodes have no
    # kubelet); that controller is what lifts the not-ready taint a node is created with once it reports Ready
    control_plane.core.patch_node(NODE, {"spec": {"taints": None}})
    try:
        yield d
    finally:
        _write_summary()
        subprocess.run(["bash", str(REPO / "scripts" / "start-node.sh"), "--stop"], env=env, check=False,
                       timeout=120)


def _free_port() -> int:
    from .conftest import free_port

    return free_port()


def missing_capabilities(wanted: list[str]) -> list[str]:
    """Capabilities this machine cannot give a container: not in our bounding set (this sandbox lacks
    CAP_SYS_RESOURCE; runc then refuses the whole container with "unable to apply caps")."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    names = {"CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6,
             "SETUID": 7, "SETPCAP": 8, "NET_ADMIN": 12, "IPC_LOCK": 14, "SYS_CHROOT": 18, "SYS_PTRACE": 19,
             "SYS_ADMIN": 21, "SYS_NICE": 23, "SYS_RESOURCE": 24, "SYS_TIME": 25, "CHECKPOINT_RESTORE": 40}
    return [c for c in wanted if libc.prctl(23, names[c], 0, 0, 0) != 1]  # PR_CAPBSET_READ


def overlay(tmp: Path, cp: ControlPlane, node_dir: Path) -> Path:
    """The base, as a user's overlay would adapt it to this node: image, host paths, no NVIDIA runtime."""
    tmp.mkdir(parents=True, exist_ok=True)
    name, tag = IMAGE.rsplit(":", 1)
    state = node_dir / "thaw"
    base_agent = yaml.safe_load((DEPLOY / "base" / "agent" / "daemonset.yaml").read_text())
    caps = base_agent["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
    lacking = missing_capabilities(caps)
    SUMMARY["agent_capabilities_this_machine_cannot_grant"] = lacking
    patches = [
        {"target": {"kind": "DaemonSet", "name": "thaw-agent"}, "patch": yaml.safe_dump([
            {"op": "remove", "path": "/spec/template/spec/runtimeClassName"},  # a CPU node: no NVIDIA runtime
            {"op": "replace", "path": "/spec/template/spec/containers/0/securityContext/capabilities/add",
             "value": [c for c in caps if c not in lacking]},
            {"op": "replace", "path": "/spec/template/spec/volumes/0/hostPath/path", "value": str(state / "home")},
            {"op": "replace", "path": "/spec/template/spec/volumes/1",  # one node: a host directory for the store
             "value": {"name": "artifacts", "hostPath": {"path": str(state / "artifacts"), "type": "DirectoryOrCreate"}}},
        ])},
        {"target": {"kind": "PersistentVolumeClaim", "name": "thaw-artifacts"},
         "patch": yaml.safe_dump({"$patch": "delete", "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                  "metadata": {"name": "thaw-artifacts"}})},
        # the API server listens on 127.0.0.1 only: the operator shares the node's network and gets a kubeconfig
        # (the test API server has no ServiceAccount token admission); one replica (a hostNetwork port is per node)
        {"target": {"kind": "Deployment", "name": "thaw-operator"}, "patch": yaml.safe_dump([
            {"op": "replace", "path": "/spec/replicas", "value": 1},
            {"op": "add", "path": "/spec/template/spec/hostNetwork", "value": True},
            {"op": "replace", "path": "/spec/template/spec/containers/0/args",
             "value": ["--kubeconfig=/etc/thaw/kube/config", f"--liveness=http://127.0.0.1:{_free_port()}/healthz",
                       "--verbose"]},
            {"op": "remove", "path": "/spec/template/spec/containers/0/livenessProbe"},
            {"op": "remove", "path": "/spec/template/spec/containers/0/ports"},
            {"op": "add", "path": "/spec/template/spec/volumes/-",
             "value": {"name": "kube", "secret": {"secretName": "thaw-operator-kubeconfig", "defaultMode": 0o440}}},
            {"op": "add", "path": "/spec/template/spec/containers/0/volumeMounts/-",
             "value": {"name": "kube", "mountPath": "/etc/thaw/kube", "readOnly": True}},
        ])},
    ]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY / "base", tmp)],
        "images": [{"name": "ghcr.io/thaw-dev/thaw", "newName": name, "newTag": tag}],
        "configMapGenerator": [{"name": "thaw-settings", "behavior": "merge",
                                "literals": ["THAW_POLL_SECONDS=0.25", "THAW_PEERING="]}],
        "patches": patches,
    }
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return tmp


@pytest.fixture(scope="module")
def installed(control_plane: ControlPlane, node: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """thaw from the real manifests (base + the overlay above): agent DaemonSet and operator as real pods."""
    cp = control_plane
    rendered = subprocess.run([_kubectl(), "kustomize", str(overlay(tmp_path_factory.mktemp("overlay"), cp, node))],
                              check=True, capture_output=True, text=True).stdout
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    first = [o for o in objects if o["kind"] in ("Namespace", "CustomResourceDefinition")]
    cp.apply(first)
    for crd in first:
        if crd["kind"] == "CustomResourceDefinition":
            cp.kubectl("wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}", "--timeout=60s")
    token = secrets.token_hex(16)
    operator_kubeconfig = yaml.safe_load(cp.operator_kubeconfig.read_text())
    cp.apply([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "thaw-agent-token", "namespace": "thaw-system"},
         "stringData": {"tokens": f"operator:{token}"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "thaw-operator-kubeconfig", "namespace": "thaw-system"},
         "stringData": {"config": yaml.safe_dump(operator_kubeconfig)}},
    ])
    cp.apply([o for o in objects if o not in first])
    t0 = time.monotonic()
    for label in ("thaw-agent", "thaw-operator"):
        try:
            wait_for(lambda label=label: _ready_pods(cp, "thaw-system", f"app.kubernetes.io/name={label}"),
                     timeout=180, what=f"the {label} pod to be Ready", every=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{diagnose(cp, node, 'thaw-system')}") from None
    SUMMARY["system_pods_ready_s"] = round(time.monotonic() - t0, 1)
    SUMMARY["system_pods"] = [_pod_line(p) for p in cp.core.list_namespaced_pod("thaw-system").items]
    agent_pod = _ready_pods(cp, "thaw-system", "app.kubernetes.io/name=thaw-agent")[0]
    return {"token": token, "agent": f"http://{agent_pod.status.pod_ip}:7070"}


def diagnose(cp: ControlPlane, node_dir: Path, namespace: str) -> str:
    """What a person would look at: the pods, their description and logs, the kubelet's last errors."""
    out = [cp.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout,
           cp.kubectl("-n", namespace, "describe", "pods", check=False).stdout[-6000:]]
    out.append(cp.kubectl("-n", namespace, "get", "workerrestores,workersnapshots", "-o", "yaml",
                          check=False).stdout[-5000:])
    # the kubelet's own log files (`kubectl logs` would need the API server to hold a kubelet client certificate)
    for log in sorted(Path("/var/log/pods").glob(f"{namespace}_*/*/*.log")):
        out.append(f"--- {log} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
    kubelet = (node_dir / "kubelet.log").read_text(errors="replace").splitlines()
    out.append("--- kubelet errors ---\n" + "\n".join([line for line in kubelet if line.startswith("E")][-30:]))
    return "\n".join(out)


def _kubectl() -> str:
    from .conftest import KUBECTL

    assert KUBECTL
    return KUBECTL


def _ready_pods(cp: ControlPlane, namespace: str, selector: str) -> list[Any]:
    pods = cp.core.list_namespaced_pod(namespace, label_selector=selector).items
    return [p for p in pods if not p.metadata.deletion_timestamp
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]


def _pod_line(p: Any) -> str:
    return f"{p.metadata.namespace}/{p.metadata.name} {p.status.phase} ip={p.status.pod_ip} node={p.spec.node_name}"


def worker_container(*, root: bool) -> dict[str, Any]:
    """The worker's container: thaw's entrypoint in front of the worker's own command (tests/workers/serve.py)."""
    container: dict[str, Any] = {
        "name": "worker", "image": WORKER_IMAGE, "imagePullPolicy": "Never",
        "command": ["python3", "-m", "thaw.sandbox.entrypoint", "--", "python3", "/opt/thaw-test/serve.py"],
        "env": [{"name": "TEST_TCP_PORT", "value": "8080"}, {"name": "TEST_LOG", "value": "/dev/null"},
                {"name": "THAW_RUN_DIR", "value": "/tmp/thaw"}],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/state", "port": 8080}, "periodSeconds": 1},
        "volumeMounts": [{"name": "podinfo", "mountPath": "/etc/thaw/pod"}],
    }
    if root:  # the snapshot source: its entrypoint makes the worker's sandbox (namespaces need CAP_SYS_ADMIN)
        container["securityContext"] = {"capabilities": {"add": ["SYS_ADMIN"]}}
    else:  # a restore-from replica's entrypoint only waits (or starts cold): no privilege at all
        container["securityContext"] = {"runAsUser": 65532, "runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                        "capabilities": {"drop": ["ALL"]}}
    return container


PODINFO = {"name": "podinfo", "downwardAPI": {"items": [{"path": "annotations",
                                                         "fieldRef": {"fieldPath": "metadata.annotations"}}]}}


def test_restore_into_pods_on_a_real_kubelet(control_plane: ControlPlane, node: Path,
                                             installed: dict[str, Any]) -> None:
    cp = control_plane
    try:
        scenario(cp, installed)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose(cp, node, 'thaw-system')}\n{diagnose(cp, node, NS)}") from None


def scenario(cp: ControlPlane, installed: dict[str, Any]) -> None:
    cp.core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    agent = httpx.Client(base_url=installed["agent"], headers={"Authorization": f"Bearer {installed['token']}"},
                         timeout=10)

    # 1. the worker, cold, in a pod of its own
    cp.core.create_namespaced_pod(NS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "worker-src"},
                                       "spec": {"containers": [worker_container(root=True)], "volumes": [PODINFO]}})
    # it parks at its quiesce point (no server yet), so the pod is Running but not Ready until the snapshot
    wait_for(lambda: cp.core.read_namespaced_pod("worker-src", NS).status.phase == "Running", timeout=120,
             what="the source pod to run", every=0.5)

    # 2. its snapshot, taken inside its pod
    snap = {"apiVersion": "thaw.dev/v1alpha1", "kind": "WorkerSnapshot", "metadata": {"name": "worker-snap"},
            "spec": {"podName": "worker-src"}}
    cp.custom.create_namespaced_custom_object("thaw.dev", "v1alpha1", NS, "workersnapshots", snap)
    snap = wait_phase(cp, NS, "workersnapshots", "worker-snap", ("Ready", "Failed"), timeout=180)
    assert snap["status"]["phase"] == "Ready", snap["status"]
    SUMMARY["snapshot"] = {k: snap["status"].get(k) for k in ("phase", "node", "duration", "timings")}
    SUMMARY["snapshot"]["artifact"] = {k: snap["status"]["artifact"].get(k) for k in ("name", "size", "hasCanary")}
    original = wait_for(lambda: _get(cp, "worker-src", "/state"), timeout=60, what="the original to serve again")

    # 3. the Deployment an autoscaler scales, and its Service
    labels = {"app": "worker"}
    cp.apps.create_namespaced_deployment(NS, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "worker"},
        "spec": {"replicas": 0, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels, "annotations": {"thaw.dev/restore-from": "worker-snap"}},
            "spec": {"readinessGates": [{"conditionType": "thaw.dev/restored"}],
                     "containers": [worker_container(root=False)], "volumes": [PODINFO]}}}})
    svc = cp.core.create_namespaced_service(NS, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "worker"},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]}})
    scaled_at = time.monotonic()
    cp.apps.patch_namespaced_deployment_scale("worker", NS, {"spec": {"replicas": 3}})
    ready_at: dict[str, float] = {}
    seen_ready_before_gate = []

    def all_ready() -> bool:
        for p in cp.core.list_namespaced_pod(NS, label_selector="app=worker").items:
            conds = {c.type: c.status for c in p.status.conditions or []}
            if conds.get("Ready") == "True" and p.metadata.name not in ready_at:
                ready_at[p.metadata.name] = time.monotonic() - scaled_at
                if conds.get("thaw.dev/restored") != "True":
                    seen_ready_before_gate.append(p.metadata.name)
        return len(ready_at) == 3

    wait_for(all_ready, timeout=300, what="3 restored replicas to be Ready", every=0.2)
    assert not seen_ready_before_gate, f"Ready before the canary: {seen_ready_before_gate}"
    pods = cp.core.list_namespaced_pod(NS, label_selector="app=worker").items
    restored = []
    for p in pods:
        ann = p.metadata.annotations or {}
        assert ann.get("thaw.dev/restore-state") == "Restored", (p.metadata.name, ann)
        state = _get(cp, p.metadata.name, "/state")  # at the pod's IP, from its own port
        assert (state["token"], state["digest"], state["outcome"]) == (original["token"], original["digest"],
                                                                      "thawed")
        worker = _agent_worker(agent, ann["thaw.dev/restored-worker"])
        placement = _placement(worker["host_pid"], p.metadata.uid)
        restored.append({"pod": p.metadata.name, "ip": p.status.pod_ip, "ready_after_scale_s": round(
            ready_at[p.metadata.name], 2), "worker": worker["id"], "host_pid": worker["host_pid"],
            "restore_id": state["info"].get("restore_id"), **placement})
    SUMMARY["replicas"] = restored
    SUMMARY["restore_timings"] = {r["metadata"]["name"]: r["status"].get("timings") for r in cp.custom
                                  .list_namespaced_custom_object("thaw.dev", "v1alpha1", NS, "workerrestores")["items"]}

    # 4. through the Service: kube-proxy's ClusterIP spreads requests over the restored workers
    answered = set()
    for _ in range(30):
        answered.add(httpx.get(f"http://{svc.spec.cluster_ip}/state", timeout=5).json()["info"]["restore_id"])
    assert answered <= {r["restore_id"] for r in restored} and answered
    SUMMARY["service"] = {"cluster_ip": svc.spec.cluster_ip, "distinct_workers_in_30_requests": len(answered)}

    # 5. scale to 0: the restored workers stop, their pods and WorkerRestores go
    cp.apps.patch_namespaced_deployment_scale("worker", NS, {"spec": {"replicas": 0}})
    wait_for(lambda: not cp.core.list_namespaced_pod(NS, label_selector="app=worker").items, timeout=120,
             what="the replicas to be gone", every=0.5)
    wait_for(lambda: not cp.custom.list_namespaced_custom_object("thaw.dev", "v1alpha1", NS, "workerrestores")["items"],
             timeout=60, what="their WorkerRestores to be collected", every=0.5)
    for r in restored:
        wait_for(lambda r=r: not os.path.exists(f"/proc/{r['host_pid']}"), timeout=30,
                 what=f"worker process {r['host_pid']} to be gone")
    alive = [w["name"] for w in agent.get("/v1/workers").json() if w["alive"]]
    assert alive == [snap["status"]["worker"]], alive  # only the original, still in its own pod
    SUMMARY["scale_down"] = "replicas, WorkerRestores and restored worker processes gone"
    SUMMARY["passed"] = True


def _get(cp: ControlPlane, pod: str, path: str) -> dict | None:
    ip = cp.core.read_namespaced_pod(pod, NS).status.pod_ip
    try:
        return httpx.get(f"http://{ip}:8080{path}", timeout=5).json() if ip else None
    except httpx.HTTPError:
        return None


def _agent_worker(agent: httpx.Client, name: str) -> dict[str, Any]:
    return next(w for w in agent.get("/v1/workers").json() if w["name"] == name and w["alive"])


def _placement(pid: int, pod_uid: str) -> dict[str, Any]:
    """Where the worker's process is, read from /proc: its cgroups name its pod, its network is its pod's."""
    from thaw.sandbox.pod import find_anchor, pod_uid_in, read_cgroups

    cgroups = read_cgroups(pid)
    assert pod_uid in pod_uid_in(cgroups), f"worker {pid} is not in pod {pod_uid}'s cgroup: {cgroups}"
    anchor = find_anchor(pod_uid)
    net = os.stat(f"/proc/{pid}/ns/net").st_ino
    assert net == os.stat(f"/proc/{anchor.pid}/ns/net").st_ino, "worker not in its pod's network namespace"
    return {"cgroup": cgroups.get("memory", cgroups.get("", "")), "netns": net, "entrypoint_pid": anchor.pid,
            "root_is_the_pods": os.stat(f"/proc/{pid}/root/opt/thaw-test/serve.py").st_ino
            == os.stat(f"/proc/{anchor.pid}/root/opt/thaw-test/serve.py").st_ino}


def _write_summary() -> None:
    path = os.environ.get("THAW_E2E_SUMMARY")
    if path:
        Path(path).write_text(json.dumps(SUMMARY, indent=2, default=str) + "\n")

