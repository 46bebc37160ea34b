"""CRIU's RPC messages, built at import time from a field list (no generated code, no protoc).

Only the fields thaw uses are declared, with CRIU's own field numbers from
``images/rpc.proto`` (protobuf ignores fields it does not know, so a subset is
wire-compatible). Adding an option means adding one line below with its number.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REQ, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REQUIRED, _F.LABEL_REPEATED
_TYPES = {
    "int32": _F.TYPE_INT32,
    "uint32": _F.TYPE_UINT32,
    "bool": _F.TYPE_BOOL,
    "string": _F.TYPE_STRING,
}

# (message, [(field, number, label, type or message/enum name)])
_MESSAGES: list[tuple[str, list[tuple[str, int, int, str]]]] = [
    ("join_namespace", [("ns", 1, _REQ, "string"), ("ns_file", 2, _REQ, "string")]),
    ("inherit_fd", [("key", 1, _REQ, "string"), ("fd", 2, _REQ, "int32")]),
    ("criu_opts", [
        ("images_dir_fd", 1, _REQ, "int32"),
        ("pid", 2, _OPT, "int32"),
        ("leave_running", 3, _OPT, "bool"),
        ("file_locks", 8, _OPT, "bool"),
        ("log_level", 9, _OPT, "int32"),
        ("log_file", 10, _OPT, "string"),
        ("root", 13, _OPT, "string"),
        ("work_dir_fd", 17, _OPT, "int32"),
        ("link_remap", 18, _OPT, "bool"),
        ("rst_sibling", 26, _OPT, "bool"),
        ("inherit_fd", 27, _REP, ".inherit_fd"),
        ("manage_cgroups_mode", 34, _OPT, ".criu_cg_mode"),
        ("external", 37, _REP, "string"),
        ("join_ns", 39, _REP, ".join_namespace"),
        ("timeout", 45, _OPT, "uint32"),
        ("network_lock", 64, _OPT, ".criu_network_lock_method"),
    ]),
    ("criu_dump_resp", [("restored", 1, _OPT, "bool")]),
    ("criu_restore_resp", [("pid", 1, _REQ, "int32")]),
    ("criu_req", [
        ("type", 1, _REQ, ".criu_req_type"),
        ("opts", 2, _OPT, ".criu_opts"),
    ]),
    ("criu_resp", [
        ("type", 1, _REQ, ".criu_req_type"),
        ("success", 2, _REQ, "bool"),
        ("dump", 3, _OPT, ".criu_dump_resp"),
        ("restore", 4, _OPT, ".criu_restore_resp"),
        ("cr_errno", 7, _OPT, "int32"),
        ("cr_errmsg", 9, _OPT, "string"),
    ]),
]

_ENUMS = {
    "criu_req_type": [("EMPTY", 0), ("DUMP", 1), ("RESTORE", 2), ("CHECK", 3), ("PRE_DUMP", 4),
                      ("PAGE_SERVER", 5), ("NOTIFY", 6), ("CPUINFO_DUMP", 7), ("CPUINFO_CHECK", 8),
                      ("FEATURE_CHECK", 9), ("VERSION", 10), ("WAIT_PID", 11)],
    "criu_network_lock_method": [("IPTABLES", 1), ("NFTABLES", 2), ("SKIP", 3)],
    "criu_cg_mode": [("IGNORE", 0), ("CG_NONE", 1), ("PROPS", 2), ("SOFT", 3), ("FULL", 4), ("STRICT", 5),
                     ("DEFAULT", 6)],
}


def _build() -> dict[str, type]:
    fdp = descriptor_pb2.FileDescriptorProto(name="thaw_criu_rpc.proto", syntax="proto2")
    for name, values in _ENUMS.items():
        enum = fdp.enum_type.add(name=name)
        for vname, number in values:
            enum.value.add(name=vname, number=number)
    for name, fields in _MESSAGES:
        msg = fdp.message_type.add(name=name)
        for fname, number, label, ftype in fields:
            field = msg.field.add(name=fname, number=number, label=label)
            if ftype in _TYPES:
                field.type = _TYPES[ftype]
            else:
                field.type = _F.TYPE_ENUM if ftype.lstrip(".") in _ENUMS else _F.TYPE_MESSAGE
                field.type_name = ftype
    pool = descriptor_pool.DescriptorPool()
    fd = pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name)) for name, _ in _MESSAGES} | {
        "_file": fd
    }


# message classes are made at run time: to a type checker their instances are Any
_classes: dict[str, Any] = _build()
Request = _classes["criu_req"]
Response = _classes["criu_resp"]
Options = _classes["criu_opts"]

DUMP, RESTORE, CHECK, VERSION = 1, 2, 3, 10
CG_IGNORE, CG_SOFT = 0, 3
NETWORK_LOCK_SKIP = 3
