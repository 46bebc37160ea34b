"""A stand-in for ``criu swrk FD`` that speaks CRIU's RPC, for failure paths real CRIU does not produce on demand.

It reads one request, writes a CRIU-style log where the request says (through our
``work_dir_fd``, as CRIU does), records what it received in ``$FAKE_CRIU_RECORD``, and
answers as ``$FAKE_CRIU_MODE`` says:

    harmless-first   fail, with a harmless RLIMIT_NOFILE line as cr_errmsg (CRIU keeps its first error)
    fail             fail with cr_errmsg "Restoring FAILED." and a real error in the log
    silent           exit without answering
    hang             never answer
    ok               succeed (a restore answers pid 4242)
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from google.protobuf import json_format

from thaw.criu import messages

RLIMIT = "(00.023261) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted"
REAL = "(00.031000) Error (criu/mount.c:2903): mnt: No mapping for 123:(null) mountpoint"


def main() -> None:
    assert sys.argv[1] == "swrk"
    sk = socket.socket(fileno=int(sys.argv[2]))
    req = messages.Request()
    req.ParseFromString(sk.recv(1 << 20))
    mode = os.environ.get("FAKE_CRIU_MODE", "ok")
    opts = req.opts
    if opts.log_file:
        with open(f"/proc/{os.getppid()}/fd/{opts.work_dir_fd}/{opts.log_file}", "w") as f:
            f.write("(00.000100) Version: 4.1 (gitid 0)\n" + RLIMIT + "\n")
            if mode == "harmless-first":  # CRIU answered with the harmless line; the log has the real error last
                f.write(REAL + "\n(00.031100) restoring went wrong\n")
            if mode == "fail":
                f.write(REAL + "\n(00.031100) Error (criu/cr-restore.c:2447): Restoring FAILED.\n")
    with open(os.environ["FAKE_CRIU_RECORD"], "w") as f:
        json.dump({"request": json_format.MessageToDict(req, preserving_proto_field_name=True),
                   "inherited_open": {i.key: _is_open(i.fd) for i in opts.inherit_fd}}, f)
    resp = messages.Response(type=req.type, success=mode == "ok")
    if mode == "harmless-first":
        resp.cr_errmsg, resp.cr_errno = RLIMIT.split(": ", 1)[1], 1
    elif mode == "fail":
        resp.cr_errmsg, resp.cr_errno = "Restoring FAILED.", 2
    elif mode == "silent":
        print("fake criu: giving up", file=sys.stderr)
        sys.exit(1)
    elif mode == "hang":
        time.sleep(60)
    elif req.type == messages.RESTORE:
        resp.restore.pid = 4242
    sk.send(resp.SerializeToString())


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


if __name__ == "__main__":
    main()
