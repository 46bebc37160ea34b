"""The CUDA driver, from Python: GPU identity and the process checkpoint API.

Only this package and :mod:`thaw.memory` talk to libcuda (through :mod:`thaw.cuda.native`,
where every ctypes signature is declared). Importing it loads nothing: the driver is
opened on first use, and :func:`available` is False, never an exception, on a host
without NVIDIA.

* :mod:`thaw.cuda.gpus` — ``devices()``, ``available()``, ``driver_version()``, UUIDs;
* :mod:`thaw.cuda.checkpointing` — lock / checkpoint / restore / unlock of another process;
* :mod:`thaw.cuda.process` — which processes hold a GPU (/proc);
* :mod:`thaw.cuda.steps` — the pipeline's GPU steps (imports pydantic; not loaded here);
* :mod:`thaw.cuda.tree` — the same for every GPU process of a worker's tree (not loaded here);
* :mod:`thaw.cuda.worker_hooks` — torch freeze/thaw hooks for the worker.

The state machine and the ordering rules are in docs/cuda.md.
"""

from thaw.cuda.checkpointing import GpuPair, ProcessState, checkpoint, get_state, lock, restore, restore_thread_id, unlock
from thaw.cuda.gpus import GpuInfo, available, cuda_version, devices, driver_version, normalize_uuid
from thaw.cuda.process import gpu_processes, process_uses_gpu

__all__ = [
    "GpuInfo",
    "GpuPair",
    "ProcessState",
    "available",
    "checkpoint",
    "cuda_version",
    "devices",
    "driver_version",
    "get_state",
    "gpu_processes",
    "lock",
    "normalize_uuid",
    "process_uses_gpu",
    "restore",
    "restore_thread_id",
    "unlock",
]
