"""The control-directory protocol: atomic JSON files and tolerant decoding."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from thaw.worker import protocol
from thaw.worker.protocol import Action, Command, ReadyMarker, Reply


def test_write_json_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "command.json"
    protocol.write_json_atomic(path, {"n": 1})
    protocol.write_json_atomic(path, {"n": 2, "action": Action.THAW, "where": tmp_path})

    assert json.loads(path.read_text()) == {"n": 2, "action": "thaw", "where": str(tmp_path)}
    assert sorted(os.listdir(tmp_path)) == ["command.json"]


def test_a_value_that_is_not_json_fails_and_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "reply.json"
    protocol.write_json_atomic(path, {"ok": True})

    with pytest.raises(TypeError, match="cannot encode object"):
        protocol.write_json_atomic(path, {"x": object()})

    assert protocol.read_json(path) == {"ok": True}
    assert sorted(os.listdir(tmp_path)) == ["reply.json"]


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "ready.json"
    big = {"canary": list(range(5_000))}
    protocol.write_json_atomic(path, big)
    stop = threading.Event()
    seen: list[object] = []

    def read() -> None:
        while not stop.is_set():
            seen.append(protocol.read_json(path))  # raises on a torn file

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(200):
            protocol.write_json_atomic(path, {**big, "i": i})
    finally:
        stop.set()
        reader.join()
    assert seen and all(isinstance(s, dict) and s["canary"] == big["canary"] for s in seen)


def test_read_json_of_a_missing_file_is_none(tmp_path: Path) -> None:
    assert protocol.read_json(tmp_path / "nothing.json") is None


def test_messages_round_trip_through_json(tmp_path: Path) -> None:
    marker = ReadyMarker(name="w", pid=1, pidns=4026531836, canary={"ids": [1, 2]}, hooks=["kv"], at=1.5)
    cmd = Command(id="c1", action=Action.THAW, info={"artifact": "a1"}, verify=True)
    reply = Reply(id="c1", ok=False, error="boom", data={"kv": {"seconds": 0.1}}, canary=[3], at=2.0)
    for name, obj, decode in (("r", marker, protocol.decode_ready), ("c", cmd, protocol.decode_command),
                              ("p", reply, protocol.decode_reply)):
        protocol.write_json_atomic(tmp_path / name, protocol.encode(obj))
        assert decode(protocol.read_json(tmp_path / name)) == obj
    assert protocol.decode_command(protocol.read_json(tmp_path / "c")).action is Action.THAW


def test_fields_added_by_a_newer_peer_are_ignored() -> None:
    raw = {"id": "c1", "action": "stop", "info": {}, "verify": False, "protocol": 1, "priority": "high"}
    assert protocol.decode_command(raw) == Command(id="c1", action=Action.STOP)
    assert protocol.decode_reply({"id": "c1", "ok": True, "new": 1}) == Reply(id="c1", ok=True)


def test_an_unknown_action_is_refused() -> None:
    with pytest.raises(ValueError):
        protocol.decode_command({"id": "c1", "action": "explode"})


def test_the_namespace_link_is_named_by_the_pid_namespace_inode_and_netns_cookie(tmp_path: Path) -> None:
    inode = protocol.pidns_inode()
    assert inode == os.stat("/proc/self/ns/pid").st_ino
    key = protocol.sandbox_key()
    assert key.startswith(f"{inode}-")
    # from the host, a sandbox is named by one of its processes: here this process stands in for one
    assert protocol.sandbox_key(os.getpid()) == key
    assert protocol.ns_link(tmp_path, key) == tmp_path / "ns" / key
