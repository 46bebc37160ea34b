"""A program that knows nothing of thaw: it binds the listening sockets its plan names, then serves "ok".

``binder.py PLAN_JSON``; the plan::

    {"events": PATH,                      JSON lines: {"bound": ADDRESS, "pid": N} per bind, {"child": ...}
     "binds": [["tcp", HOST, PORT], ["unix", PATH]],
     "child_binds": ["tcp", HOST, PORT] | null,   a forked child binds this first (it must never park)
     "warm_s": SECONDS}                   sleep before binding (a "warm-up")

Every socket gets SO_REUSEADDR and non-blocking mode before its bind (what asyncio does),
so a test can check that both survive the park. After the binds it answers each
connection to the last socket with "ok <pid>" until killed.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

plan = json.loads(sys.argv[1])


def event(**fields: object) -> None:
    with open(plan["events"], "a") as f:
        f.write(json.dumps({**fields, "pid": os.getpid()}) + "\n")


def bind(spec: list) -> socket.socket:
    if spec[0] == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: object = spec[1]
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = (spec[1], spec[2])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setblocking(False)
    fd = sock.fileno()
    sock.bind(address)
    sock.listen()
    event(bound=spec, fd=fd, fd_is=os.readlink(f"/proc/self/fd/{fd}"),
          reuseaddr=sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR), blocking=sock.getblocking())
    return sock


time.sleep(plan.get("warm_s", 0))
if plan.get("child_binds"):
    if os.fork() == 0:
        bind(plan["child_binds"])
        time.sleep(60)
        os._exit(0)
socks = [bind(spec) for spec in plan["binds"]]
last = socks[-1]
last.setblocking(True)
while True:
    conn, _ = last.accept()
    conn.sendall(f"ok {os.getpid()}\n".encode())
    conn.close()
