"""Run, snapshot and restore a real worker whose thaw home lies under mounts this script makes.

Run by test_mounts.py as ``unshare --mount --propagation private python mounted_home.py KIND BASE OUT``:
in that private mount namespace it builds the mounts of KIND under BASE, puts the thaw home
beneath them, and writes what happened to OUT (JSON). Every worker it started is killed
before it exits; its mounts go with its namespace.

    tmpfs    BASE/t (tmpfs)                          home BASE/t/s/h
    bind     BASE/t (tmpfs), BASE/t/node (bind)      home BASE/t/node/h      (the agent nodes' case)
    nested   BASE/t (tmpfs), BASE/t/a (tmpfs), BASE/t/a/b (bind)   home BASE/t/a/b/h
    stacked  BASE/t (two tmpfs, one on the other), BASE/t/node (bind)   home BASE/t/node/h
    covered  BASE/t/x (tmpfs), then BASE/t (tmpfs) over it              home BASE/t/s/h
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' `workers` package

from workers import SERVE, state, stop_everything  # noqa: E402

from thaw import pipeline  # noqa: E402
from thaw.config import Settings  # noqa: E402
from thaw.store import open_store  # noqa: E402


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def make_mounts(kind: str, base: Path) -> tuple[Path, list[str]]:
    """Mount KIND's file systems under ``base``; return the thaw home beneath them and the mountpoints made."""
    top = base / "t"
    top.mkdir()
    if kind == "covered":  # a mount the tmpfs will hide: no path reaches it while the tmpfs is there
        (top / "x").mkdir()
        mount("-t", "tmpfs", "tmpfs", str(top / "x"))
    mount("-t", "tmpfs", "tmpfs", str(top))
    if kind in ("tmpfs", "covered"):
        return top / "s" / "h", [str(top)]
    source = base / "source"
    source.mkdir()
    if kind == "stacked":  # the sandbox keeps only the top of a stack, with what is mounted on it
        mount("-t", "tmpfs", "tmpfs", str(top))
    if kind in ("bind", "stacked"):
        (top / "node").mkdir()
        mount("--bind", str(source), str(top / "node"))
        return top / "node" / "h", [str(top), str(top / "node")]
    (top / "a").mkdir()
    mount("-t", "tmpfs", "tmpfs", str(top / "a"))
    (top / "a" / "b").mkdir()
    mount("--bind", str(source), str(top / "a" / "b"))
    return top / "a" / "b" / "h", [str(top), str(top / "a"), str(top / "a" / "b")]


def main(kind: str, base: Path, out: Path) -> None:
    home, made = make_mounts(kind, base)
    home.mkdir(parents=True)
    settings = Settings(home=home, store=str(home / "artifacts"))
    store = open_store(settings.store_url)
    log = home / "w.data.log"
    report: dict = {"mounts": made}
    try:
        env = {**os.environ, "TEST_LOG": str(log)}
        original = pipeline.launch(settings, [sys.executable, str(SERVE)], name="w", env=env, cwd=home)
        pipeline.wait_ready(settings, original, timeout=30)
        report["keep"] = pipeline.find(settings, "w").layout["keep"]
        report["warm"] = log.read_text().split()
        pipeline.snapshot(settings, "w", "a1", store=store)
        restored = pipeline.restore(settings, "a1", store=store, name="copy")
        got = state(restored.instance.dir)
        report.update(token=got["token"], outcome=got["outcome"], canary=got["info"]["canary"])
    finally:
        stop_everything(home)
        out.write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
