"""One CUDA device as the driver names it now. Standard library only (the worker's torch hooks use it)."""

from __future__ import annotations

import ctypes

from thaw.cuda import native
from thaw.gpuid import format_uuid


def device_uuid(index: int) -> str:
    """The UUID of CUDA device ``index`` as the driver reports it *now*.

    After a restore onto another GPU the driver reports the new GPU here, while torch's
    cached ``get_device_properties().uuid`` still names the old one (probe, second run).
    """
    dev = _device(index)
    uuid = native.CUuuid()
    lib = native.cuda_init()
    # cuda.h maps cuDeviceGetUuid to the _v2 symbol since CUDA 11.4; older drivers only have v1
    call = "cuDeviceGetUuid_v2" if lib.has("cuDeviceGetUuid_v2") else "cuDeviceGetUuid"
    native.cuda_call(call, ctypes.byref(uuid), dev)
    return format_uuid(bytes(uuid.bytes))


def _device(index: int) -> int:
    dev = ctypes.c_int(0)
    native.cuda_call("cuDeviceGet", ctypes.byref(dev), index)
    return dev.value
