"""Starting a server so that it parks at its listening socket: the environment ``thaw run --park-at-listen`` adds.

The server's processes get ``$THAW_PARK_AT_LISTEN`` (the spec) and a ``PYTHONPATH``
that starts with ``<run dir>/python``: a directory holding thaw's ``sitecustomize.py``
and a ``thaw`` link to this thaw's package, so that the hook loads even where the
server's own Python environment has no thaw installed, while nothing else of thaw's
environment leaks into the server's imports. The sandbox's init applies these only
to the command it executes (sandbox/init.py), never to itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import thaw
from thaw.listen.spec import ENV_ROOT, ENV_SPEC, ParkAtListen

STARTUP = Path(__file__).resolve().parent / "startup" / "sitecustomize.py"
PACKAGE = Path(thaw.__file__).resolve().parent


def worker_env(spec: ParkAtListen, run_dir: Path, base_env: dict[str, str]) -> dict[str, str]:
    """The variables to set for the server (its ``PYTHONPATH`` keeps what ``base_env`` had, after thaw's directory)."""
    start = prepare_path(run_dir)
    rest = [p for p in base_env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(start)]
    return {ENV_SPEC: spec.to_env(), "PYTHONPATH": os.pathsep.join([str(start), *rest])}


def clean_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` without a park claim inherited from elsewhere: every sandbox's first process claims its own."""
    return {k: v for k, v in env.items() if k != ENV_ROOT}


def paths() -> list[Path]:
    """What the sandbox must see for the hook to load: thaw's package (the link's target)."""
    return [PACKAGE]


def prepare_path(run_dir: Path) -> Path:
    """``<run dir>/python`` with links to thaw's sitecustomize and package (made once, replaced atomically)."""
    directory = Path(run_dir) / "python"
    directory.mkdir(parents=True, exist_ok=True)
    _link(directory / "sitecustomize.py", STARTUP)
    _link(directory / "thaw", PACKAGE)
    return directory


def _link(link: Path, target: Path) -> None:
    try:
        if Path(os.readlink(link)) == target:
            return
    except OSError:
        pass
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.rename(tmp, link)
