"""The GPU steps of a snapshot and a restore, beside the pipeline that sequences them (host side).

They call the CUDA driver through :mod:`thaw.cuda` (the only package, with thaw.memory,
that loads libcuda); a worker that never opened a GPU skips all of them, and a host
without an NVIDIA driver never loads it.

Ordering (issue #3; probe README): the CUDA checkpoint must happen *before* the CRIU
dump, because a process holding /dev/nvidia* cannot be dumped; the CUDA restore comes
*after* the CRIU restore::

    snapshot: quiesce → freeze hooks → record_gpus → checkpoint_gpu → criu dump
              (dump failed, or --leave-running: rollback_gpu)
    restore:  plan_gpu_pairs → criu restore → restore_gpu → thaw hooks

Every step returns its phase durations in seconds (``cuda_lock``, ``cuda_checkpoint``,
``cuda_restore``, ``cuda_unlock``) for the operation's summary line. A failed step
leaves the process as the step found it where the driver allows it, and says so.

Every process of the worker's tree that holds the GPU takes part (gpu_tree.py): the
tree is planned before the freeze (refusing what CRIU could not dump) and confirmed
after it; every process is locked before any is checkpointed, and restored before any
is unlocked. The manifest names them by their pid inside the sandbox.
"""

from __future__ import annotations

from collections.abc import Sequence

from thaw import proc
from thaw.cuda import checkpointing, gpus, process
from thaw.pipeline import gpu_tree
from thaw.pipeline.phases import timed
from thaw.cuda.checkpointing import DEFAULT_LOCK_TIMEOUT_MS, ProcessState
from thaw.errors import CheckpointError, ConfigError, CudaError, RestoreError, ThawError
from thaw.model import GpuInfo, GpuPair, GpuRecord, GpuTarget, Phase, normalize_uuid


def uses_gpu(pid: int) -> bool:
    """Whether the worker holds a GPU now: the host decides (its /dev/nvidia* fds and maps), not the worker's word."""
    return process.process_uses_gpu(pid)


def identity() -> dict[str, str]:
    """The driver version, for the manifest's source info; empty on a host without the driver."""
    version = gpus.driver_version()  # NVML or the kernel module: no cuInit, so a CPU snapshot never fails here
    return {"cuda_driver": version} if version else {}


# --- the worker's whole tree (gpu_tree.py makes the driver calls) ---------------------------------


def plan_tree(root: int, parked_ns_pid: int, hooks: list[str]) -> gpu_tree.TreePlan | None:
    """Before the freeze: which GPU processes are checkpointed and which depart; None when none holds a GPU.

    ``parked_ns_pid`` is the pid (inside the sandbox) of the process parked in quiesce(),
    from its readiness marker; ``hooks`` the freeze hooks it registered.
    """
    if not process.gpu_processes(root):
        return None  # a CPU worker: libcuda is never loaded
    parked = process.host_pids(root, [parked_ns_pid]).get(parked_ns_pid, root)
    return gpu_tree.plan_tree(root, parked=parked, hooks=hooks)


def confirm_tree(plan: gpu_tree.TreePlan | None) -> list[int]:
    """After the freeze hooks: the host pids whose CUDA state is checkpointed ([] for CPU workers)."""
    return gpu_tree.confirm_tree(plan) if plan is not None else []


def record_tree(root: int, pids: list[int]) -> list[GpuRecord]:
    """The GPUs the worker sees and the memory its whole tree uses on each, for the manifest (before the lock)."""
    return record_gpus(root, pids=proc.descendants(root)) if pids else []


def namespace_pids(pids: list[int]) -> list[int]:
    """How the manifest names processes: by their pid inside the sandbox, which a CRIU restore keeps."""
    return [process.namespace_pid(pid) for pid in pids]


def checkpoint_tree(pids: list[int]) -> dict[str, float]:
    """Lock every GPU process, then checkpoint every one; all back to running on failure."""
    return gpu_tree.checkpoint_tree(pids, DEFAULT_LOCK_TIMEOUT_MS)


def rollback_tree(pids: list[int]) -> None:
    """Bring the processes a snapshot checkpointed back to running (after a failed dump, or --leave-running)."""
    gpu_tree.rollback_tree(pids)


def rollback(pid: int) -> None:
    """Bring every process of worker ``pid``'s tree back to running, wherever a snapshot left it (recovery)."""
    gpu_tree.rollback_tree(proc.descendants(pid))


def restore_tree(root: int, ns_pids: list[int], pairs: Sequence[GpuPair] | None = None) -> dict[str, float]:
    """Restore every GPU process of a CRIU-restored tree, then unlock every one.

    ``ns_pids`` come from the manifest; an artifact from before they were recorded
    held the root's GPU state only.
    """
    pids = gpu_tree.host_pids_for(root, ns_pids) if ns_pids else [root]
    return gpu_tree.restore_tree(pids, pairs)



# --- snapshot -------------------------------------------------------------------------------


def record_gpus(pid: int, *, pids: Sequence[int] | None = None) -> list[GpuRecord]:
    """The GPUs visible to worker ``pid`` and the bytes its tree (or ``pids``) uses on each.

    Call it after the freeze hooks and before :func:`checkpoint_gpu`: once checkpointed,
    a process uses no GPU memory. Visibility follows the worker's initial
    ``CUDA_VISIBLE_DEVICES`` (/proc/PID/environ); recording every visible GPU, used or
    not, lets :func:`plan_gpu_pairs` build a complete old → new mapping, the form the
    probe restored onto another GPU with.
    """
    tree = set(pids) if pids is not None else set(process.descendants(pid))
    visible = _visible_to(pid, gpus.devices())
    used = [gpus.process_memory(gpu.uuid, tree) for gpu in visible]
    if used and all(u == 0 for u in used) and any(_holds_gpu(p) for p in tree):
        # NVML names no GPU although /proc shows one in use: NVML reports pids of the host pid
        # namespace, so an agent in another one matches none. Unknown, then, not "unused".
        used = [None] * len(used)
    return [
        GpuRecord(
            index=gpu.index,
            uuid=gpu.uuid,
            name=gpu.name,
            memory_total=gpu.memory_total,
            used_bytes=used_bytes,
            compute_capability=gpu.compute_capability,
        )
        for gpu, used_bytes in zip(visible, used)
    ]


def checkpoint_gpu(pid: int, lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS) -> dict[str, float]:
    """Lock, then checkpoint the CUDA state of ``pid``: RUNNING → CHECKPOINTED.

    On failure the process is brought back to RUNNING (restore and/or unlock, by its
    state) and CheckpointError says what failed and whether the rollback worked; the
    CudaError is its ``__cause__``.
    """
    timings: dict[str, float] = {}
    state = checkpointing.get_state(pid)
    if state is not ProcessState.RUNNING:
        raise CheckpointError(
            f"cannot checkpoint the GPU state of pid {pid}: it is {state.name}, not RUNNING",
            hint="another snapshot may be in progress; or roll it back with rollback_gpu",
        )
    try:
        with timed(timings, Phase.CUDA_LOCK):
            checkpointing.lock(pid, lock_timeout_ms)
        with timed(timings, Phase.CUDA_CHECKPOINT):
            checkpointing.checkpoint(pid)
    except CudaError as exc:
        raise CheckpointError(f"GPU checkpoint of pid {pid} failed: {exc}; {_roll_back_after(pid)}") from exc
    return timings


def rollback_gpu(pid: int) -> dict[str, float]:
    """Bring ``pid`` back to RUNNING from wherever a snapshot left it (after a failed dump, or --leave-running).

    Idempotent: it asks the driver for the state first and does only what is left to do.
    Restores onto the same GPUs (no pairs). Raises CudaError if a driver call fails.
    """
    timings: dict[str, float] = {}
    state = checkpointing.get_state(pid)
    if state is ProcessState.FAILED:
        raise CudaError(
            "cuCheckpointProcessGetState", 0, "CU_PROCESS_STATE_FAILED", pid=pid,
            detail="the driver marked the process FAILED; it cannot be rolled back and must be killed",
        )
    if state is ProcessState.CHECKPOINTED:
        with timed(timings, Phase.CUDA_RESTORE):
            checkpointing.restore(pid)
        state = ProcessState.LOCKED
    if state is ProcessState.LOCKED:
        with timed(timings, Phase.CUDA_UNLOCK):
            checkpointing.unlock(pid)
    return timings


# --- restore ----------------------------------------------------------------------------------


def restore_gpu(pid: int, pairs: Sequence[GpuPair] | None = None) -> dict[str, float]:
    """Restore, then unlock the CUDA state of a CRIU-restored ``pid``: CHECKPOINTED → RUNNING.

    ``pairs`` (from :func:`plan_gpu_pairs`) remaps GPUs; None or [] restores onto the
    recorded GPUs. A failure raises RestoreError naming the state the process was left
    in; a process stuck CHECKPOINTED must be killed by the caller.
    """
    timings: dict[str, float] = {}
    state = checkpointing.get_state(pid)
    if state is not ProcessState.CHECKPOINTED:
        raise RestoreError(f"cannot restore the GPU state of pid {pid}: it is {state.name}, not CHECKPOINTED")
    try:
        with timed(timings, Phase.CUDA_RESTORE):
            checkpointing.restore(pid, list(pairs) if pairs else None)
        with timed(timings, Phase.CUDA_UNLOCK):
            checkpointing.unlock(pid)
    except CudaError as exc:
        raise RestoreError(f"GPU restore of pid {pid} failed: {exc}; the process is {_state_text(pid)}") from exc
    return timings


def plan_gpu_pairs(
    recorded: Sequence[GpuRecord],
    target: GpuTarget | Sequence[GpuTarget] | None = None,
    *,
    available: Sequence[GpuInfo] | None = None,
    headroom_bytes: int = 0,
) -> list[GpuPair]:
    """Choose the GPUs to restore onto and check them before anything is touched.

    ``target``: None keeps each used GPU where it was if this host has it, else picks the
    same chip with the most free memory; an index or UUID (or one per used GPU, in
    recorded order) forces the choice. Refuses with RestoreError when the chip differs or
    the target lacks ``used_bytes + headroom_bytes`` of free memory (a restore that runs
    out of GPU memory leaves the process stuck: issue #3). Returns [] when nothing moves
    (restore without pairs, the default path), else one pair per recorded GPU: the GPUs
    the worker saw but did not use fill the remaining slots, so the mapping is complete
    (the probe's accepted form: 0 → 1 together with 1 → 0).
    """
    records = list(recorded)
    if not records:
        if target is not None:
            raise RestoreError("--gpu was given, but this artifact's worker used no GPU")
        return []
    local = list(available) if available is not None else gpus.devices()
    used = [r for r in records if r.used]
    if used and not local:
        raise RestoreError("the snapshot used a GPU and this host has none", hint="restore on a GPU node")
    chosen = _choose(used, target, local, headroom_bytes)
    taken = {g.uuid for g in chosen.values()}
    mapping: dict[str, str] = {r.uuid: chosen[r.uuid].uuid for r in used}
    spare = [g for g in local if g.uuid not in taken]
    for record in records:
        if record.uuid in mapping:
            continue
        same = next((g for g in spare if g.uuid == record.uuid), None)
        pick = same or (spare[0] if spare else None)
        if pick is not None:
            spare.remove(pick)
            mapping[record.uuid] = pick.uuid
    if all(old == new for old, new in mapping.items()):
        return []
    return [GpuPair(old, new) for old, new in mapping.items()]


# --- internals ---------------------------------------------------------------------------------


def _choose(used: list[GpuRecord], target: GpuTarget | Sequence[GpuTarget] | None, local: list[GpuInfo],
            headroom: int) -> dict[str, GpuInfo]:
    if target is None:
        return _choose_automatically(used, local, headroom)
    wanted = [target] if isinstance(target, (int, str)) else list(target)
    if len(wanted) != len(used):
        raise ConfigError("gpu", f"the snapshot used {len(used)} GPU(s); give one target per used GPU, "
                          f"got {len(wanted)}")
    chosen: dict[str, GpuInfo] = {}
    for record, want in zip(used, wanted):
        gpu = _find(want, local)
        if gpu.uuid in {g.uuid for g in chosen.values()}:
            raise ConfigError("gpu", f"{want!r} is given twice; each used GPU needs its own target")
        problem = _unfit(record, gpu, headroom)
        if problem:
            raise RestoreError(f"cannot restore onto GPU {gpu.index} ({gpu.uuid}): {problem}")
        chosen[record.uuid] = gpu
    return chosen


def _choose_automatically(used: list[GpuRecord], local: list[GpuInfo], headroom: int) -> dict[str, GpuInfo]:
    chosen: dict[str, GpuInfo] = {}
    for record in used:
        taken = {g.uuid for g in chosen.values()}
        same = next((g for g in local if g.uuid == record.uuid and g.uuid not in taken), None)
        candidates = ([same] if same else []) + sorted(
            (g for g in local if g.uuid not in taken and g is not same),
            key=lambda g: -(g.memory_free or 0),
        )
        reasons = []
        for gpu in candidates:
            problem = _unfit(record, gpu, headroom)
            if not problem:
                chosen[record.uuid] = gpu
                break
            reasons.append(f"GPU {gpu.index} ({gpu.uuid}): {problem}")
        else:
            raise RestoreError(
                f"no GPU on this host can take the snapshot's GPU {record.uuid} ({record.name}, "
                f"{_gib(record.used_bytes)} used): " + ("; ".join(reasons) or "no free GPU left")
            )
    return chosen


def _unfit(record: GpuRecord, gpu: GpuInfo, headroom: int) -> str:
    if gpu.name != record.name:
        return f"the chip differs: the snapshot ran on {record.name!r}, this GPU is {gpu.name!r}"
    need = (record.used_bytes or 0) + headroom
    if gpu.memory_free is not None and gpu.memory_free < need:
        return f"not enough free memory: {_gib(gpu.memory_free)} free, {_gib(need)} needed"
    return ""


def _find(want: GpuTarget, local: list[GpuInfo]) -> GpuInfo:
    if isinstance(want, int):
        for gpu in local:
            if gpu.index == want:
                return gpu
        raise ConfigError("gpu", f"no GPU with index {want} on this host (it has {len(local)})")
    uuid = normalize_uuid(want)
    for gpu in local:
        if gpu.uuid == uuid:
            return gpu
    raise ConfigError("gpu", f"no GPU {uuid} on this host", hint="nvidia-smi -L lists them")


def _visible_to(pid: int, candidates: list[GpuInfo]) -> list[GpuInfo]:
    """Filter by the worker's initial CUDA_VISIBLE_DEVICES (indices or UUID prefixes); all when unset."""
    try:
        value = proc.environ(pid).get("CUDA_VISIBLE_DEVICES")
    except OSError:
        return candidates
    if value is None:
        return candidates
    picked: list[GpuInfo] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        if item.lstrip("-").isdigit():
            if int(item) < 0:
                break  # CUDA stops at the first invalid ordinal
            match = [g for g in candidates if g.index == int(item)]
        else:
            prefix = item.lower() if item.upper().startswith("GPU-") else "gpu-" + item.lower()
            match = [g for g in candidates if g.uuid.lower().startswith(prefix)]
        if len(match) != 1:
            break
        if match[0] not in picked:
            picked.append(match[0])
    return picked


def _holds_gpu(pid: int) -> bool:
    try:
        return process.process_uses_gpu(pid)
    except ThawError:
        return False  # exited, or not ours to read


def _roll_back_after(pid: int) -> str:
    try:
        rollback_gpu(pid)
    except CudaError as exc:
        return f"rolling it back failed too ({exc}); the process is {_state_text(pid)} and must be killed"
    return "rolled back: the process is RUNNING again"


def _state_text(pid: int) -> str:
    try:
        return checkpointing.get_state(pid).name
    except CudaError as exc:
        return f"in an unknown state ({exc})"


def _gib(value: int | None) -> str:
    return "unknown" if value is None else f"{value / 2**30:.2f} GiB"


__all__ = [
    "checkpoint_gpu",
    "identity",
    "plan_gpu_pairs",
    "record_gpus",
    "restore_gpu",
    "rollback_gpu",
    "uses_gpu",
]
