"""The ctypes layer: struct layouts as cuda.h 13.0 / nvml.h define them, one signature table, error names."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest

import thaw.cuda
from thaw.cuda import checkpointing, native
from thaw.model import GpuPair
from thaw.errors import CudaError

SRC = Path(thaw.cuda.__file__).parent.parent


def offset(struct: type[ctypes.Structure], field: str) -> int:
    return getattr(struct, field).offset


def test_checkpoint_arg_structs_are_64_bytes_with_the_driver_layout() -> None:
    for struct in (native.CUcheckpointLockArgs, native.CUcheckpointCheckpointArgs,
                   native.CUcheckpointRestoreArgs, native.CUcheckpointUnlockArgs):
        assert ctypes.sizeof(struct) == 64, struct.__name__
    assert offset(native.CUcheckpointLockArgs, "timeoutMs") == 0
    # CUDA 13.0: gpuPairs pointer at 0, gpuPairsCount at 8, reserved up to 56, reserved1 at 56
    assert offset(native.CUcheckpointRestoreArgs, "gpuPairs") == 0
    assert offset(native.CUcheckpointRestoreArgs, "gpuPairsCount") == 8
    assert offset(native.CUcheckpointRestoreArgs, "reserved1") == 56
    assert ctypes.sizeof(native.CUuuid) == 16
    assert ctypes.sizeof(native.CUcheckpointGpuPair) == 32
    assert offset(native.CUcheckpointGpuPair, "newUuid") == 16


def test_vmm_structs_have_the_driver_layout() -> None:
    assert ctypes.sizeof(native.CUmemAllocationProp) == 32
    assert offset(native.CUmemAllocationProp, "location") == 8
    assert offset(native.CUmemAllocationProp, "win32HandleMetaData") == 16
    assert offset(native.CUmemAllocationProp, "allocFlags") == 24
    assert ctypes.sizeof(native.CUmemAccessDesc) == 12
    assert offset(native.CUmemAccessDesc, "flags") == 8


def test_nvml_structs_have_the_library_layout() -> None:
    assert ctypes.sizeof(native.NvmlMemory) == 24
    assert ctypes.sizeof(native.NvmlProcessDetail) == 32
    assert ctypes.sizeof(native.NvmlProcessDetailList) == 24
    assert offset(native.NvmlProcessDetailList, "procArray") == 16
    assert native.NVML_PROCESS_DETAIL_LIST_V1 == 0x1000018  # NVML_STRUCT_VERSION(ProcessDetailList, 1)
    assert ctypes.sizeof(native.NvmlProcessInfoV2) == 24


def test_arg_structs_start_zero_filled() -> None:
    for struct in (native.CUcheckpointLockArgs, native.CUcheckpointCheckpointArgs,
                   native.CUcheckpointRestoreArgs, native.CUcheckpointUnlockArgs):
        assert ctypes.string_at(ctypes.addressof(struct()), 64) == bytes(64)


def test_restore_args_point_at_the_pairs_in_the_raw_bytes() -> None:
    pairs = [GpuPair("GPU-00000000-0000-0000-0000-000000000001", "GPU-00000000-0000-0000-0000-000000000002"),
             GpuPair("GPU-00000000-0000-0000-0000-000000000002", "GPU-00000000-0000-0000-0000-000000000001")]
    args = checkpointing.restore_args(pairs)
    raw = ctypes.string_at(ctypes.addressof(args), 64)
    pointer, count = int.from_bytes(raw[0:8], "little"), int.from_bytes(raw[8:12], "little")
    assert count == 2
    assert raw[12:] == bytes(52), "everything after the count stays zero"
    table = ctypes.string_at(pointer, 64)
    assert table[15] == 1 and table[31] == 2 and table[47] == 2 and table[63] == 1
    assert ctypes.string_at(ctypes.addressof(checkpointing.restore_args(None)), 64) == bytes(64)


def test_every_driver_symbol_thaw_calls_is_declared_in_the_one_table() -> None:
    called = set()
    for path in [*SRC.joinpath("cuda").glob("*.py"), *SRC.joinpath("memory").glob("*.py")]:
        called |= set(re.findall(r'cuda_call\(\s*"(\w+)"', path.read_text()))
        called |= set(re.findall(r'(?:call|name) = "(cu\w+)"', path.read_text()))
    assert called, "the scan found the calls"
    assert called <= set(native.CUDA_SIGNATURES), called - set(native.CUDA_SIGNATURES)
    assert not any(re.search(r"\.argtypes\s*=", p.read_text()) for p in SRC.joinpath("memory").glob("*.py"))


def test_versioned_symbols_are_used_where_cuda_h_maps_to_them() -> None:
    # ctypes sees no header: the unversioned names are the oldest ABIs (32-bit pointers for memcpy)
    for old in ("cuMemcpyDtoH", "cuMemcpyHtoD", "cuMemsetD32", "cuDeviceTotalMem", "cuCtxPushCurrent", "cuCtxPopCurrent"):
        assert old not in native.CUDA_SIGNATURES and f"{old}_v2" in native.CUDA_SIGNATURES


def test_error_names_come_from_the_table_without_a_driver() -> None:
    assert native.error_name(801) == "CUDA_ERROR_NOT_SUPPORTED"
    assert native.error_name(909) == "CUDA_ERROR_TIMEOUT"
    assert native.error_name(12345) == "CUDA_ERROR_12345"


def test_a_failed_call_names_the_call_the_pid_the_error_and_the_hint(fake_cuda) -> None:
    fake_cuda.states[4242] = 0
    fake_cuda.fail("cuCheckpointProcessLock", 909)
    with pytest.raises(CudaError) as err:
        checkpointing.lock(4242, timeout_ms=500)
    exc = err.value
    assert (exc.call, exc.code, exc.name, exc.pid) == ("cuCheckpointProcessLock", 909, "CUDA_ERROR_TIMEOUT", 4242)
    assert "cuCheckpointProcessLock for pid 4242 failed: CUDA_ERROR_TIMEOUT (909)" in str(exc)
    assert "quiesce" in str(exc)
    assert fake_cuda.lock_timeouts == [500], "the timeout travels in the first 4 bytes of the lock args"


def test_restore_801_explains_imported_memory(fake_cuda) -> None:
    fake_cuda.states[7] = 2
    fake_cuda.fail("cuCheckpointProcessRestore", 801)
    with pytest.raises(CudaError, match="imported from another process"):
        checkpointing.restore(7)


def test_the_driver_is_initialised_once_before_the_first_call(fake_cuda) -> None:
    fake_cuda.states[1] = 0
    checkpointing.get_state(1)
    checkpointing.get_state(1)
    assert [c for c in fake_cuda.calls if c[0] == "cuInit"] == [("cuInit", 0)]


def test_a_failing_cuinit_raises_with_its_name(fake_cuda) -> None:
    fake_cuda.cu_init_code = 100
    with pytest.raises(CudaError, match="cuInit failed: CUDA_ERROR_NO_DEVICE"):
        checkpointing.get_state(1)


def test_a_symbol_the_driver_lacks_is_named(fake_cuda) -> None:
    del fake_cuda.functions["cuCheckpointProcessLock"]
    assert not checkpointing.supported()
    with pytest.raises(CudaError, match="SYMBOL_NOT_FOUND"):
        checkpointing.lock(1)


def test_the_public_api_is_pinned_and_no_submodule_is_shadowed() -> None:
    import importlib

    assert sorted(thaw.cuda.__all__) == [
        "ProcessState", "available", "checkpoint", "cuda_version", "devices", "driver_version",
        "get_state", "gpu_processes", "lock", "process_uses_gpu", "restore", "restore_thread_id",
        "unlock",
    ]
    for name in ("native", "gpus", "checkpointing", "process", "worker_hooks"):
        module = importlib.import_module(f"thaw.cuda.{name}")
        assert name not in thaw.cuda.__all__ and module.__name__ == f"thaw.cuda.{name}"
