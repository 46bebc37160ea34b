"""``python -m thaw.sandbox.incgroup PROCS_FILE... -- CMD ...``: join cgroups, then become CMD.

Writes its own pid into each ``cgroup.procs`` file and execs CMD, which keeps the pid:
CMD and everything it forks are then charged to those cgroups. thaw starts CRIU this way
to restore a worker into a pod's cgroup (sandbox/pod.py).
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> None:
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        sys.exit("usage: python -m thaw.sandbox.incgroup PROCS_FILE... -- CMD [ARGS...]")
    split = argv.index("--")
    for procs in argv[:split]:
        try:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        except OSError as exc:
            sys.exit(f"thaw: cannot join cgroup {os.path.dirname(procs)}: {exc.strerror}")
    cmd = argv[split + 1:]
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
