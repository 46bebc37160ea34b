"""Sockets a worker must not hold when it is snapshotted, found before the freeze and named in the error.

A worker opens its sockets after ``quiesce()`` returns (README, worker SDK). One that opened
a TCP or UDP socket before got CRIU's own text instead (``sockets: Can't get 1:16 opt:
Operation not supported`` — CRIU 4.1 cannot dump any inet socket on Linux >= 6.16,
checkpoint-restore/criu#2705 — or a hint to use ``--tcp-established``, which thaw has no
option for); one connected to a unix socket outside its sandbox got ``External socket is
used``. Now: inet sockets are found in /proc before anything is frozen, and CRIU's unix
refusal is turned into one error naming the socket; both say what to do.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from thaw import proc
from thaw.errors import CheckpointError, CriuError

FIX = ("open sockets after thaw.worker.quiesce() returns, and close connections to other services before it "
       "(a server thaw does not own: thaw run --park-at-listen); nothing was frozen")
_TCP_STATES = {"01": "established", "02": "syn-sent", "03": "syn-received", "04": "fin-wait", "05": "fin-wait",
               "06": "time-wait", "07": "closed", "08": "close-wait", "09": "last-ack", "0A": "listening",
               "0B": "closing"}
_RUNAWAY = re.compile(r"Runaway socket: ino (\d+) .* name (.+)$")


@dataclass(frozen=True)
class HeldSocket:
    pid: int  # host pid of the process holding it
    fd: int
    proto: str  # TCP, UDP, TCP6, UDP6
    local: str  # address:port
    state: str

    def describe(self) -> str:
        return f"{self.proto} {self.local} ({self.state}; pid {self.pid}, fd {self.fd})"


def refuse_inet(worker: str, root_pid: int) -> None:
    """CheckpointError naming every TCP/UDP socket the sandbox rooted at ``root_pid`` holds; nothing if none."""
    held = inet_sockets(proc.descendants(root_pid))
    if held:
        names = "; ".join(s.describe() for s in held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise CheckpointError(f"snapshot of {worker!r} refused: it holds {'a socket' if len(held) == 1 else 'sockets'}"
                              f" CRIU cannot snapshot: {names}", hint=FIX)


def explain_dump_failure(worker: str, exc: CriuError, log: Path) -> CheckpointError | None:
    """The error to raise instead of CRIU's, when CRIU refused a unix socket connected outside the sandbox."""
    if "External socket is used" not in exc.criu_message + exc.log_tail:
        return None
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    names = [m[2].strip() for line in lines if (m := _RUNAWAY.search(line))]
    what = ", ".join(dict.fromkeys(names)) or "a peer outside the sandbox"
    return CheckpointError(f"snapshot of {worker!r} failed: it holds a unix socket connected to {what}, outside its "
                           f"sandbox; CRIU cannot snapshot that (External socket is used)",
                           hint=FIX.replace("nothing was frozen", "the worker is parked as before"))


def inet_sockets(pids: list[int]) -> list[HeldSocket]:
    """The TCP and UDP sockets (IPv4 and IPv6) the processes ``pids`` hold, as their network namespace lists them."""
    held = []
    for pid in pids:
        inodes = _socket_fds(pid)
        if not inodes:
            continue
        table = _inet_table(pid)
        for inode, fd in inodes.items():
            if inode in table:
                proto, local, state = table[inode]
                held.append(HeldSocket(pid, fd, proto, local, state))
    return held


def _socket_fds(pid: int) -> dict[int, int]:
    """Socket inode → the descriptor of ``pid`` that holds it."""
    try:
        targets = proc.fd_targets(pid)
    except OSError:
        return {}
    return {int(t[8:-1]): fd for fd, t in targets.items() if t.startswith("socket:[")}


def _inet_table(pid: int) -> dict[int, tuple[str, str, str]]:
    """inode → (protocol, local address, state) from the net/{tcp,tcp6,udp,udp6} tables of ``pid``'s netns."""
    table = {}
    for name in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = proc.net_table(pid, name)
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            udp = name.startswith("udp")
            state = "open" if udp else _TCP_STATES.get(fields[3], fields[3])
            table[int(fields[9])] = (name.upper(), _address(fields[1]), state)
    return table


def _address(hex_addr: str) -> str:
    """``0100007F:1F40`` → ``127.0.0.1:8000`` (the kernel prints each 32-bit word in host order)."""
    addr, port = hex_addr.split(":")
    raw = b"".join(struct.pack("<I", int(addr[i:i + 8], 16)) for i in range(0, len(addr), 8))
    ip = ipaddress.ip_address(raw)
    return f"[{ip}]:{int(port, 16)}" if ip.version == 6 else f"{ip}:{int(port, 16)}"
