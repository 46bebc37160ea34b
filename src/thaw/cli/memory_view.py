"""``thaw inspect --memory``: what an artifact's image is made of, and what was kept out of it.

The host side comes from the snapshot's two readings of the worker's memory
(pipeline/residual.py): the driver's host copy of device memory, heaps, shared memory,
dirty library pages. The GPU side comes from what the worker reported when it froze:
torch's allocator (allocated vs reserved), thaw.memory regions released (KV cache, graph
activations), weights mapped from the GPU memory service (never in the image).
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from thaw.cli.output import console, escape, human_bytes
from thaw.store.manifest import Manifest


def memory_breakdown(m: Manifest) -> dict[str, Any]:
    """The breakdown as data (``--json``)."""
    image = {"total": m.size, "pages": sum(f.size for f in m.files if f.path.rsplit("/", 1)[-1].startswith("pages-"))}
    host = m.residual.summary() if m.residual else {}
    report = m.worker.freeze_report
    torch_gpus = report.get("thaw.cuda.torch", {}).get("gpus", []) if isinstance(report.get("thaw.cuda.torch"), dict) else []
    kept_out = {
        "released_regions": {r.tag: r.bytes for r in m.memory_released},
        "gms_weights": sum(w.bytes for w in m.weights),
    }
    gpu = {
        "nvml_used_before_lock": sum(int(g.get("used_bytes") or 0) for g in m.gpus),
        "torch_reserved": sum(int(g.get("reserved_bytes", 0)) for g in torch_gpus),
        "torch_allocated": sum(int(g.get("allocated_bytes", 0)) for g in torch_gpus),
    }
    return {"image": image, "host": host, "gpu": gpu, "kept_out": kept_out,
            "torch_pools": [p for g in torch_gpus for p in g.get("pools", [])],
            "largest_mappings": m.residual.before_lock.largest if m.residual else [],
            "largest_mappings_after_checkpoint": m.residual.after_checkpoint.largest
            if m.residual and m.residual.after_checkpoint else []}


def render_breakdown(m: Manifest) -> None:
    d = memory_breakdown(m)
    console.print(f"[bold]{escape(m.name)}[/]: image {human_bytes(d['image']['total'])} "
                  f"({human_bytes(d['image']['pages'])} of memory pages)")
    table = Table("part", "bytes", "where it comes from")
    host = d["host"]
    if host:
        rows = [
            ("CUDA host copy", host["cuda_host_copy"], "device memory the checkpoint moved into the process"),
            ("heap", host["heap"], "the C/Python heap ([heap])"),
            ("anonymous", host["anonymous"], "other private anonymous memory (allocators' arenas, libraries)"),
            ("shared anonymous", host["shared_anonymous"], "shared memory without a file (/dev/zero, memfd)"),
            ("library pages", host["file_dirty"], "written pages of mapped files"),
            ("stack", host["stack"], "thread stacks"),
        ]
        for name, n, why in rows:
            table.add_row(name, human_bytes(n), why)
    else:
        table.add_row("(not recorded)", "", "this snapshot predates the memory census")
    gpu = d["gpu"]
    table.add_row("GPU: in use before the lock", human_bytes(gpu["nvml_used_before_lock"]), "NVML, the worker's processes")
    table.add_row("GPU: torch reserved", human_bytes(gpu["torch_reserved"]),
                  f"allocated {human_bytes(gpu['torch_allocated'])}; the rest was cached")
    for tag, n in d["kept_out"]["released_regions"].items():
        table.add_row(f"kept out: {escape(tag)}", human_bytes(n), "thaw.memory region released before the lock")
    if d["kept_out"]["gms_weights"]:
        table.add_row("kept out: weights", human_bytes(d["kept_out"]["gms_weights"]), "mapped from the GPU memory service")
    console.print(table)
    for name, n in d["largest_mappings"]:
        console.print(f"  {human_bytes(n):>10}  {escape(name)}", highlight=False)
