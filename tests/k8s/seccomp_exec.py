"""Run a command under a seccomp profile in the OCI JSON format the kubelet uses, loaded with libseccomp.

    python seccomp_exec.py PROFILE.json -- COMMAND [ARGS...]

The k8s tests run their workers under worker-seccomp.json this way, as a pod's container runs
under its runtime's default profile: the agent must then checkpoint and restore a process that
has a seccomp filter. It reads what that profile uses: defaultAction, and per-syscall
SCMP_ACT_ERRNO/ALLOW/KILL rules without argument filters, for the native architecture.
No-new-privs is left off (loading then needs CAP_SYS_ADMIN), so the worker's credentials are
what they would be without the filter.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys

SCMP_ACT_KILL = 0x00000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_FLTATR_CTL_NNP = 3


def act(action: str, errno: int = 1) -> int:
    if action == "SCMP_ACT_ALLOW":
        return SCMP_ACT_ALLOW
    if action == "SCMP_ACT_ERRNO":
        return 0x00050000 | (errno & 0xFFFF)
    if action in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return SCMP_ACT_KILL
    raise SystemExit(f"seccomp_exec: unsupported action {action}")


def load(profile: dict) -> None:
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(act(profile["defaultAction"]))
    if not ctx:
        raise SystemExit("seccomp_exec: seccomp_init failed")
    if lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0) != 0:
        raise SystemExit("seccomp_exec: cannot turn no-new-privs off")
    for rule in profile.get("syscalls", []):
        if rule.get("args"):
            raise SystemExit("seccomp_exec: argument filters are not supported")
        action = act(rule["action"], rule.get("errnoRet", 1))
        for name in rule["names"]:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue  # not a syscall of this architecture (e.g. vm86 on x86_64)
            rc = lib.seccomp_rule_add(ctx, action, nr, 0)
            if rc != 0:
                raise SystemExit(f"seccomp_exec: rule for {name} failed: {rc}")
    rc = lib.seccomp_load(ctx)
    if rc != 0:
        raise SystemExit(f"seccomp_exec: seccomp_load failed: {rc}")


def main() -> None:
    args = sys.argv[1:]
    if len(args) < 3 or args[1] != "--":
        raise SystemExit(__doc__)
    with open(args[0]) as f:
        load(json.load(f))
    os.execvp(args[2], args[2:])


if __name__ == "__main__":
    main()
