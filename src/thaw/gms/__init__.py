"""The GPU memory service (GMS): weights kept on the node, outside every worker's process image.

A worker's weights are read-only, identical in every copy, and already sit in files; yet
a snapshot that holds them must move them through the CUDA checkpoint, CRIU's dump, the
store, CRIU's page fill and the CUDA restore, every time (issue #13: 15.3 of the 8B
engine's 18.2 GiB image). The GMS owns them instead: one service per GPU creates
exportable VMM memory (``cuMemCreate`` with a POSIX-fd handle type), fills it from
safetensors files at link speed (loader.py), and hands fds to workers over a unix socket
(SCM_RIGHTS). A worker imports and maps them (:mod:`thaw.memory.weights`), unmaps them
before the GPU lock — a process that still maps imported memory restores with 801 and
stays stuck (probe, second run) — and maps them again at the same addresses after the
restore, so its captured CUDA graphs stay valid. Weights stay resident after their
workers exit, so a restore finds them there, or loads them while CRIU restores.

* :mod:`thaw.gms.models` — the typed messages; :mod:`thaw.gms.wire` — frames with fds;
* :mod:`thaw.gms.plan` — safetensors headers (hostile input) → tensor placement;
* :mod:`thaw.gms.loader` — the pipelined fill; :mod:`thaw.gms.device` — GPU or memfd memory;
* :mod:`thaw.gms.service` — resident sets, holds, eviction; :mod:`thaw.gms.server` — the socket;
* :mod:`thaw.gms.client` — acquire, prefetch, status, evict.

docs/gms.md has the process model, the ordering rules and the failure table.
"""

from thaw.gms.client import Client, socket_path
from thaw.gms.models import Layout, LoadReport, ServiceStatus, SetStatus, TensorSlot, WeightFile, WeightSpec

__all__ = [
    "Client",
    "Layout",
    "LoadReport",
    "ServiceStatus",
    "SetStatus",
    "TensorSlot",
    "WeightFile",
    "WeightSpec",
    "socket_path",
]
