"""A fake libcuda and NVML for thaw.cuda's CPU tests (imported by conftest.py and the tests).

The fakes stand in for :class:`thaw.cuda.native.Library` *behind* ``native.cuda_call``:
thaw's own code (devices, checkpointing, steps) runs unchanged down to the foreign call,
and the fake reads the very ctypes structs thaw built (raw bytes included), so struct
layouts and argument passing are exercised too. (A module of its own, with a name no other
test directory uses: conftest modules are not importable by name.)
"""

from __future__ import annotations

import ctypes
from typing import Any

from thaw.cuda import native
from thaw.cuda.gpus import format_uuid

H200 = ("NVIDIA H200", bytes.fromhex("5f1e0c3a9b7d4e21a0b1c2d3e4f50617"), 150_000_000_000, (9, 0))
H200_B = ("NVIDIA H200", bytes.fromhex("00112233445566778899aabbccddeeff"), 150_000_000_000, (9, 0))

RUNNING, LOCKED, CHECKPOINTED, FAILED = 0, 1, 2, 3


class FakeCuda:
    """A toy driver: a few GPUs and a checkpoint state machine per pid, with injectable errors."""

    def __init__(self, gpus: list[tuple[str, bytes, int, tuple[int, int]]] | None = None) -> None:
        self.gpus = list(gpus if gpus is not None else [H200])
        self.states: dict[int, int] = {}
        self.errors: dict[str, list[int]] = {}  # call → codes to return next, in order
        self.calls: list[tuple[str, Any]] = []
        self.lock_timeouts: list[int] = []
        self.restore_pairs: list[list[tuple[bytes, bytes]]] = []
        self.restore_raw: list[bytes] = []
        self.cu_init_code = 0
        self.functions = {name: getattr(self, name) for name in native.CUDA_SIGNATURES if hasattr(self, name)}

    # what native.Library offers
    def has(self, name: str) -> bool:
        return name in self.functions

    def __getitem__(self, name: str) -> Any:
        return self.functions[name]

    def fail(self, call: str, code: int) -> None:
        self.errors.setdefault(call, []).append(code)

    def _injected(self, call: str, arg: Any = None) -> int:
        self.calls.append((call, arg))
        queue = self.errors.get(call)
        return queue.pop(0) if queue else 0

    # --- driver functions --------------------------------------------------------------------
    def cuInit(self, flags: int) -> int:
        self.calls.append(("cuInit", flags))
        return self.cu_init_code

    def cuGetErrorName(self, code: int, out: Any) -> int:
        if code not in native.KNOWN_ERRORS:
            return 1
        out._obj.value = native.KNOWN_ERRORS[code].encode()
        return 0

    def cuDriverGetVersion(self, out: Any) -> int:
        out._obj.value = 13000
        return 0

    def cuDeviceGetCount(self, out: Any) -> int:
        out._obj.value = len(self.gpus)
        return 0

    def cuDeviceGet(self, out: Any, ordinal: int) -> int:
        if not 0 <= ordinal < len(self.gpus):
            return 101
        out._obj.value = ordinal
        return 0

    def cuDeviceGetName(self, buf: Any, size: int, dev: int) -> int:
        buf.value = self.gpus[dev][0].encode()[: size - 1]
        return 0

    def cuDeviceGetUuid_v2(self, out: Any, dev: int) -> int:
        ctypes.memmove(out._obj.bytes, self.gpus[dev][1], 16)
        return 0

    def cuDeviceTotalMem_v2(self, out: Any, dev: int) -> int:
        out._obj.value = self.gpus[dev][2]
        return 0

    def cuDeviceGetAttribute(self, out: Any, attribute: int, dev: int) -> int:
        major, minor = self.gpus[dev][3]
        out._obj.value = {native.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: major,
                          native.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: minor}[attribute]
        return 0

    # --- the checkpoint API, with the driver's state rules ---------------------------------------
    def cuCheckpointProcessGetState(self, pid: int, out: Any) -> int:
        if pid not in self.states:
            return 1
        code = self._injected("cuCheckpointProcessGetState", pid)
        if code:
            return code
        out._obj.value = self.states[pid]
        return 0

    def cuCheckpointProcessGetRestoreThreadId(self, pid: int, out: Any) -> int:
        if pid not in self.states:
            return 1  # a process without CUDA state has no restore thread (CRIU's CUDA plugin relies on it)
        out._obj.value = pid + 1
        return self._injected("cuCheckpointProcessGetRestoreThreadId", pid)

    def cuCheckpointProcessLock(self, pid: int, args: Any) -> int:
        self.lock_timeouts.append(int.from_bytes(ctypes.string_at(ctypes.addressof(args._obj), 4), "little"))
        return self._move(pid, "cuCheckpointProcessLock", RUNNING, LOCKED)

    def cuCheckpointProcessCheckpoint(self, pid: int, args: Any) -> int:
        return self._move(pid, "cuCheckpointProcessCheckpoint", LOCKED, CHECKPOINTED)

    def cuCheckpointProcessRestore(self, pid: int, args: Any) -> int:
        raw = ctypes.string_at(ctypes.addressof(args._obj), ctypes.sizeof(args._obj))
        self.restore_raw.append(raw)
        pointer = int.from_bytes(raw[0:8], "little")
        count = int.from_bytes(raw[8:12], "little")
        table = ctypes.string_at(pointer, 32 * count) if count else b""
        self.restore_pairs.append([(table[i:i + 16], table[i + 16:i + 32]) for i in range(0, len(table), 32)])
        return self._move(pid, "cuCheckpointProcessRestore", CHECKPOINTED, LOCKED)

    def cuCheckpointProcessUnlock(self, pid: int, args: Any) -> int:
        return self._move(pid, "cuCheckpointProcessUnlock", LOCKED, RUNNING)

    def _move(self, pid: int, call: str, source: int, target: int) -> int:
        if pid not in self.states:
            return 1
        code = self._injected(call, pid)
        if code:
            return code
        if self.states[pid] != source:
            return 401  # CUDA_ERROR_ILLEGAL_STATE
        self.states[pid] = target
        return 0


class FakeNvml:
    """The NVML calls thaw makes, over fixed per-GPU free memory and per-process usage."""

    def __init__(self, free: dict[str, int], processes: dict[str, list[tuple[int, int]]]) -> None:
        self.free = free
        self.processes = processes
        self.handles: dict[int, str] = {}
        self.functions = {name: getattr(self, name) for name in native.NVML_SIGNATURES if hasattr(self, name)}

    def has(self, name: str) -> bool:
        return name in self.functions

    def __getitem__(self, name: str) -> Any:
        return self.functions[name]

    def nvmlSystemGetDriverVersion(self, buf: Any, size: int) -> int:
        buf.value = b"580.159.04"
        return 0

    def nvmlDeviceGetHandleByUUID(self, uuid: bytes, out: Any) -> int:
        text = uuid.decode()
        if text not in self.free:
            return 13
        handle = 1000 + len(self.handles)
        self.handles[handle] = text
        out._obj.value = handle
        return 0

    def nvmlDeviceGetMemoryInfo(self, handle: Any, out: Any) -> int:
        out._obj.free = self.free[self.handles[handle.value]]
        return 0

    def nvmlDeviceGetRunningProcessDetailList(self, handle: Any, plist_ref: Any) -> int:
        plist = plist_ref._obj
        if plist.version != native.NVML_PROCESS_DETAIL_LIST_V1:
            return 25  # NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        rows = self.processes.get(self.handles[handle.value], [])
        if plist.numProcArrayEntries < len(rows):
            plist.numProcArrayEntries = len(rows)
            return native.NVML_ERROR_INSUFFICIENT_SIZE
        for i, (pid, used) in enumerate(rows):
            plist.procArray[i].pid = pid
            plist.procArray[i].usedGpuMemory = used
        plist.numProcArrayEntries = len(rows)
        return 0


def uuid_of(raw: bytes) -> str:
    return format_uuid(raw)
