"""Every ctypes declaration thaw makes: libcuda.so.1 (driver API) and libnvidia-ml.so.1 (NVML).

This is the only place that names a C symbol, spells a C struct or picks an argument
type; :mod:`thaw.cuda` and :mod:`thaw.memory` call through :func:`cuda_call` and
:func:`nvml`. Checked against CUDA 13.0's ``cuda.h`` (driver 580, the H200 probe
machine) and NVML's ``nvml.h``.

Why the symbol names carry suffixes: ``cuda.h`` maps many names to versioned
symbols with ``#define`` (``cuMemcpyDtoH`` → ``cuMemcpyDtoH_v2``, ...). ctypes sees
no header, so an unversioned name resolves to the *oldest* ABI the driver still
exports (for ``cuMemcpyDtoH`` that one takes a 32-bit device pointer). Every
function below is named by the exact symbol whose signature is written next to it.

Nothing here raises on a machine without NVIDIA: :func:`load_cuda` and
:func:`load_nvml` return None when the library is absent.
"""

from __future__ import annotations

import ctypes
import threading
from ctypes import (
    POINTER,
    Structure,
    c_char,
    c_char_p,
    c_int,
    c_size_t,
    c_ubyte,
    c_uint,
    c_uint64,
    c_ulonglong,
    c_void_p,
)
from collections.abc import Mapping
from typing import Any

from thaw.errors import CudaError

CUresult = c_int
CUdevice = c_int
CUdeviceptr = c_uint64  # unsigned long long on every 64-bit platform CUDA supports
CUcontext = c_void_p
CUmemGenericAllocationHandle = c_uint64

CUDA_SUCCESS = 0
CUDA_ERROR_NOT_INITIALIZED = 3


# --- driver structs (cuda.h, CUDA 13.0) --------------------------------------------------


class CUuuid(Structure):
    _fields_ = [("bytes", c_ubyte * 16)]


class CUcheckpointLockArgs(Structure):
    # timeoutMs is the first field (probe: "CUcheckpointLockArgs.timeoutMs first field"); 64 bytes
    _fields_ = [("timeoutMs", c_uint), ("reserved0", c_uint), ("reserved1", c_uint64 * 7)]


class CUcheckpointCheckpointArgs(Structure):
    _fields_ = [("reserved", c_uint64 * 8)]


class CUcheckpointGpuPair(Structure):
    _fields_ = [("oldUuid", CUuuid), ("newUuid", CUuuid)]


class CUcheckpointRestoreArgs(Structure):
    # cuda.h 13.0: CUcheckpointGpuPair *gpuPairs; unsigned int gpuPairsCount;
    # char reserved[52 - sizeof(CUcheckpointGpuPair *)]; cuuint64_t reserved1;  → 64 bytes,
    # pointer at offset 0, count at offset 8 (the probe restored GPU 0 → 1 with this layout)
    _fields_ = [
        ("gpuPairs", POINTER(CUcheckpointGpuPair)),
        ("gpuPairsCount", c_uint),
        ("reserved", c_char * (52 - 8)),
        ("reserved1", c_uint64),
    ]


class CUcheckpointUnlockArgs(Structure):
    _fields_ = [("reserved", c_uint64 * 8)]


class CUmemLocation(Structure):
    _fields_ = [("type", c_int), ("id", c_int)]


class CUmemAllocFlags(Structure):
    _fields_ = [
        ("compressionType", c_ubyte),
        ("gpuDirectRDMACapable", c_ubyte),
        ("usage", ctypes.c_ushort),
        ("reserved", c_ubyte * 4),
    ]


class CUmemAllocationProp(Structure):
    # 32 bytes: type, requestedHandleTypes, location{type,id}, win32HandleMetaData, allocFlags
    _fields_ = [
        ("type", c_int),
        ("requestedHandleTypes", c_int),
        ("location", CUmemLocation),
        ("win32HandleMetaData", c_void_p),
        ("allocFlags", CUmemAllocFlags),
    ]


class CUmemAccessDesc(Structure):
    _fields_ = [("location", CUmemLocation), ("flags", c_int)]


# enum values (cuda.h)
CU_MEM_ALLOCATION_TYPE_PINNED = 0x1
CU_MEM_HANDLE_TYPE_NONE = 0x0
CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR = 0x1
CU_MEM_LOCATION_TYPE_DEVICE = 0x1
CU_MEM_ACCESS_FLAGS_PROT_READ = 0x1
CU_MEM_ACCESS_FLAGS_PROT_READWRITE = 0x3
CU_MEMHOSTALLOC_PORTABLE = 0x1  # pinned memory usable from every context (the loader's threads share it)
CU_STREAM_NON_BLOCKING = 0x1
CU_EVENT_DISABLE_TIMING = 0x2
CU_MEM_ALLOC_GRANULARITY_MINIMUM = 0x0
CU_MEM_ALLOC_GRANULARITY_RECOMMENDED = 0x1
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


# --- NVML structs (nvml.h) ----------------------------------------------------------------


class NvmlMemory(Structure):  # nvmlMemory_t (v1)
    _fields_ = [("total", c_ulonglong), ("free", c_ulonglong), ("used", c_ulonglong)]


class NvmlProcessDetail(Structure):  # nvmlProcessDetail_v1_t, 32 bytes
    _fields_ = [
        ("pid", c_uint),
        ("usedGpuMemory", c_ulonglong),
        ("gpuInstanceId", c_uint),
        ("computeInstanceId", c_uint),
        ("usedGpuCcProtectedMemory", c_ulonglong),
    ]


class NvmlProcessDetailList(Structure):  # nvmlProcessDetailList_v1_t, 24 bytes
    _fields_ = [
        ("version", c_uint),
        ("mode", c_uint),
        ("numProcArrayEntries", c_uint),
        ("procArray", POINTER(NvmlProcessDetail)),
    ]


class NvmlProcessInfoV2(Structure):  # nvmlProcessInfo_v2_t, 24 bytes (for the *_v2 fallback)
    _fields_ = [
        ("pid", c_uint),
        ("usedGpuMemory", c_ulonglong),
        ("gpuInstanceId", c_uint),
        ("computeInstanceId", c_uint),
    ]


# NVML_STRUCT_VERSION(ProcessDetailList, 1) = sizeof(struct) | 1 << 24. The list is versioned on
# purpose: nvmlProcessInfo_t changed size between NVML releases (24 ↔ 32 bytes), a versioned struct
# cannot be misread.
NVML_PROCESS_DETAIL_LIST_V1 = ctypes.sizeof(NvmlProcessDetailList) | (1 << 24)
NVML_PROCESS_MODE_COMPUTE = 0
NVML_SUCCESS = 0
NVML_ERROR_INSUFFICIENT_SIZE = 7


# --- signatures -----------------------------------------------------------------------------

_size_p = POINTER(c_size_t)

#: symbol → (restype, argtypes). One table, so a reviewer checks every signature in one place.
CUDA_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "cuInit": (CUresult, [c_uint]),
    "cuDriverGetVersion": (CUresult, [POINTER(c_int)]),
    "cuGetErrorName": (CUresult, [CUresult, POINTER(c_char_p)]),
    "cuGetErrorString": (CUresult, [CUresult, POINTER(c_char_p)]),
    # devices
    "cuDeviceGetCount": (CUresult, [POINTER(c_int)]),
    "cuDeviceGet": (CUresult, [POINTER(CUdevice), c_int]),
    "cuDeviceGetName": (CUresult, [c_char_p, c_int, CUdevice]),
    "cuDeviceGetUuid_v2": (CUresult, [POINTER(CUuuid), CUdevice]),
    "cuDeviceGetUuid": (CUresult, [POINTER(CUuuid), CUdevice]),
    "cuDeviceTotalMem_v2": (CUresult, [_size_p, CUdevice]),
    "cuDeviceGetAttribute": (CUresult, [POINTER(c_int), c_int, CUdevice]),
    # contexts (the primary context torch uses too: retaining it costs nothing extra)
    "cuDevicePrimaryCtxRetain": (CUresult, [POINTER(CUcontext), CUdevice]),
    "cuCtxPushCurrent_v2": (CUresult, [CUcontext]),
    "cuCtxPopCurrent_v2": (CUresult, [POINTER(CUcontext)]),
    "cuCtxSynchronize": (CUresult, []),  # the unversioned symbol is the argument-less ABI
    # checkpoint API (driver r570+; gpuPairs honoured from r580 / CUDA 13.0)
    "cuCheckpointProcessGetRestoreThreadId": (CUresult, [c_int, POINTER(c_int)]),
    "cuCheckpointProcessGetState": (CUresult, [c_int, POINTER(c_int)]),  # CUprocessState is an enum (int)
    "cuCheckpointProcessLock": (CUresult, [c_int, POINTER(CUcheckpointLockArgs)]),
    "cuCheckpointProcessCheckpoint": (CUresult, [c_int, POINTER(CUcheckpointCheckpointArgs)]),
    "cuCheckpointProcessRestore": (CUresult, [c_int, POINTER(CUcheckpointRestoreArgs)]),
    "cuCheckpointProcessUnlock": (CUresult, [c_int, POINTER(CUcheckpointUnlockArgs)]),
    # virtual memory management (CUDA >= 10.2; no versioned variants)
    "cuMemGetAllocationGranularity": (CUresult, [_size_p, POINTER(CUmemAllocationProp), c_int]),
    "cuMemAddressReserve": (CUresult, [POINTER(CUdeviceptr), c_size_t, c_size_t, CUdeviceptr, c_ulonglong]),
    "cuMemAddressFree": (CUresult, [CUdeviceptr, c_size_t]),
    "cuMemCreate": (
        CUresult,
        [POINTER(CUmemGenericAllocationHandle), c_size_t, POINTER(CUmemAllocationProp), c_ulonglong],
    ),
    "cuMemRelease": (CUresult, [CUmemGenericAllocationHandle]),
    "cuMemMap": (CUresult, [CUdeviceptr, c_size_t, c_size_t, CUmemGenericAllocationHandle, c_ulonglong]),
    "cuMemUnmap": (CUresult, [CUdeviceptr, c_size_t]),
    "cuMemSetAccess": (CUresult, [CUdeviceptr, c_size_t, POINTER(CUmemAccessDesc), c_size_t]),
    # sharing physical memory between processes (the GPU memory service, thaw.gms): the handle
    # travels as a POSIX fd; import takes the fd *value* in a pointer-sized argument (cuda.h: void*)
    "cuMemExportToShareableHandle": (CUresult, [c_void_p, CUmemGenericAllocationHandle, c_int, c_ulonglong]),
    "cuMemImportFromShareableHandle": (CUresult, [POINTER(CUmemGenericAllocationHandle), c_void_p, c_int]),
    "cuCtxSetCurrent": (CUresult, [CUcontext]),
    "cuMemGetInfo_v2": (CUresult, [_size_p, _size_p]),
    # the weight loader's pipeline: pinned host buffers, streams, asynchronous copies, events
    "cuMemHostAlloc": (CUresult, [POINTER(c_void_p), c_size_t, c_uint]),  # no versioned variant
    "cuMemFreeHost": (CUresult, [c_void_p]),
    "cuStreamCreate": (CUresult, [POINTER(c_void_p), c_uint]),
    "cuStreamSynchronize": (CUresult, [c_void_p]),
    "cuStreamDestroy_v2": (CUresult, [c_void_p]),
    "cuMemcpyHtoDAsync_v2": (CUresult, [CUdeviceptr, c_void_p, c_size_t, c_void_p]),
    "cuEventCreate": (CUresult, [POINTER(c_void_p), c_uint]),
    "cuEventRecord": (CUresult, [c_void_p, c_void_p]),
    "cuEventSynchronize": (CUresult, [c_void_p]),
    "cuEventDestroy_v2": (CUresult, [c_void_p]),
    # copies and fills for the memory pool's backup and poison (64-bit pointer ABIs: the _v2 symbols)
    "cuMemcpyDtoH_v2": (CUresult, [c_void_p, CUdeviceptr, c_size_t]),
    "cuMemcpyHtoD_v2": (CUresult, [CUdeviceptr, c_void_p, c_size_t]),
    "cuMemsetD32_v2": (CUresult, [CUdeviceptr, c_uint, c_size_t]),
}

NVML_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "nvmlInit_v2": (c_int, []),
    "nvmlErrorString": (c_char_p, [c_int]),
    "nvmlSystemGetDriverVersion": (c_int, [c_char_p, c_uint]),
    "nvmlDeviceGetHandleByUUID": (c_int, [c_char_p, POINTER(c_void_p)]),
    "nvmlDeviceGetMemoryInfo": (c_int, [c_void_p, POINTER(NvmlMemory)]),
    "nvmlDeviceGetRunningProcessDetailList": (c_int, [c_void_p, POINTER(NvmlProcessDetailList)]),
    "nvmlDeviceGetComputeRunningProcesses_v2": (c_int, [c_void_p, POINTER(c_uint), POINTER(NvmlProcessInfoV2)]),
}


class Library:
    """A loaded shared library whose functions carry the signatures above; absent symbols are recorded."""

    def __init__(self, cdll: ctypes.CDLL, signatures: dict[str, tuple[Any, list[Any]]]) -> None:
        self.cdll = cdll
        self.missing: set[str] = set()
        self.functions: dict[str, Any] = {}
        for name, (restype, argtypes) in signatures.items():
            try:
                fn = getattr(cdll, name)
            except AttributeError:
                self.missing.add(name)  # e.g. the checkpoint API on a driver older than r570
                continue
            fn.restype = restype
            fn.argtypes = argtypes
            self.functions[name] = fn

    def has(self, name: str) -> bool:
        return name in self.functions

    def __getitem__(self, name: str) -> Any:
        return self.functions[name]


_lock = threading.Lock()
_cuda: Library | None = None
_cuda_tried = False
_cuda_initialized = False
_nvml: Library | None = None
_nvml_tried = False


def load_cuda() -> Library | None:
    """libcuda.so.1 with every signature applied, or None where there is no NVIDIA driver."""
    global _cuda, _cuda_tried
    with _lock:
        if not _cuda_tried:
            _cuda_tried = True
            try:
                _cuda = Library(ctypes.CDLL("libcuda.so.1"), CUDA_SIGNATURES)
            except OSError:
                _cuda = None
        return _cuda


def load_nvml() -> Library | None:
    """libnvidia-ml.so.1, initialised, or None where it is absent or refuses to initialise."""
    global _nvml, _nvml_tried
    with _lock:
        if not _nvml_tried:
            _nvml_tried = True
            try:
                lib = Library(ctypes.CDLL("libnvidia-ml.so.1"), NVML_SIGNATURES)
            except OSError:
                return None
            # nvmlInit is reference counted and cheap; thaw never calls nvmlShutdown (long-lived agent)
            if lib.has("nvmlInit_v2") and lib["nvmlInit_v2"]() == NVML_SUCCESS:
                _nvml = lib
        return _nvml


# --- error names ---------------------------------------------------------------------------

#: names for the codes thaw meets, used when libcuda itself cannot name them (absent, or unknown code)
KNOWN_ERRORS = {
    0: "CUDA_SUCCESS",
    1: "CUDA_ERROR_INVALID_VALUE",
    2: "CUDA_ERROR_OUT_OF_MEMORY",
    3: "CUDA_ERROR_NOT_INITIALIZED",
    4: "CUDA_ERROR_DEINITIALIZED",
    100: "CUDA_ERROR_NO_DEVICE",
    101: "CUDA_ERROR_INVALID_DEVICE",
    201: "CUDA_ERROR_INVALID_CONTEXT",
    208: "CUDA_ERROR_ALREADY_MAPPED",
    211: "CUDA_ERROR_NOT_MAPPED",
    304: "CUDA_ERROR_OPERATING_SYSTEM",
    400: "CUDA_ERROR_INVALID_HANDLE",
    401: "CUDA_ERROR_ILLEGAL_STATE",
    500: "CUDA_ERROR_NOT_FOUND",
    700: "CUDA_ERROR_ILLEGAL_ADDRESS",
    719: "CUDA_ERROR_LAUNCH_FAILED",
    800: "CUDA_ERROR_NOT_PERMITTED",
    801: "CUDA_ERROR_NOT_SUPPORTED",
    909: "CUDA_ERROR_TIMEOUT",
    999: "CUDA_ERROR_UNKNOWN",
}


def error_name(code: int) -> str:
    """``CUDA_ERROR_...`` for a CUresult: from the driver when it is loaded, else from KNOWN_ERRORS."""
    lib = load_cuda()
    if lib is not None and lib.has("cuGetErrorName"):
        text = c_char_p()
        if lib["cuGetErrorName"](code, ctypes.byref(text)) == CUDA_SUCCESS and text.value:
            return text.value.decode(errors="replace")
    return KNOWN_ERRORS.get(code, f"CUDA_ERROR_{code}")


# --- calling -----------------------------------------------------------------------------------


def cuda_init() -> Library:
    """libcuda after ``cuInit(0)`` (once per process). Raises CudaError; callers check ``available()`` first.

    The agent must call cuInit before the checkpoint API, even though it never creates a context
    (probe: "Call cuInit(0) in the agent first").
    """
    global _cuda_initialized
    lib = load_cuda()
    if lib is None:
        raise CudaError("dlopen(libcuda.so.1)", -1, "LIBRARY_NOT_FOUND", detail="no NVIDIA driver on this host")
    if not _cuda_initialized:
        rc = lib["cuInit"](0)
        if rc != CUDA_SUCCESS:
            raise CudaError("cuInit", rc, error_name(rc))
        _cuda_initialized = True
    return lib


def cuda_call(name: str, *args: Any, pid: int | None = None, hints: Mapping[int, str] | None = None) -> None:
    """Call driver function ``name``; a CUresult other than CUDA_SUCCESS raises CudaError naming it.

    ``hints`` maps a CUresult to the sentence a user needs for it (what probably went wrong).

    ctypes releases the GIL for the duration of the call, so a checkpoint that takes
    seconds does not stall other Python threads of the agent.
    """
    lib = cuda_init()
    if not lib.has(name):
        raise CudaError(name, -1, "SYMBOL_NOT_FOUND", pid=pid, detail="this NVIDIA driver lacks the function")
    rc = lib[name](*args)
    if rc != CUDA_SUCCESS:
        raise CudaError(name, rc, error_name(rc), pid=pid, detail=(hints or {}).get(rc, ""))


def nvml_error(code: int) -> str:
    lib = load_nvml()
    if lib is not None and lib.has("nvmlErrorString"):
        text = lib["nvmlErrorString"](code)
        if text:
            return text.decode(errors="replace")
    return f"NVML error {code}"
