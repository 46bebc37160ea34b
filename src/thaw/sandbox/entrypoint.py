"""thaw's pod entrypoint: ``python -m thaw.sandbox.entrypoint -- CMD [ARGS...]`` as a worker container's command.

It is the container's first process (the *anchor* the node's agent finds, sandbox/pod.py)
and decides from the pod's annotations, read through a downward API volume
(``$THAW_POD_INFO``, default /etc/thaw/pod/annotations):

* **restore-from pod** (``thaw.dev/restore-from`` set): wait. The agent restores the worker
  into this pod (network namespace, cgroup, root filesystem) and plugs its stdout and
  stderr into ``<run dir>/worker/stdout.fifo``, which this process relays to the container's
  log. When the last writer of that FIFO is gone, so is the worker: this process exits, and
  the kubelet restarts the container by the pod's policy. When the operator gives up on the
  restore (``thaw.dev/restore-state: ColdStart``), it becomes CMD: the worker's cold start,
  in this same container. This mode needs no privilege (run it as non-root).
* **any other pod** (a snapshot source): start CMD in a thaw sandbox (own pid and mount
  namespaces, the pod's network), so that a WorkerSnapshot can checkpoint it; relay its log;
  exit with its status. The sandbox needs CAP_SYS_ADMIN; without it CMD runs plain (it then
  serves, but cannot be snapshotted: a line in the log says so).

Standard library only (it runs in the worker's image, next to the worker SDK).
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from pathlib import Path

RESTORE_FROM = "thaw.dev/restore-from"  # thaw.k8s.resources names them; this side must stay standard-library only
RESTORE_STATE = "thaw.dev/restore-state"
COLD_START = "ColdStart"
DEFAULT_POD_INFO = "/etc/thaw/pod/annotations"
POLL_S = 0.1


def log(message: str) -> None:
    print(f"thaw-entrypoint: {message}", file=sys.stderr, flush=True)


def read_annotations(path: Path) -> dict[str, str]:
    """A downward API ``metadata.annotations`` file: ``key="value"`` lines, values JSON-quoted."""
    out: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        try:
            out[key] = json.loads(value) if value.startswith('"') else value
        except json.JSONDecodeError:
            out[key] = value.strip('"')
    return out


def wait_for_restore(cmd: list[str], run_dir: Path, pod_info: Path) -> int:
    """Relay the restored worker's output until it ends; or become CMD if the operator says ColdStart."""
    from thaw.sandbox.pod import STDOUT_FIFO, WORKER_DIR
    from thaw.worker.protocol import ENV_RUN_DIR

    control = run_dir / WORKER_DIR
    (run_dir / "ns").mkdir(parents=True, exist_ok=True)
    control.mkdir(parents=True, exist_ok=True)
    # the restored worker writes its replies here under the user id it had in the snapshot's pod, without any
    # capability to override modes: the directory is the worker's whatever its uid (it is this container's alone)
    control.chmod(0o777)
    # a restarted container keeps its writable layer: links and the FIFO of the worker before are stale
    for stale in (*(run_dir / "ns").iterdir(), control / STDOUT_FIFO):
        if stale.is_symlink() or stale.exists():
            stale.unlink()
    fifo = control / STDOUT_FIFO
    os.mkfifo(fifo, 0o622)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    poller = select.poll()
    poller.register(reader, select.POLLIN)
    log(f"waiting for the restore (pod annotations in {pod_info}, output relayed from {fifo})")
    attached = False
    while True:
        for _, events in poller.poll(POLL_S * 1000):
            data = os.read(reader, 1 << 16) if events & (select.POLLIN | select.POLLHUP) else b""
            if data:
                os.write(1, data)
            elif events & select.POLLHUP:
                if attached or _linked(run_dir):
                    log("the restored worker exited")
                    return 1
                # a restore that failed before the worker ran (the agent closed its end): keep waiting
                poller.unregister(reader)
                os.close(reader)
                reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
                poller.register(reader, select.POLLIN)
        if not attached and _linked(run_dir):
            attached = True
            log("restored: the worker runs in this pod")
        if not attached and read_annotations(pod_info).get(RESTORE_STATE) == COLD_START:
            os.close(reader)
            log(f"no restore ({read_annotations(pod_info).get('thaw.dev/restore-reason', 'no reason given')}); "
                f"starting cold: {' '.join(cmd)}")
            # no THAW_RUN_DIR: the worker SDK then knows it is not managed and quiesce() returns at once
            os.execvpe(cmd[0], cmd, {k: v for k, v in os.environ.items() if k != ENV_RUN_DIR})


def _linked(run_dir: Path) -> bool:
    """Whether the agent linked a restored sandbox to this pod's control directory."""
    try:
        return any(not p.name.endswith(".tmp") for p in (run_dir / "ns").iterdir())
    except OSError:
        return False


def run_sandboxed(cmd: list[str], run_dir: Path) -> int:
    """Start CMD in a thaw sandbox on the pod's network; relay its log; return its exit status."""
    from thaw.sandbox.launch import child_env, launch
    from thaw.sandbox.layout import plan
    from thaw.sandbox.pod import WORKER_DIR

    control = run_dir / WORKER_DIR
    control.mkdir(parents=True, exist_ok=True)
    name = os.environ.get("THAW_WORKER_NAME") or os.environ.get("HOSTNAME") or "worker"
    env = child_env(dict(os.environ), run_dir=run_dir, name=name)
    python_path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    layout = plan([run_dir, Path.cwd(), sys.prefix, *python_path, *[a for a in cmd if a.startswith("/")]],
                  private_net=False)
    try:
        # the worker needs no capability, and a restore can give back only what the agent holds
        started = launch(cmd, control_dir=control, run_dir=run_dir, layout=layout, env=env, drop_caps=True)
    except Exception as exc:  # noqa: BLE001 - no sandbox (no CAP_SYS_ADMIN): the worker still runs, plainly
        log(f"cannot start a sandbox ({exc}); running the worker without one: it cannot be snapshotted")
        os.execvp(cmd[0], cmd)
    (control / "sandbox.json").write_text(json.dumps({"name": name, "argv": cmd, "layout": layout.to_dict()}))
    log(f"worker {name} started in a thaw sandbox: {' '.join(cmd)}")
    holder = started.holder_pid

    def stop(signum: int, _frame: object) -> None:
        try:
            os.kill(started.host_pid, signal.SIGKILL if signum == signal.SIGKILL else signal.SIGTERM)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker_log = control / "worker.log"
    offset = worker_log.stat().st_size if worker_log.exists() else 0  # a restarted container: only what is new
    while True:
        offset = _relay(worker_log, offset)
        done, status = os.waitpid(holder, os.WNOHANG)
        if done:
            _relay(worker_log, offset)
            code = os.waitstatus_to_exitcode(status)
            log(f"the worker exited ({code})")
            return code if code >= 0 else 128 - code
        time.sleep(POLL_S)


def _relay(path: Path, offset: int) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return offset
    if data:
        os.write(1, data)
    return offset + len(data)


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "--" or len(argv) < 2:
        log("usage: python -m thaw.sandbox.entrypoint -- CMD [ARGS...]")
        return 2
    cmd = argv[1:]
    from thaw.worker.protocol import ENV_RUN_DIR

    run_dir = Path(os.environ.get(ENV_RUN_DIR) or "/tmp/thaw")
    pod_info = Path(os.environ.get("THAW_POD_INFO") or DEFAULT_POD_INFO)
    if read_annotations(pod_info).get(RESTORE_FROM):
        return wait_for_restore(cmd, run_dir, pod_info)
    return run_sandboxed(cmd, run_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

