"""CRIU's RPC messages: thaw's subset must put every option under CRIU's own field number.

The numbers below are those of ``images/rpc.proto`` in CRIU 4.x; a wrong one would
not fail loudly, CRIU would silently read another option. The wire format is decoded
here by hand, independently of thaw's message classes.
"""

from __future__ import annotations

from thaw.criu import messages


def wire_fields(data: bytes) -> dict[int, list]:
    """Decode one protobuf message's fields: number -> values (ints, or bytes for length-delimited)."""
    out: dict[int, list] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            b = data[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value: int | bytes = varint()
        elif wire == 2:
            n = varint()
            value, i = data[i:i + n], i + n
        else:
            raise AssertionError(f"unexpected wire type {wire} for field {number}")
        out.setdefault(number, []).append(value)
    return out


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


def test_a_request_puts_each_option_under_criu_s_field_number() -> None:
    req = messages.Request(type=messages.RESTORE)
    o = req.opts
    o.images_dir_fd, o.pid, o.leave_running, o.file_locks = 7, 42, True, True
    o.log_level, o.log_file, o.root, o.work_dir_fd = 4, "restore.log", "/", 8
    o.rst_sibling, o.timeout = True, 120
    o.inherit_fd.add(key="thaw-netns", fd=9)
    o.manage_cgroups_mode = messages.CG_IGNORE
    o.external.extend(["mnt[thaw_dev]:/dev", "net[4026532000]:thaw-netns"])
    o.join_ns.add(ns="net", ns_file="/proc/1/ns/net")
    o.network_lock = messages.NETWORK_LOCK_SKIP

    top = wire_fields(req.SerializeToString())
    opts = wire_fields(top[2][0])

    assert top[1] == [2]  # criu_req.type = 1; RESTORE = 2
    assert opts[1] == [7]  # images_dir_fd
    assert opts[2] == [42]  # pid
    assert opts[3] == [1]  # leave_running
    assert opts[8] == [1]  # file_locks
    assert opts[9] == [4]  # log_level
    assert opts[10] == [b"restore.log"]  # log_file
    assert opts[13] == [b"/"]  # root
    assert opts[17] == [8]  # work_dir_fd
    assert opts[26] == [1]  # rst_sibling
    assert wire_fields(opts[27][0]) == {1: [b"thaw-netns"], 2: [9]}  # inherit_fd {key = 1, fd = 2}
    assert opts[34] == [0]  # manage_cgroups_mode; IGNORE = 0, sent although it is the default
    assert opts[37] == [b"mnt[thaw_dev]:/dev", b"net[4026532000]:thaw-netns"]  # external
    assert wire_fields(opts[39][0]) == {1: [b"net"], 2: [b"/proc/1/ns/net"]}  # join_ns {ns = 1, ns_file = 2}
    assert opts[45] == [120]  # timeout
    assert opts[64] == [3]  # network_lock; SKIP = 3
    assert set(opts) == {1, 2, 3, 8, 9, 10, 13, 17, 26, 27, 34, 37, 39, 45, 64}


def test_request_types_have_criu_s_numbers() -> None:
    for kind, number in ((messages.DUMP, 1), (messages.RESTORE, 2), (messages.CHECK, 3), (messages.VERSION, 10)):
        assert wire_fields(messages.Request(type=kind).SerializeToString()) == {1: [number]}


def test_a_response_is_read_from_criu_s_field_numbers() -> None:
    data = (field(1, 2) + field(2, 0) + field(4, field(1, 4242)) + field(7, 5)
            + field(9, b"Restoring FAILED.") + field(11, 7))  # 11 (status) is not in thaw's subset

    resp = messages.Response()
    resp.ParseFromString(data)

    assert resp.type == messages.RESTORE
    assert resp.success is False
    assert resp.restore.pid == 4242
    assert resp.cr_errno == 5
    assert resp.cr_errmsg == "Restoring FAILED."


def test_a_dump_response_decodes_and_fields_thaw_does_not_use_are_skipped() -> None:
    resp = messages.Response()
    # 10 is CRIU's version answer: not in thaw's subset, skipped like any unknown field
    resp.ParseFromString(field(1, 1) + field(2, 1) + field(3, field(1, 1))
                         + field(10, field(1, 4) + field(2, 1) + field(6, b"CRIUDA")))

    assert resp.success and resp.dump.restored
