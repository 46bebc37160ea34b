"""The manifests in deploy/kubernetes: they render, their security settings cannot silently regress,
and a real API server accepts them (and the CRDs' validation rejects bad objects).

The static half needs only kubectl (kustomize); the rest runs against the test control plane.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from thaw.k8s import resources

from .conftest import DEPLOY, ControlPlane, kubectl_missing, make_node, render, wait_for

OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").exists())
BUILDS = ["base", *(f"overlays/{o}" for o in OVERLAYS)]

#: the agent's capabilities, each justified in base/agent/daemonset.yaml; adding one must be a decision
AGENT_CAPABILITIES = {"SYS_ADMIN", "SYS_PTRACE", "CHECKPOINT_RESTORE", "NET_ADMIN", "SYS_RESOURCE", "IPC_LOCK",
                      "SYS_CHROOT", "SYS_NICE", "SYS_TIME", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "CHOWN", "FSETID",
                      "SETUID", "SETGID", "SETPCAP", "KILL"}

#: every (apiGroup, resource, verb) the operator may use, and nothing else
OPERATOR_GRANTS = {
    *(("thaw.dev", r, v) for r in ("workersnapshots", "workerrestores") for v in ("get", "list", "watch", "patch")),
    ("thaw.dev", "workerrestores", "create"),
    *(("thaw.dev", f"{r}/status", v) for r in ("workersnapshots", "workerrestores") for v in ("get", "patch")),
    *(("", "pods", v) for v in ("get", "list", "watch", "patch")),
    ("", "pods/status", "patch"),
    *((g, "events", v) for g in ("", "events.k8s.io") for v in ("create", "patch")),
    *(("", "nodes", v) for v in ("get", "list", "watch")),
    *(("kopf.dev", "clusterkopfpeerings", v) for v in ("get", "list", "watch", "patch")),  # leader election
}


@pytest.fixture(scope="module", params=BUILDS)
def build(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    if reason := kubectl_missing():
        pytest.skip(reason)
    return request.param, render(DEPLOY / request.param)


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(o["metadata"]["name"], o["spec"]["template"]["spec"])
            for o in objects if o["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job")]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


# --- static: what every build must keep ------------------------------------------------------------------------

def test_every_build_renders_the_whole_system(build: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = build
    kinds = {o["kind"] for o in objects}
    assert {"CustomResourceDefinition", "DaemonSet", "Deployment", "NetworkPolicy", "ClusterRole"} <= kinds
    assert {o["metadata"]["name"] for o in by_kind(objects, "CustomResourceDefinition")} == {
        f"{resources.SNAPSHOTS}.{resources.GROUP}", f"{resources.RESTORES}.{resources.GROUP}",
        "clusterkopfpeerings.kopf.dev"}  # the operator replicas' leader election


def test_no_privileged_container_and_read_only_roots_everywhere(build: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = build
    for owner, spec in pod_specs(objects):
        for c in containers(spec):
            sc = c.get("securityContext") or {}
            assert sc.get("privileged") in (None, False), f"{owner}/{c['name']} is privileged"
            assert sc.get("readOnlyRootFilesystem") is True, f"{owner}/{c['name']} has a writable root"
            assert "ALL" in (sc.get("capabilities") or {}).get("drop", []), f"{owner}/{c['name']} keeps default caps"
            seccomp = sc.get("seccompProfile") or (spec.get("securityContext") or {}).get("seccompProfile")
            assert seccomp, f"{owner}/{c['name']} has no explicit seccomp profile"


def test_only_the_agent_touches_the_host(build: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = build
    for owner, spec in pod_specs(objects):
        if owner == "thaw-agent":
            continue
        assert not any(spec.get(k) for k in ("hostPID", "hostNetwork", "hostIPC")), owner
        assert not [v for v in spec.get("volumes", []) if "hostPath" in v], owner
        for c in containers(spec):
            sc = c.get("securityContext") or {}
            assert not (sc.get("capabilities") or {}).get("add"), f"{owner}/{c['name']} adds capabilities"
            assert sc.get("allowPrivilegeEscalation") is False, f"{owner}/{c['name']}"
            assert (sc.get("seccompProfile") or spec["securityContext"]["seccompProfile"])["type"] == "RuntimeDefault"
        assert (spec.get("securityContext") or {}).get("runAsNonRoot") is True, owner


def test_the_agents_privileges_are_exactly_the_documented_ones(build: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = build
    ds = one(objects, "DaemonSet", "thaw-agent")
    spec = ds["spec"]["template"]["spec"]
    (agent,) = [c for c in spec["containers"] if c["name"] == "agent"]
    sc = agent["securityContext"]
    assert set(sc["capabilities"]["add"]) == AGENT_CAPABILITIES
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert spec["hostPID"] is True and not spec.get("hostNetwork") and not spec.get("hostIPC")
    # unconfined seccomp is forced by CRIU (see the DaemonSet's comment); everything else stays confined
    assert sc["seccompProfile"] == {"type": "Unconfined"}
    host_paths = {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    # thaw's own directory, and the cgroup tree (workers restored into pods are started in the pod's cgroup)
    assert host_paths == {"/var/lib/thaw", "/sys/fs/cgroup"}, "the agent may write only these host paths"
    assert spec["automountServiceAccountToken"] is False
    sa = one(objects, "ServiceAccount", spec["serviceAccountName"])
    assert sa["automountServiceAccountToken"] is False
    assert not [b for b in [*by_kind(objects, "RoleBinding"), *by_kind(objects, "ClusterRoleBinding")]
                if any(s["name"] == "thaw-agent" for s in b["subjects"])], "the agent must hold no RBAC"
    # only on the labelled, tainted GPU pool
    assert spec["nodeSelector"] == {"thaw.dev/pool": "gpu"}
    assert {"key": "thaw.dev/pool", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in spec["tolerations"]
    assert "limits" not in agent["resources"], "a memory limit would OOM-kill restored workers"
    assert ds["spec"]["updateStrategy"]["type"] == "OnDelete"


def test_operator_rbac_is_exactly_what_it_touches(build: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = build
    grants = set()
    for role in by_kind(objects, "ClusterRole") + by_kind(objects, "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], role["metadata"]["name"]
            grants |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert grants == OPERATOR_GRANTS
    assert not {g for g in grants if g[1] in ("secrets", "configmaps")}
    assert not {g for g in grants if g[1] == "pods" and g[2] in ("create", "delete", "update")}


def test_network_policies_fence_agent_and_operator(build: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = build
    agent = one(objects, "NetworkPolicy", "thaw-agent")
    assert agent["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = agent["spec"]["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 7070}]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "thaw-operator"}}} in ingress["from"]
    operator = one(objects, "NetworkPolicy", "thaw-operator")
    assert operator["spec"]["ingress"] == [] and operator["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_settings_come_from_the_one_configmap(build: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = build
    (settings,) = [c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"].startswith("thaw-settings-")]
    for owner, spec in pod_specs(objects):
        for c in containers(spec):
            for env in c.get("env", []):
                ref = (env.get("valueFrom") or {}).get("configMapKeyRef")
                if ref:
                    assert ref["name"] == settings["metadata"]["name"], f"{owner}: {ref}"
                    assert ref["key"] in settings["data"], f"{owner} reads {ref['key']}, which the ConfigMap lacks"
    images = {c["image"] for _, spec in pod_specs(objects) for c in containers(spec)}
    assert len(images) == 1, images


def test_overlays_change_what_they_say() -> None:
    if reason := kubectl_missing():
        pytest.skip(reason)
    assert set(OVERLAYS) == {"hardened", "s3"}  # a new overlay needs its own assertions here
    hardened = render(DEPLOY / "overlays" / "hardened")
    assert not [b for b in by_kind(hardened, "ClusterRoleBinding") if b["roleRef"]["name"] == "thaw-operator"]
    bindings = {(b["metadata"]["namespace"], b["roleRef"]["name"]) for b in by_kind(hardened, "RoleBinding")}
    assert bindings == {("ml", "thaw-operator"), ("thaw-system", "thaw-operator-agents")}
    (settings,) = [c for c in by_kind(hardened, "ConfigMap") if c["metadata"]["name"].startswith("thaw-settings-")]
    assert settings["data"]["THAW_NAMESPACES"] == "ml"
    # the agents serve TLS from the thaw-agent-tls Secret; the operator trusts only its CA
    agent = one(hardened, "DaemonSet", "thaw-agent")["spec"]["template"]["spec"]
    args = agent["containers"][0]["args"]
    assert "--tls-cert=/etc/thaw/tls/tls.crt" in args and "--tls-key=/etc/thaw/tls/tls.key" in args
    assert "--plain-tcp" not in args
    assert {"name": "tls", "mountPath": "/etc/thaw/tls", "readOnly": True} in agent["containers"][0]["volumeMounts"]
    operator = one(hardened, "Deployment", "thaw-operator")["spec"]["template"]["spec"]
    assert {"name": "THAW_AGENT_CA", "value": "/etc/thaw/tls/ca.crt"} in operator["containers"][0]["env"]
    (ca,) = [v for v in operator["volumes"] if v["name"] == "agent-ca"]
    assert ca["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]  # the CA only, never the agents' key
    # the operator reaches the API server's own address, not every host on 443 and 6443 (the base's comment
    # said the overlay did this; before, it did not)
    api = one(hardened, "NetworkPolicy", "thaw-operator")["spec"]["egress"][0]
    assert {p["port"] for p in api["ports"]} == {443, 6443} and [t.get("ipBlock") for t in api["to"]]

    s3 = render(DEPLOY / "overlays" / "s3")
    assert not by_kind(s3, "PersistentVolumeClaim")
    spec = one(s3, "DaemonSet", "thaw-agent")["spec"]["template"]["spec"]
    assert "artifacts" not in {v["name"] for v in spec["volumes"]}
    assert spec["containers"][0]["envFrom"] == [{"secretRef": {"name": "thaw-s3", "optional": True}}]
    (settings,) = [c for c in by_kind(s3, "ConfigMap") if c["metadata"]["name"].startswith("thaw-settings-")]
    assert settings["data"]["THAW_STORE"].startswith("s3://")
    egress_ports = {p["port"] for rule in one(s3, "NetworkPolicy", "thaw-agent")["spec"]["egress"] for p in rule["ports"]}
    assert {443, 53} <= egress_ports


def test_crds_match_the_names_the_operator_uses() -> None:
    import yaml

    for path, kind, plural in ((DEPLOY / "base/crds/workersnapshots.yaml", resources.SNAPSHOT_KIND, resources.SNAPSHOTS),
                               (DEPLOY / "base/crds/workerrestores.yaml", resources.RESTORE_KIND, resources.RESTORES)):
        crd = yaml.safe_load(path.read_text())
        assert crd["spec"]["group"] == resources.GROUP
        assert (crd["spec"]["names"]["kind"], crd["spec"]["names"]["plural"]) == (kind, plural)
        (version,) = crd["spec"]["versions"]
        assert version["name"] == resources.VERSION and version["subresources"] == {"status": {}}
        phases = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["phase"]["enum"]
        assert {resources.PENDING, resources.READY, resources.FAILED} <= set(phases)


# --- against the real API server ---------------------------------------------------------------------------------

def create(cp: ControlPlane, obj: dict[str, Any]) -> Any:
    plural = {"WorkerSnapshot": "workersnapshots", "WorkerRestore": "workerrestores"}[obj["kind"]]
    return cp.custom.create_namespaced_custom_object("thaw.dev", "v1alpha1", obj["metadata"]["namespace"], plural, obj)


def snap(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "thaw.dev/v1alpha1", "kind": "WorkerSnapshot",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def restore(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "thaw.dev/v1alpha1", "kind": "WorkerRestore",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


@pytest.mark.k8s
@pytest.mark.parametrize("bad, complaint", [
    (snap("no-pod"), "spec.podName: Required value"),
    (snap("slash", podName="p", artifact="a/b"), "spec.artifact"),
    (snap("dots", podName="p", artifact="a..b"), "spec.artifact"),
    (snap("upper", podName="p", worker="Worker"), "spec.worker"),
    (snap("retention", podName="p", retention="Forever"), 'spec.retention: Unsupported value: "Forever"'),
    (snap("timeout", podName="p", timeoutSeconds=1), "spec.timeoutSeconds"),
    (snap("typo", podName=7), "spec.podName"),
    (restore("no-snapshot", target={}), "spec.snapshotName: Required value"),
    (restore("gpu", snapshotName="s", target={"gpu": "0"}), "spec.target.gpu"),
])
def test_the_api_server_rejects_bad_objects(control_plane: ControlPlane, thaw_installed: list,
                                            bad: dict[str, Any], complaint: str) -> None:
    from kubernetes.client import ApiException

    with pytest.raises(ApiException) as info:
        create(control_plane, bad)
    assert info.value.status == 422
    assert complaint in json.loads(info.value.body)["message"]


@pytest.mark.k8s
def test_good_objects_get_defaults_and_status_is_validated_too(control_plane: ControlPlane, thaw_installed: list) -> None:
    from kubernetes.client import ApiException

    cp = control_plane
    made = create(cp, snap("good", podName="worker-0"))
    assert made["spec"] == {"podName": "worker-0", "leaveRunning": True, "retention": "Delete", "timeoutSeconds": 1800}
    with pytest.raises(ApiException) as info:
        cp.custom.patch_namespaced_custom_object_status("thaw.dev", "v1alpha1", "default", "workersnapshots", "good",
                                                        {"status": {"phase": "Done"}})
    assert info.value.status == 422
    made = create(cp, restore("good", snapshotName="good"))
    assert made["spec"]["timeoutSeconds"] == 900
    header = cp.kubectl("get", "wsnap", "good", "-n", "default", "-o", "wide").stdout.split("\n")[0].split()
    assert header == ["NAME", "PHASE", "POD", "NODE", "GPU", "SIZE", "TOOK", "ARTIFACT", "DIGEST", "AGE"]
    header = cp.kubectl("get", "wrestore", "good", "-n", "default").stdout.split("\n")[0].split()
    assert header == ["NAME", "PHASE", "SNAPSHOT", "NODE", "WORKER", "CANARY", "TOOK", "AGE"]
    for plural in ("workersnapshots", "workerrestores"):
        cp.custom.delete_namespaced_custom_object("thaw.dev", "v1alpha1", "default", plural, "good")


@pytest.mark.k8s
@pytest.mark.parametrize("build_path", BUILDS)
def test_the_api_server_accepts_every_build_server_side_dry_run(control_plane: ControlPlane, thaw_installed: list,
                                                                build_path: str) -> None:
    cp = control_plane
    objects = render(DEPLOY / build_path)
    # namespaces the build puts objects in must exist for a dry run (it creates nothing)
    for ns in {o["metadata"].get("namespace") for o in objects} - {None}:
        cp.kubectl("create", "namespace", ns, check=False)
    out = cp.apply(objects, "--dry-run=server").stdout
    assert out.count("(server dry run)") == len(objects), out


@pytest.mark.k8s
def test_operator_identity_cannot_do_what_it_does_not_need(control_plane: ControlPlane, thaw_installed: list) -> None:
    sa = "system:serviceaccount:thaw-system:thaw-operator"
    allowed = {("patch", "workersnapshots.thaw.dev/status"), ("list", "pods"), ("list", "nodes"), ("create", "events")}
    denied = {("get", "secrets"), ("delete", "pods"), ("create", "pods"), ("patch", "nodes"), ("delete", "workersnapshots.thaw.dev"),
              ("create", "workersnapshots.thaw.dev"), ("list", "configmaps")}
    for verb, what in allowed | denied:
        resource, _, sub = what.partition("/")
        args = ["auth", "can-i", verb, resource, "--as", sa, "-n", "default"] + ([f"--subresource={sub}"] if sub else [])
        answer = control_plane.kubectl(*args, check=False).stdout.strip()
        assert answer == ("yes" if (verb, what) in allowed else "no"), (verb, what, answer)


@pytest.mark.k8s
def test_the_agent_daemonset_lands_only_on_the_labelled_tainted_pool(control_plane: ControlPlane,
                                                                    thaw_installed: list) -> None:
    cp = control_plane
    pool_taint = [{"key": "thaw.dev/pool", "value": "gpu", "effect": "NoSchedule"}]
    make_node(cp, "pool-1", labels={"thaw.dev/pool": "gpu"}, taints=pool_taint)
    make_node(cp, "plain-1", labels={}, taints=[], gpus=0)
    make_node(cp, "tainted-unlabelled-1", labels={}, taints=pool_taint)

    def agent_pods() -> dict[str, str]:
        pods = cp.core.list_namespaced_pod("thaw-system", label_selector="app.kubernetes.io/name=thaw-agent").items
        return {p.spec.node_name: p.metadata.name for p in pods if p.spec.node_name}

    placed = wait_for(lambda: "pool-1" in agent_pods() and agent_pods(), timeout=60,
                      what="the DaemonSet's pod on pool-1 (created by the DaemonSet controller, bound by the scheduler)")
    time.sleep(2)  # give the controller time to (wrongly) place more
    placed = agent_pods()
    assert "plain-1" not in placed and "tainted-unlabelled-1" not in placed
    # and the operator, which tolerates nothing, lands (once scheduled) on an untainted node only
    ops = cp.core.list_namespaced_pod("thaw-system", label_selector="app.kubernetes.io/name=thaw-operator").items
    assert ops
    for pod in ops:
        if pod.spec.node_name:
            assert not cp.core.read_node(pod.spec.node_name).spec.taints, pod.spec.node_name
    for name in ("pool-1", "plain-1", "tainted-unlabelled-1"):
        cp.core.delete_node(name)
