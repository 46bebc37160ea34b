"""A real Kubernetes control plane, GPU-node stand-ins, thaw agents and the operator, for the k8s tests.

Everything runs on loopback and is started here, once per session:

* ``control_plane``: etcd + kube-apiserver + controller-manager + scheduler from
  scripts/start-control-plane.sh (binaries from scripts/build-kube-testbin.sh; the tests are
  skipped, saying so, when they are missing). There is no kubelet: tests patch pod status
  the way a kubelet would.
* ``thaw_installed``: the rendered base (kubectl kustomize deploy/kubernetes/base) applied
  for real: CRDs, RBAC, DaemonSet, operator Deployment, NetworkPolicies.
* ``gpu_nodes``: Node objects node-a and node-b, labelled and tainted like a GPU pool.
* ``agents``: one real ``thaw agent serve`` per node, each in its own mount namespace so that
  both see "their" node-local home at the same path (as two machines would), sharing one
  artifact directory, listening on 127.0.0.2 and 127.0.0.3. Nodes point at them with the
  thaw.dev/agent-url annotation. Workers run under a seccomp filter, as pods do.
* ``operator``: ``python -m thaw.cli.operator run`` as a separate process, authenticated as the
  thaw-operator ServiceAccount, so that it has the base's RBAC and nothing more; one per module
  (``start_operator`` starts more, e.g. replicas with leader election).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"
TESTBIN = Path(os.environ.get("THAW_KUBE_TESTBIN", "/var/cache/k8s-testbin"))
#: a seccomp denylist standing in for the RuntimeDefault profile a workload pod runs under
WORKER_SECCOMP = Path(__file__).parent / "worker-seccomp.json"
WORKER = REPO / "tests" / "workers" / "serve.py"
OPERATOR_SA = "system:serviceaccount:thaw-system:thaw-operator"


def _kubectl() -> str | None:
    """A kubectl with kustomize v5: the machine's, else the one scripts/install-kubectl.sh put next to the binaries."""
    for candidate in (shutil.which("kubectl"), str(TESTBIN / "kubectl")):
        if candidate and os.access(candidate, os.X_OK):
            out = subprocess.run([candidate, "version", "--client"], capture_output=True, text=True, check=False).stdout
            if "Kustomize Version: v5" in out:
                return candidate
    return None


KUBECTL = _kubectl()


def kubectl_missing() -> str | None:
    return None if KUBECTL else ("needs kubectl with kustomize v5 (on PATH, or in THAW_KUBE_TESTBIN: "
                                 "scripts/install-kubectl.sh or scripts/build-kube-testbin.sh installs one)")


def testbin_missing() -> str | None:
    missing = [b for b in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
               if not os.access(TESTBIN / b, os.X_OK)]
    if missing:
        return (f"k8s: {', '.join(missing)} not in {TESTBIN} (build them with scripts/build-kube-testbin.sh, "
                "or point THAW_KUBE_TESTBIN at them)")
    if not shutil.which("etcd"):
        return "k8s: needs etcd on PATH (apt-get install etcd-server; scripts/build-kube-testbin.sh installs it)"
    if not shutil.which("openssl"):
        return "k8s: needs openssl"
    return kubectl_missing()


def wait_for(check: Callable[[], Any], *, timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fail saying ``what`` did not happen (and the last value)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run([KUBECTL, "kustomize", str(path)], check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


# --- the control plane ---------------------------------------------------------------------------------------

@dataclass
class ControlPlane:
    dir: Path
    kubeconfig: Path
    operator_kubeconfig: Path
    api: Any = None

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        # a fresh discovery cache per call: kubectl would otherwise not notice CRDs (and their categories)
        # installed after its first call
        with tempfile.TemporaryDirectory() as cache:
            proc = subprocess.run([KUBECTL, f"--kubeconfig={self.kubeconfig}", f"--cache-dir={cache}", *args],
                                  input=input, text=True, capture_output=True, timeout=60, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def apply(self, objects: list[dict[str, Any]] | dict[str, Any], *args: str) -> subprocess.CompletedProcess:
        docs = objects if isinstance(objects, list) else [objects]
        return self.kubectl("apply", "-f", "-", *args, input=yaml.safe_dump_all(docs))

    @property
    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    @property
    def apps(self) -> Any:
        from kubernetes import client

        return client.AppsV1Api(self.api)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    if reason := testbin_missing():
        pytest.skip(reason)
    from kubernetes import config

    d = tmp_path_factory.mktemp("control-plane")
    operator_token = secrets.token_hex(16)
    tokens = d.parent / f"{d.name}-extra-tokens.csv"
    groups = "system:serviceaccounts,system:serviceaccounts:thaw-system,system:authenticated"
    tokens.write_text(f'{operator_token},{OPERATOR_SA},thaw-operator-uid,"{groups}"\n')
    env = {**os.environ, "D": str(d), "BIN": str(TESTBIN), "PORT": str(free_port()), "EPORT": str(free_port()),
           "PEER_PORT": str(free_port()), "WITH": "controller-manager scheduler", "EXTRA_TOKENS": str(tokens),
           "KCM_ARGS": "--controllers=*,-nodelifecycle", "KUBECTL": KUBECTL}
    try:
        subprocess.run(["bash", str(REPO / "scripts" / "start-control-plane.sh")], env=env, check=True,
                       capture_output=True, text=True, timeout=180)
    except subprocess.CalledProcessError as exc:
        _stop_control_plane(d)
        pytest.fail(f"control plane did not start:\n{exc.stdout}\n{exc.stderr}")
    admin = yaml.safe_load((d / "kubeconfig").read_text())
    op = json.loads(json.dumps(admin))
    op["users"] = [{"name": "thaw-operator", "user": {"token": operator_token}}]
    op["contexts"][0]["context"]["user"] = "thaw-operator"
    (d / "operator.kubeconfig").write_text(yaml.safe_dump(op))
    cp = ControlPlane(d, d / "kubeconfig", d / "operator.kubeconfig")
    cp.api = config.new_client_from_config(config_file=str(cp.kubeconfig))
    wait_for(lambda: _exists(lambda: cp.core.read_namespaced_service_account("default", "default")), timeout=60,
             what="the controller-manager to create the default ServiceAccount")
    try:
        yield cp
    finally:
        cp.api.close()
        _stop_control_plane(d)


def _stop_control_plane(d: Path) -> None:
    pids = []
    for pidfile in d.glob("*.pid"):
        try:
            pids.append(int(pidfile.read_text()))
            os.kill(pids[-1], signal.SIGTERM)
        except (ValueError, ProcessLookupError):
            pass
    deadline = time.monotonic() + 15
    for pid in pids:
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours: reap it
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def _exists(read: Callable[[], Any]) -> bool:
    from kubernetes.client import ApiException

    try:
        read()
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


@pytest.fixture(scope="session")
def thaw_installed(control_plane: ControlPlane) -> list[dict[str, Any]]:
    """The base, applied for real, plus what a cluster provides or an installer creates by hand: the token
    Secret, the NVIDIA RuntimeClass, and an RWX volume for the artifact claim (NFS; nothing mounts it here)."""
    objects = render(DEPLOY / "base")
    control_plane.apply([o for o in objects if o["kind"] in ("Namespace", "CustomResourceDefinition")])
    for crd in ("workersnapshots.thaw.dev", "workerrestores.thaw.dev"):
        control_plane.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    control_plane.apply([
        {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "nvidia"}, "handler": "nvidia"},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "thaw-agent-token", "namespace": "thaw-system"},
         "stringData": {"tokens": f"operator:{secrets.token_hex(32)}"}},
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "thaw-artifacts-nfs"},
         "spec": {"capacity": {"storage": "4Ti"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                  "persistentVolumeReclaimPolicy": "Retain", "nfs": {"server": "127.0.0.1", "path": "/thaw"}}},
    ])
    control_plane.apply(objects)
    return objects


# --- nodes -----------------------------------------------------------------------------------------------------

GPU_POOL_TAINTS = [{"key": "thaw.dev/pool", "value": "gpu", "effect": "NoSchedule"}]


def make_node(cp: ControlPlane, name: str, *, labels: dict[str, str], taints: list[dict[str, str]],
              annotations: dict[str, str] | None = None, gpus: int = 8) -> None:
    """A Node object standing for a machine (no kubelet behind it): Ready, with capacity, as the kubelet would report."""
    body = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels},
                         "annotations": annotations or {}}}
    cp.core.create_node(body)
    # the TaintNodesByCondition admission adds node.kubernetes.io/not-ready at creation; a kubelet's first
    # Ready status would lift it, so with no kubelet the test sets the taints it means
    cp.core.patch_node(name, {"spec": {"taints": taints or None}})
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": str(gpus)}
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    cp.core.patch_node_status(name, {"status": {
        "capacity": resources, "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test stand-in",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}]}})


@dataclass
class Agent:
    node: str
    url: str
    pid: int
    home: Path
    log: Path
    client: Any = None

    def stop(self) -> None:
        self.stop_workers()
        _terminate(self.pid)
        self.client.close()

    def stop_workers(self) -> None:
        from thaw.errors import ThawError

        try:
            for w in self.client.workers():
                if w.alive:
                    self.client.stop(w.id)
        except ThawError as exc:  # the agent may be gone already (AgentUnavailable)
            print(f"could not stop the workers on {self.node}: {exc}")


@dataclass
class Agents:
    token: str
    token_file: Path
    store: Path
    base: Path
    mountpoint: Path
    port: int
    by_node: dict[str, Agent] = field(default_factory=dict)

    def __getitem__(self, node: str) -> Agent:
        return self.by_node[node]

    def start(self, node: str, ip: str, *, seccomp: Path | None = None) -> Agent:
        """``thaw agent serve`` for ``node`` on ``ip``, in a mount namespace of its own in which this node's
        home is mounted at the path every node shares (as on separate machines); ``seccomp``: under that profile."""
        from thaw.api.client import AgentClient

        home = self.base / node
        home.mkdir()
        log = self.base / f"{node}.log"
        wrap = f"{sys.executable} {Path(__file__).parent / 'seccomp_exec.py'} {seccomp} -- " if seccomp else ""
        script = (f"mount --bind {home} {self.mountpoint} && exec {wrap}{sys.executable} -m thaw agent serve "
                  f"--no-socket --listen {ip}:{self.port} --token-file {self.token_file} --home {self.mountpoint} "
                  f"--store {self.store} --node {node}")
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "NODE_NAME": node}
        with open(log, "wb") as out:
            proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://{ip}:{self.port}"
        agent = Agent(node, url, proc.pid, home, log, AgentClient(base_url=url, token=self.token, timeout=10))
        self.by_node[node] = agent
        wait_for(lambda: proc.poll() is not None or agent.client.healthy(), timeout=30, what=f"agent on {node}")
        assert proc.poll() is None, f"agent on {node} exited:\n{log.read_text()}"
        return agent


@pytest.fixture(scope="session")
def agents(control_plane: ControlPlane, thaw_installed: list, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agents]:
    """Two GPU-pool nodes, each with a real thaw agent, sharing one artifact store.

    Tests that use it carry the ``criu`` marker: the suite's conftest skips them without root or CRIU >= 4.
    """
    base = tmp_path_factory.mktemp("nodes")
    store, mountpoint = base / "store", base / "home"
    store.mkdir()
    mountpoint.mkdir()
    token = secrets.token_hex(32)
    token_file = base / "tokens"
    token_file.write_text(f"operator:{token}\n")
    port = free_port("127.0.0.2")
    group = Agents(token=token, token_file=token_file, store=store, base=base, mountpoint=mountpoint, port=port)
    try:
        for node, ip, product in (("node-a", "127.0.0.2", "NVIDIA-H200"), ("node-b", "127.0.0.3", "NVIDIA-H200")):
            agent = group.start(node, ip)
            make_node(control_plane, node, labels={"thaw.dev/pool": "gpu", "nvidia.com/gpu.product": product},
                      taints=GPU_POOL_TAINTS, annotations={"thaw.dev/agent-url": agent.url})
        # a GPU node whose agent is not running (e.g. its pod is crash-looping)
        make_node(control_plane, "node-c", labels={"thaw.dev/pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-H200"},
                  taints=GPU_POOL_TAINTS)
        yield group
    finally:
        for agent in group.by_node.values():
            agent.stop()


def _terminate(pid: int, grace: float = 15.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        _alive(pid)


@dataclass
class Operator:
    pid: int
    log: Path

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        _terminate(self.pid)

    def kill(self) -> None:
        """SIGKILL: no chance to hand anything over (kopf's peering record stays until it expires)."""
        os.kill(self.pid, signal.SIGKILL)
        wait_for(lambda: not _alive(self.pid), timeout=10, what=f"operator {self.pid} to die")


def start_operator(cp: ControlPlane, agents: Agents, log: Path, *args: str, env: dict[str, str] | None = None) -> Operator:
    """``python -m thaw.cli.operator run`` (plus ``args``) as the thaw-operator ServiceAccount, once its liveness
    endpoint answers."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "thaw.cli.operator", "run", "--kubeconfig", str(cp.operator_kubeconfig),
           "--poll", "0.25", "--agent-token-file", str(agents.token_file), "--agent-namespace", "thaw-system",
           "--liveness", f"http://127.0.0.1:{port}/healthz", "--verbose",
           "--agent-url-annotation", *args]  # these agents are processes, not DaemonSet pods: their Nodes name them
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def live() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the operator exited ({proc.returncode}):\n{log.read_text()}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(live, timeout=60, what="the operator's liveness endpoint")
    except BaseException:
        _terminate(proc.pid)
        raise
    return Operator(proc.pid, log)


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane, agents: Agents, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """The operator as its own process, standalone, as the thaw-operator ServiceAccount (the base's RBAC, nothing
    more). Per module: a standalone operator ignores leader election, so test_peering.py's replicas must not
    share the cluster with one."""
    op = start_operator(control_plane, agents, tmp_path_factory.mktemp("operator") / "operator.log")
    try:
        yield op
    finally:
        op.stop()


# --- per-test helpers ------------------------------------------------------------------------------------------

@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    control_plane.core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    control_plane.core.delete_namespace(name)


def launch_worker(agent: Agent, name: str, tmp: Path, **env: str) -> Any:
    """Start tests/workers/serve.py through the node's agent and wait until it parks at its quiesce point.

    The worker runs under a seccomp filter, as a pod's container does (RuntimeDefault): CRIU must suspend
    it to dump the worker and put it back on restore, which only an agent without a filter of its own can.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, str(Path(__file__).parent / "seccomp_exec.py"), str(WORKER_SECCOMP), "--",
            sys.executable, str(WORKER)]
    agent.client.launch(name, argv, env={"PYTHONPATH": str(REPO / "src"), **env}, cwd=str(tmp))
    return wait_for(lambda: (w := agent.client.worker(name)).parked and w, timeout=60,
                    what=f"worker {name} to park on {agent.node}")


def worker_pod(cp: ControlPlane, namespace: str, name: str, *, node: str, worker: str) -> dict[str, Any]:
    """The Pod that stands for a worker: bound to its node and, as its kubelet would report, Running."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "annotations": {"thaw.dev/worker": worker}},
           "spec": {"nodeName": node, "containers": [{"name": "worker", "image": "example/worker:1"}],
                    "tolerations": [{"key": "thaw.dev/pool", "operator": "Exists", "effect": "NoSchedule"}]}}
    cp.core.create_namespaced_pod(namespace, pod)
    mark_running(cp, namespace, name)
    return pod


def mark_running(cp: ControlPlane, namespace: str, name: str) -> None:
    """What a kubelet would do once the pod's containers started."""
    cp.core.patch_namespaced_pod_status(name, namespace, {"status": {"phase": "Running", "podIP": "10.0.0.9"}})


def get_object(cp: ControlPlane, namespace: str, plural: str, name: str) -> dict[str, Any]:
    return cp.custom.get_namespaced_custom_object("thaw.dev", "v1alpha1", namespace, plural, name)


def wait_phase(cp: ControlPlane, namespace: str, plural: str, name: str, phases: tuple[str, ...], *,
               timeout: float = 120, operator: Operator | None = None) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        obj = get_object(cp, namespace, plural, name)
        return obj if (obj.get("status") or {}).get("phase") in phases else None

    try:
        return wait_for(done, timeout=timeout, what=f"{plural}/{name} to reach {'/'.join(phases)}", every=0.2)
    except AssertionError as exc:
        obj = get_object(cp, namespace, plural, name)
        extra = f"\n--- operator log ---\n{operator.tail()}" if operator else ""
        raise AssertionError(f"{exc}\nobject status: {json.dumps(obj.get('status'), indent=1)}{extra}") from None


def events_for(cp: ControlPlane, namespace: str, name: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events recorded on the object ``name`` in ``namespace``."""
    events = cp.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return [(e.type, e.reason, e.message) for e in events]
