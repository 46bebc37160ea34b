"""Two operator replicas, one leader (kopf peering): the leader dies mid-restore and the other finishes it, once.

The worst moment to lose the leader is between its start of a restore and its record of it: the
agent runs the job, but the WorkerRestore's status does not name it. The test makes that moment
last: a relay in front of node-b's agent delivers the leader's restore start and loses the answer,
and the restored worker's thaw hook waits for a gate file, so the job stays running. Then the
leader (the highest live priority in the ClusterKopfPeering object) is SIGKILLed. The other
replica must take over once the leader's record expires, start the restore again with the same
idempotency key (the WorkerRestore's uid), get the job already running rather than a second one,
and follow it to Ready after the canary.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    Agents,
    ControlPlane,
    Operator,
    get_object,
    mark_running,
    start_operator,
    wait_for,
    wait_phase,
)
from .test_e2e import restore_state, snapshot_worker

pytestmark = [pytest.mark.k8s, pytest.mark.criu, pytest.mark.slow]

PEERING = "thaw-operator"  # the ClusterKopfPeering of the base, as the Deployment's replicas use it
LIFETIME = 5  # seconds a silent leader keeps the lead: the shortest the operator accepts, so the test is quick


@pytest.fixture
def replicas(control_plane: ControlPlane, agents: Agents, tmp_path: Path) -> Iterator[dict[str, Operator]]:
    """Two operators electing a leader, by the names their peering records carry."""
    # kopf names a replica's record after $POD_ID, else user@hostname/start/random (in a pod, the hostname is the
    # pod's name); both replicas share one host here
    names = [f"replica-{i}-{os.urandom(3).hex()}" for i in range(2)]
    started: dict[str, Operator] = {}
    try:
        for name in names:
            started[name] = start_operator(control_plane, agents, tmp_path / f"{name}.log", "--peering", PEERING,
                                           "--peering-lifetime", str(LIFETIME), env={"POD_ID": name})
        yield started
    finally:
        for op in started.values():
            op.stop()


def live_records(cp: ControlPlane) -> dict[str, int]:
    """Priority by identity of every unexpired record in the peering object."""
    body = cp.custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", PEERING)
    now = datetime.now(UTC)
    return {who: int(rec.get("priority", 0)) for who, rec in (body.get("status") or {}).items()
            if isinstance(rec, dict) and rec.get("lastseen")
            and (datetime.fromisoformat(rec["lastseen"]) - now).total_seconds() + int(rec.get("lifetime", 0)) > 0}


def leader_of(cp: ControlPlane, replicas: dict[str, Operator]) -> str:
    """The replica kopf lets work: the highest priority among the live records (every other one pauses)."""
    records = wait_for(lambda: (r := live_records(cp)) and set(replicas) <= set(r) and r, timeout=30,
                       what="both replicas to record themselves in the peering object")
    return max(replicas, key=lambda name: records[name])


def paused(replica: Operator) -> bool:
    """What kopf last said of this replica: paused (as it starts with mandatory peering) or resumed."""
    log = replica.log.read_text(errors="replace")
    return log.rfind("Pausing operations") >= log.rfind("Resuming operations")


class LossyRelay:
    """A TCP relay in front of an agent that, while ``losing`` is set, delivers restore starts but loses their
    answers: the job starts on the agent and the caller never learns its id, as when it dies at that moment."""

    def __init__(self, host: str, upstream: str) -> None:
        self.upstream = upstream.removeprefix("http://").split(":")
        self.losing = threading.Event()
        self.losing.set()
        self.sockets: list[socket.socket] = []
        self.server = socket.create_server((host, 0))
        self.url = f"http://{host}:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        for s in [self.server, *self.sockets]:
            s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
                upstream = socket.create_connection((self.upstream[0], int(self.upstream[1])))
            except OSError:
                return
            self.sockets += [client, upstream]
            lost = threading.Event()  # set on a connection once it carried a restore start: no answer returns
            threading.Thread(target=self._pump, args=(client, upstream, lost, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, lost, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, lost: threading.Event, requests: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if requests and self.losing.is_set() and data.startswith(b"POST /v1/restores"):
                    lost.set()
                if not (lost.is_set() and not requests):
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def find_object(cp: ControlPlane, namespace: str, plural: str, name: str) -> dict[str, Any] | None:
    from kubernetes.client import ApiException

    try:
        return get_object(cp, namespace, plural, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def restore_from_pod(namespace: str, name: str, snapshot: str, node: str) -> dict[str, Any]:
    """A replica of a restore-from Deployment, as the scheduler leaves it: bound to ``node``, gated on the restore."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "annotations": {"thaw.dev/restore-from": snapshot}},
            "spec": {"nodeName": node, "readinessGates": [{"conditionType": "thaw.dev/restored"}],
                     "containers": [{"name": "worker", "image": "example/worker:1"}],
                     "tolerations": [{"key": "thaw.dev/pool", "operator": "Exists", "effect": "NoSchedule"}]}}


def test_killing_the_leader_mid_restore_hands_the_restore_to_the_other_replica_which_finishes_it_once(
        control_plane: ControlPlane, agents: Agents, replicas: dict[str, Operator], namespace: str,
        tmp_path: Path) -> None:
    cp = control_plane
    leader = leader_of(cp, replicas)
    (follower,) = set(replicas) - {leader}
    wait_for(lambda: not paused(replicas[leader]) and paused(replicas[follower]), timeout=30,
             what=f"{leader} to lead and {follower} to pause")

    gate = tmp_path / "gate"
    snap = snapshot_worker(cp, agents, replicas[leader], namespace, tmp_path, "base", TEST_THAW_GATE=str(gate))
    assert snap["status"]["phase"] == "Ready", snap["status"]

    agent = agents["node-b"]
    relay = LossyRelay("127.0.0.3", agent.url)
    cp.core.patch_node("node-b", {"metadata": {"annotations": {"thaw.dev/agent-url": relay.url}}})
    try:
        cp.core.create_namespaced_pod(namespace, restore_from_pod(namespace, "llm-0", "base", "node-b"))
        mark_running(cp, namespace, "llm-0")

        # in flight: the agent runs the job the leader started, and the WorkerRestore does not know it
        uid = wait_for(lambda: (wr := find_object(cp, namespace, "workerrestores", "llm-0")) and wr["metadata"]["uid"],
                       timeout=30, what="the leader to create the pod's WorkerRestore")

        def jobs_of_this_restore() -> list[Any]:
            return [j for j in agent.client.jobs() if j.request.get("idempotency_key") == uid]

        (job,) = wait_for(jobs_of_this_restore, timeout=60, what="the leader's restore job to start on node-b")
        assert leader_of(cp, replicas) == leader
        replicas[leader].kill()
        assert not agent.client.job(job.id).state.finished
        assert not (get_object(cp, namespace, "workerrestores", "llm-0").get("status") or {}).get("agentJob")
        relay.losing.clear()

        # the follower takes over once the dead leader's record expires, and finds the job already running
        def recorded_job() -> str | None:
            return (get_object(cp, namespace, "workerrestores", "llm-0").get("status") or {}).get("agentJob")

        try:
            taken_over = wait_for(recorded_job, timeout=LIFETIME + 30, what=f"{follower} to record the restore job")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- {follower} ---\n{replicas[follower].tail()}") from None
        assert taken_over == job.id
        assert not agent.client.job(job.id).state.finished, "the follower took over a restore still in flight"

        gate.touch()
        restored = wait_phase(cp, namespace, "workerrestores", "llm-0", ("Ready", "Failed"),
                              operator=replicas[follower])
        assert restored["status"]["phase"] == "Ready" and restored["status"]["canary"] == "Passed", restored["status"]
        assert restored["status"]["agentJob"] == job.id
        pod = wait_for(lambda: (p := cp.core.read_namespaced_pod("llm-0", namespace)) and
                       restore_state(p) == ("Restored", "True") and p, timeout=30,
                       what="the pod to be marked Restored, its readiness gate open")
        worker = pod.metadata.annotations["thaw.dev/restored-worker"]

        # exactly once: one job for the key, one restore of this worker, one copy running
        assert [j.id for j in jobs_of_this_restore()] == [job.id]
        assert [j.id for j in agent.client.jobs() if j.kind.value == "restore" and j.worker == worker] == [job.id]
        copies = [w for w in agent.client.workers() if w.name == worker]
        assert len(copies) == 1 and copies[0].origin == "restored" and copies[0].ready, copies

        # the new leader also cleans up: scaling down stops the worker, deleting the snapshot deletes its artifact
        cp.core.delete_namespaced_pod("llm-0", namespace)
        wait_for(lambda: not agent.client.worker(worker).alive, timeout=30, what=f"worker {worker} to be stopped")
        wait_for(lambda: not (cp.core.read_namespaced_pod("llm-0", namespace).metadata.finalizers or []),
                 timeout=30, what="the new leader to release the pod")
        cp.core.delete_namespaced_pod("llm-0", namespace, grace_period_seconds=0)
        cp.custom.delete_namespaced_custom_object("thaw.dev", "v1alpha1", namespace, "workersnapshots", "base")
        wait_for(lambda: snap["status"]["artifact"]["name"] not in {a.name for a in agent.client.artifacts()},
                 timeout=30, what="the new leader to delete the snapshot's artifact")
    finally:
        gate.touch()
        cp.core.patch_node("node-b", {"metadata": {"annotations": {"thaw.dev/agent-url": agent.url}}})
        relay.close()

