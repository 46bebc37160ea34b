"""GPU identity: which GPUs this host has, what they are, how much memory is free.

Identity comes from the driver API (``cuDeviceGet*``), which needs ``cuInit`` but no
context. Free memory and per-process usage come from NVML: ``cuMemGetInfo`` would
need a context, and a context in the agent costs GPU memory on every GPU it touches.

``index`` is the CUDA ordinal *as seen by this process* (it follows
``CUDA_VISIBLE_DEVICES``); the UUID is what identifies a GPU across processes and
hosts, and what the checkpoint API's ``gpuPairs`` take.
"""

from __future__ import annotations

import ctypes
import re
from thaw import proc
from thaw.cuda import native
from thaw.errors import CudaError
from thaw.cuda.device import _device, device_uuid
from thaw.gpuid import normalize_uuid
from thaw.model.gpu import GpuInfo


#: what cuInit answers on a host whose driver loads but has no GPU (cuda.h: CUDA_ERROR_NO_DEVICE)
CUDA_ERROR_NO_DEVICE = 100


def available() -> bool:
    """True when the NVIDIA driver loads, initialises and reports at least one GPU.

    False without the driver library or without a GPU; a driver that is there but broken
    (a library/kernel-module mismatch, a failed cuInit) raises CudaError: "no GPUs" would
    hide it, and a GPU restore would then be refused for the wrong reason.
    """
    if native.load_cuda() is None:
        return False
    try:
        return device_count() > 0
    except CudaError as exc:
        if exc.code == CUDA_ERROR_NO_DEVICE:
            return False
        raise


def device_count() -> int:
    count = ctypes.c_int(0)
    native.cuda_call("cuDeviceGetCount", ctypes.byref(count))
    return count.value


def devices() -> list[GpuInfo]:
    """Every GPU visible to this process, in CUDA ordinal order; [] where there is none."""
    if not available():
        return []
    version = driver_version()
    return [_describe(i, version) for i in range(device_count())]


def driver_version() -> str:
    """The display driver version ("580.159.04"), or "" where it cannot be read."""
    nvml = native.load_nvml()
    if nvml is not None and nvml.has("nvmlSystemGetDriverVersion"):
        buf = ctypes.create_string_buffer(96)
        if nvml["nvmlSystemGetDriverVersion"](buf, len(buf)) == native.NVML_SUCCESS:
            return buf.value.decode()
    # "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build ..."
    text = proc.nvidia_version_line()
    if text is None:
        return ""
    found = re.search(r"\s(\d+\.\d+(?:\.\d+)?)\s", text)
    return found.group(1) if found else ""


def cuda_version() -> int:
    """The CUDA API version the driver implements (13000 for CUDA 13.0), or 0 without a driver."""
    if native.load_cuda() is None:
        return 0
    version = ctypes.c_int(0)
    try:
        native.cuda_call("cuDriverGetVersion", ctypes.byref(version))
    except CudaError:
        return 0
    return version.value


def memory_free(uuid: str) -> int | None:
    """Free bytes on the GPU with this UUID (NVML), or None where NVML cannot tell."""
    handle = _nvml_handle(uuid)
    if handle is None:
        return None
    mem = native.NvmlMemory()
    nvml = native.load_nvml()
    if nvml is None or nvml["nvmlDeviceGetMemoryInfo"](handle, ctypes.byref(mem)) != native.NVML_SUCCESS:
        return None
    return int(mem.free)


def process_memory(uuid: str, pids: set[int]) -> int | None:
    """Bytes of the GPU with this UUID used by the given (host) pids, from NVML; None if NVML cannot tell.

    NVML reports pids in the caller's pid namespace, so the agent (host namespace) passes host pids.
    """
    handle = _nvml_handle(uuid)
    nvml = native.load_nvml()
    if handle is None or nvml is None:
        return None
    rows = _processes_detail(nvml, handle)
    if rows is None:
        rows = _processes_v2(nvml, handle)
    if rows is None:
        return None
    mine = [used for pid, used in rows if pid in pids]
    if any(used == _NVML_VALUE_NOT_AVAILABLE for used in mine):
        return None  # NVML may withhold per-process usage (e.g. without permission)
    return sum(mine)


_NVML_VALUE_NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF  # nvml.h NVML_VALUE_NOT_AVAILABLE for unsigned long long


# --- internals -----------------------------------------------------------------------------------


def _describe(index: int, version: str) -> GpuInfo:
    dev = _device(index)
    name = ctypes.create_string_buffer(256)
    native.cuda_call("cuDeviceGetName", name, len(name), dev)
    total = ctypes.c_size_t(0)
    native.cuda_call("cuDeviceTotalMem_v2", ctypes.byref(total), dev)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    for value, attribute in ((major, native.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
                             (minor, native.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)):
        native.cuda_call("cuDeviceGetAttribute", ctypes.byref(value), attribute, dev)
    uuid = device_uuid(index)
    return GpuInfo(
        index=index,
        uuid=uuid,
        name=name.value.decode(errors="replace"),
        memory_total=int(total.value),
        memory_free=memory_free(uuid),
        driver_version=version,
        compute_capability=f"{major.value}.{minor.value}",
    )


def _nvml_handle(uuid: str) -> ctypes.c_void_p | None:
    nvml = native.load_nvml()
    if nvml is None:
        return None
    handle = ctypes.c_void_p()
    if nvml["nvmlDeviceGetHandleByUUID"](normalize_uuid(uuid).encode(), ctypes.byref(handle)) != native.NVML_SUCCESS:
        return None
    return handle


def _processes_detail(nvml: native.Library, handle: ctypes.c_void_p) -> list[tuple[int, int]] | None:
    """nvmlDeviceGetRunningProcessDetailList (driver >= 550): a versioned struct, so no size guessing."""
    if not nvml.has("nvmlDeviceGetRunningProcessDetailList"):
        return None
    fn = nvml["nvmlDeviceGetRunningProcessDetailList"]
    for _ in range(3):  # the process list can grow between the sizing call and the real one
        plist = native.NvmlProcessDetailList(version=native.NVML_PROCESS_DETAIL_LIST_V1,
                                             mode=native.NVML_PROCESS_MODE_COMPUTE)
        rc = fn(handle, ctypes.byref(plist))
        if rc == native.NVML_SUCCESS and plist.numProcArrayEntries == 0:
            return []
        if rc not in (native.NVML_SUCCESS, native.NVML_ERROR_INSUFFICIENT_SIZE):
            return None
        n = plist.numProcArrayEntries + 4
        rows = (native.NvmlProcessDetail * n)()
        plist.numProcArrayEntries = n
        plist.procArray = ctypes.cast(rows, ctypes.POINTER(native.NvmlProcessDetail))
        rc = fn(handle, ctypes.byref(plist))
        if rc == native.NVML_SUCCESS:
            return [(int(rows[i].pid), int(rows[i].usedGpuMemory)) for i in range(plist.numProcArrayEntries)]
        if rc != native.NVML_ERROR_INSUFFICIENT_SIZE:
            return None
    return None


def _processes_v2(nvml: native.Library, handle: ctypes.c_void_p) -> list[tuple[int, int]] | None:
    if not nvml.has("nvmlDeviceGetComputeRunningProcesses_v2"):
        return None
    fn = nvml["nvmlDeviceGetComputeRunningProcesses_v2"]
    count = ctypes.c_uint(64)
    rows = (native.NvmlProcessInfoV2 * 64)()
    if fn(handle, ctypes.byref(count), rows) != native.NVML_SUCCESS:
        return None
    return [(int(rows[i].pid), int(rows[i].usedGpuMemory)) for i in range(count.value)]
