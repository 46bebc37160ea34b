"""A worker snapshotted from one pod and restored into another, with real CRIU and pods made by hand.

A "pod" here is what a container runtime makes of one (without the runtime): thaw's pod
entrypoint as the first process of new pid, mount and network namespaces, in a cgroup
whose path names the pod's uid. tests/k8s/node-e2e.sh does the same with a real kubelet,
containerd and runc; this test runs everywhere CRIU does.

The restored worker must live in the target pod: answer on the pod's network, be charged to
the pod's cgroup (read from /proc), write its output through the pod's entrypoint, and end
with it, either way.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from thaw import pipeline
from thaw.agent import pods
from thaw.api.models import PodRef
from thaw.config import Settings
from thaw.sandbox import pod as podlib
from workers import SERVE, wait_until

pytestmark = [pytest.mark.criu]

REPO = Path(__file__).resolve().parents[2]
#: the pods' run directory (the same in both: the manifest records it); in the host's /tmp, which the hand-made
#: pods share, so one per test process: two suites at once on one machine must not remove each other's
RUN_DIR = f"/tmp/thaw-pod-test-{os.getpid()}"
PORT = 8080


class Pod:
    """Namespaces, a cgroup named after a pod uid, and thaw's entrypoint as their first process."""

    def __init__(self, base: Path, cgroups: list[Path], *, restore_from: str | None, env: dict[str, str]) -> None:
        self.uid = str(uuid.uuid4())
        self.dir = base / self.uid
        self.dir.mkdir(parents=True)
        self.cgroups = [root / f"pod{self.uid}" for root in cgroups]
        for cg in self.cgroups:
            cg.mkdir()
        annotations = self.dir / "annotations"
        annotations.write_text(f'thaw.dev/restore-from="{restore_from}"\n' if restore_from else "")
        self.annotations = annotations
        self.out = self.dir / "container.log"
        procs = [str(cg / "cgroup.procs") for cg in self.cgroups]
        join = f"for f in {' '.join(procs)}; do echo $$ > $f; done; "
        inner = (f"ip link set lo up 2>/dev/null || {sys.executable} -c 'from thaw.sandbox.init import loopback_up as u; "
                 f"u()'; exec {sys.executable} -m thaw.sandbox.entrypoint -- {sys.executable} {SERVE}")
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                ["sh", "-c", join + 'exec "$@"', "-", "unshare", "--pid", "--fork", "--mount", "--mount-proc",
                 "--net", "--propagation", "private", "sh", "-c", inner],
                env={**env, "THAW_POD_INFO": str(annotations), "THAW_RUN_DIR": RUN_DIR,
                     "THAW_WORKER_NAME": "podworker", "TEST_TCP_PORT": str(PORT), "PYTHONPATH": str(REPO / "src")},
                stdout=out, stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True)
        self.anchor = wait_until(lambda: _anchor(self.uid), 20, f"the entrypoint of pod {self.uid}", 0.05)
        self.ref = PodRef(namespace="t", name="p", uid=self.uid)

    def get(self, path: str) -> dict:
        """GET http://<pod>:8080/path from inside the pod's network namespace."""
        return in_netns(self.anchor.pid, lambda: httpx.get(f"http://127.0.0.1:{PORT}{path}", timeout=5).json())

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        for cg in self.cgroups:
            for pid in (cg / "cgroup.procs").read_text().split():
                os.kill(int(pid), signal.SIGKILL)
            wait_until(lambda cg=cg: not (cg / "cgroup.procs").read_text().strip(), 10, f"{cg} to empty")
            cg.rmdir()


def _anchor(uid: str) -> podlib.Anchor | None:
    try:
        return podlib.find_anchor(uid)
    except Exception:  # noqa: BLE001 - not there yet
        return None


def in_netns(pid: int, call):  # noqa: ANN001, ANN201 - test helper
    """Run ``call`` on a thread that joined ``pid``'s network namespace (setns is per thread)."""
    result: dict = {}

    def run() -> None:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        try:
            if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            result["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            result["error"] = exc
        finally:
            os.close(fd)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


@pytest.fixture
def cgroup_roots() -> Iterator[list[Path]]:
    """A test cgroup in every hierarchy pods are charged in (memory and pids; v2: the unified one)."""
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():
        roots = [base / f"thaw-test-{uuid.uuid4().hex[:8]}"]
    else:
        roots = [base / c / f"thaw-test-{uuid.uuid4().hex[:8]}" for c in ("memory", "pids") if (base / c).is_dir()]
    if not roots:
        pytest.skip("no cgroup hierarchy to make pods in")
    for root in roots:
        root.mkdir()
    yield roots
    for root in roots:
        for child in root.iterdir():
            if child.is_dir():
                child.rmdir()
        root.rmdir()


def test_a_worker_snapshotted_in_one_pod_is_restored_into_another_and_lives_there(
        tmp_path: Path, cgroup_roots: list[Path]) -> None:
    settings = Settings(home=tmp_path / "home", store=str(tmp_path / "home" / "artifacts"))
    shutil.rmtree(RUN_DIR, ignore_errors=True)  # the hand-made pods share the host's /tmp
    env = {k: v for k, v in os.environ.items() if not k.startswith("THAW_")}
    source = Pod(tmp_path / "pods", cgroup_roots, restore_from=None, env=env)
    target = None
    try:
        wait_until(lambda: "started in a thaw sandbox" in source.out.read_text(), 20, "the source pod's sandbox")
        worker = pods.adopt(settings, source.ref)
        pipeline.wait_ready(settings, worker, timeout=60)
        assert pods.adopt(settings, source.ref).id == worker.id  # adopting twice is the same instance
        # the pod's worker holds no capability (its entrypoint's CAP_SYS_ADMIN made the sandbox, and stops there)
        status = Path(f"/proc/{worker.host_pid}/status").read_text()
        assert {line.split()[1] for line in status.splitlines() if line.startswith(("CapEff", "CapPrm", "CapBnd"))} \
            == {"0000000000000000"}, status
        snap = pipeline.snapshot(settings, worker.id, "podworker-v1", leave_running=True)
        assert snap.manifest.sandbox.run_dir == RUN_DIR
        # released, the original opens its server again: poll until it listens (restore's GO likewise)
        original = wait_until(lambda: _try(lambda: source.get("/state")), 30, "the original to serve again")

        target = Pod(tmp_path / "pods", cgroup_roots, restore_from="podworker-v1", env=env)
        res = pipeline.restore(settings, "podworker-v1", name="copy", into=target.anchor)
        pid = res.instance.host_pid
        # on the pod's network: the copy answers inside the target pod's network namespace, with the original's state
        state = wait_until(lambda: _try(lambda: target.get("/state")), 30, "the restored copy to serve")
        assert (state["token"], state["digest"], state["outcome"]) == (original["token"], original["digest"], "thawed")
        for ns in ("net", "uts", "ipc"):  # the pod's network, hostname and IPC (joined: the same here as the host's)
            assert os.stat(f"/proc/{pid}/ns/{ns}").st_ino == os.stat(f"/proc/{target.anchor.pid}/ns/{ns}").st_ino, ns
        # charged to the pod: every hierarchy's cgroup of the worker is the target pod's
        for cg in target.cgroups:
            assert str(pid) in (cg / "cgroup.procs").read_text().split(), f"worker {pid} not in {cg}"
        # its filesystem is the pod's: its control directory is the one the pod's entrypoint made
        assert (target.anchor.host_path(f"{RUN_DIR}/worker/reply.json")).exists()
        # its output goes through the pod's entrypoint into the container's log
        wait_until(lambda: "serving on port 8080 (thawed)" in target.out.read_text(), 10, "the worker's output relayed")
        assert "restored: the worker runs in this pod" in target.out.read_text()

        # the worker dies -> the pod's entrypoint exits (the kubelet would restart the container)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: target.proc.poll() is not None, 10, "the target pod's entrypoint to exit")
        assert "the restored worker exited" in target.out.read_text()

        # the entrypoint dies -> the agent stops the worker it restored there
        target.stop()
        target = Pod(tmp_path / "pods", cgroup_roots, restore_from="podworker-v1", env=env)
        again = pipeline.restore(settings, "podworker-v1", name="copy2", into=target.anchor)
        os.kill(target.anchor.pid, signal.SIGKILL)
        wait_until(lambda: not podlib.Anchor(target.anchor.pid).alive(), 10, "the entrypoint to die")
        stopped = pods.untie(pipeline.list_instances(settings))
        assert [i.id for i in stopped] == [again.instance.id] and not again.instance.alive()
    finally:
        if target is not None:
            target.stop()
        source.stop()
        from workers import stop_everything

        stop_everything(settings.home)
        shutil.rmtree(RUN_DIR, ignore_errors=True)


def test_a_pod_whose_annotations_say_cold_start_runs_the_worker_itself(tmp_path: Path,
                                                                        cgroup_roots: list[Path]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THAW_")}
    pod = Pod(tmp_path / "pods", cgroup_roots, restore_from="missing", env=env)
    try:
        wait_until(lambda: "waiting for the restore" in pod.out.read_text(), 10, "the entrypoint to wait")
        pod.annotations.write_text('thaw.dev/restore-from="missing"\nthaw.dev/restore-state="ColdStart"\n'
                                   'thaw.dev/restore-reason="SnapshotNotFound: no such snapshot"\n')
        state = wait_until(lambda: _try(lambda: pod.get("/state")), 60, "the cold-started worker to serve")
        assert state["token"]  # a plain run of the worker, in the pod
        assert "starting cold" in pod.out.read_text() and "SnapshotNotFound" in pod.out.read_text()
    finally:
        pod.stop()
        shutil.rmtree(RUN_DIR, ignore_errors=True)


def _try(call):  # noqa: ANN001, ANN202 - test helper
    try:
        return call()
    except (httpx.HTTPError, OSError):
        return None
