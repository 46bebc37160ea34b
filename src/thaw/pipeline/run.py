"""``thaw run``: start a worker in a new sandbox."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from thaw.config import Settings
from thaw.listen import launch as listen
from thaw.listen.spec import ParkAtListen
from thaw.pipeline import instances
from thaw.pipeline.instances import Instance
from thaw.sandbox.launch import child_env, launch as launch_sandbox
from thaw.sandbox.layout import plan
from thaw.worker import environment, protocol


def launch(settings: Settings, argv: list[str], *, name: str, env: dict[str, str] | None = None,
           cwd: Path | None = None, park: ParkAtListen | None = None) -> Instance:
    """Start ``argv`` as a snapshot-able worker named ``name``; returns once its sandbox runs.

    The worker runs in new pid, mount and network namespaces (sandbox/layout.py) and
    finds its control directory through ``THAW_RUN_DIR``. Wait for its quiesce point
    with ``control.wait_ready`` (``thaw snapshot`` does). With ``park``, a server that
    knows nothing of thaw is parked at its listening socket (thaw.listen).
    """
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    cwd = Path(cwd or Path.cwd())
    inst = instances.create(settings, name, argv=list(argv))
    # keep every mount the worker needs: thaw's state, its working directory, its interpreter
    merged = listen.clean_env(child_env(dict(env if env is not None else os.environ), run_dir=settings.run_dir,
                                        name=name))
    # where the node's GPU memory services listen (thaw.memory.weights): the same path on every node
    merged.setdefault(environment.GMS_DIR, str(settings.gms_dir))
    worker_env = listen.worker_env(park, settings.run_dir, merged) if park else {}
    python_path = [p for p in merged.get("PYTHONPATH", "").split(os.pathsep) if p]
    extra = listen.paths() if park else []
    layout = plan([settings.home, settings.gms_dir, cwd, sys.prefix, *python_path, *extra, *_paths_in(argv)],
                  settings.keep_mounts)
    try:
        started = launch_sandbox(list(argv), control_dir=inst.dir, run_dir=settings.run_dir, layout=layout,
                                 env=merged, cwd=cwd, worker_env=worker_env, user=settings.worker)
    except BaseException:
        inst.state = "failed"
        inst.save()
        raise
    inst.host_pid, inst.pidns, inst.holder_pid = started.host_pid, started.pidns, started.holder_pid
    inst.ns_key = protocol.sandbox_key(started.host_pid)
    inst.layout = layout
    inst.state = "running"
    inst.save()
    return inst


def _paths_in(argv: list[str]) -> list[str]:
    return [a for a in argv if a.startswith("/") and os.path.exists(a)]
