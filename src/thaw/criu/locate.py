"""Finding a CRIU >= 4 to run: the host's, or a portable tree (loader + libraries).

Order: the ``criu`` setting (``THAW_CRIU``: a criu binary, a wrapper, or a portable tree's root), then the
portable tree scripts/install-criu.sh installs (/opt/thaw/criu), then the fast one
scripts/install-criu-fast.sh installs (/opt/thaw/criu-fast), then ``criu`` on PATH.
A host CRIU older than 4 is skipped with a note: Debian 12's 3.17 fails on current
kernels ("vdso: Unexpected rt vDSO area bounds").

"Fast CRIU" (scripts/install-criu-fast.sh, /opt/thaw/criu-fast) is CRIU with thaw's page-fill
patch; its ``criu --version`` says "Page fill: parallel". Where both trees are installed it is
used only when ``$THAW_CRIU`` names it; `thaw doctor` says whether the CRIU in use has it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from thaw.errors import HostError

DEFAULT_TREE = Path("/opt/thaw/criu")
FAST_TREE = Path("/opt/thaw/criu-fast")  # where scripts/install-criu-fast.sh installs by default
MIN_MAJOR = 4
PAGE_FILL_LINE = re.compile(r"^Page fill:\s*parallel", re.MULTILINE)  # printed by the page-fill patch


@dataclass(frozen=True)
class Criu:
    """How to start CRIU: ``argv`` + subcommand; its version."""

    argv: tuple[str, ...]
    version: str
    source: str  # where it was found, for `thaw doctor`
    parallel_fill: bool = False  # built with thaw's page-fill patch (scripts/install-criu-fast.sh)

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


def _argv_for(path: Path) -> tuple[str, ...] | None:
    if path.is_dir():  # a portable tree: run its criu with its own loader and libraries
        loader, lib = path / "lib" / "ld-linux-x86-64.so.2", path / "lib"
        for binary in (path / "libexec" / "criu", path / "bin" / "criu"):
            if loader.exists() and binary.exists() and _is_elf(binary):
                return (str(loader), "--library-path", str(lib), str(binary))
        if (path / "bin" / "criu").exists():
            return (str(path / "bin" / "criu"),)
        return None
    if path.exists() and os.access(path, os.X_OK):
        return (str(path),)
    return None


def _is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def _version(argv: tuple[str, ...]) -> tuple[str, bool] | None:
    """CRIU's version and whether it has the parallel page fill, from ``criu --version``."""
    try:
        out = subprocess.run([*argv, "--version"], check=False, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"Version:\s*([0-9][0-9.]*)", out)
    return (m.group(1), PAGE_FILL_LINE.search(out) is not None) if m else None


@lru_cache(maxsize=8)
def find_criu(override: str | None = None) -> Criu:
    """The CRIU to use. Raises HostError listing what was tried and how to install one."""
    tried: list[str] = []
    candidates: list[tuple[str, Path]] = []
    if override:
        candidates.append(("THAW_CRIU", Path(override)))
    candidates.append(("portable tree", DEFAULT_TREE))
    candidates.append(("fast portable tree", FAST_TREE))
    if which := shutil.which("criu"):
        candidates.append(("PATH", Path(which)))
    for source, path in candidates:
        argv = _argv_for(path)
        if argv is None:
            tried.append(f"{path} ({source}): not found")
            continue
        found = _version(argv)
        if found is None:
            tried.append(f"{path} ({source}): does not run")
            continue
        version, parallel_fill = found
        if int(version.split(".")[0]) < MIN_MAJOR:
            tried.append(f"{path} ({source}): version {version} < {MIN_MAJOR}")
            continue
        return Criu(argv=argv, version=version, source=f"{path} ({source})", parallel_fill=parallel_fill)
    raise HostError(
        "no CRIU >= 4 found: " + "; ".join(tried),
        hint="run scripts/install-criu.sh (a portable CRIU 4 tree in /opt/thaw/criu) or set THAW_CRIU",
    )
