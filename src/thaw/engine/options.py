"""How to serve: the options of ``python -m thaw.engine serve`` and ``thaw engine serve``.

Kept free of torch so that both command lines can parse their flags before torch is
imported (see ``startup.pin_cpu_isa``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from thaw.errors import ConfigError


@dataclass(frozen=True)
class ServeOptions:
    weights: Path
    #: a name from ``thaw engine configs``; must match the checkpoint's config.json when given
    config: str | None = None
    device: str = "auto"  # auto | cuda | cpu
    dtype: str = "auto"  # auto (bfloat16 on cuda, float32 on cpu) | bfloat16 | float16 | float32
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (the "listening" line says which)
    #: serve HTTP on this unix socket too; under thaw the default is <control dir>/http.sock
    uds: Path | None = None
    name: str | None = None  # the worker's name for thaw; default thaw-engine-<config>
    max_batch: int = 8  # requests decoded together
    #: prompt + completion tokens of one request; default 4096 on the GPU, 1024 on the CPU
    max_model_len: int | None = None
    block_size: int = 16  # tokens per KV-cache block
    #: KV-cache size; default on the GPU: what gpu_memory_utilization leaves; on the CPU: 256 MiB, but at
    #: least one full-length sequence and at most max_batch of them (a CPU worker serves tests and demos,
    #: and its cache is dumped with the process)
    kv_gb: float | None = None
    gpu_memory_utilization: float = 0.9
    graph_batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    cuda_graphs: bool = True
    #: the canary's size: its first N prompts, M greedy tokens each. It runs at start-up and again at every
    #: restore, so on the CPU — where a decode step of qwen3-0.6b reads 2.4 GB of weights — it is smaller.
    canary_prompts: int | None = None  # default 1: the restore waits for it (up to 3: stronger, slower)
    canary_tokens: int | None = None  # default: 8 on the GPU, 4 on the CPU
    log_level: str = "info"
    #: where the weights come from: "gms" (a GPU memory service on this node maps them: they stay out of
    #: every snapshot), "local" (read and copied by the engine itself), "auto" (gms when a service listens)
    weights_from: str = "auto"
    #: the service's device when it is not this GPU: "memfd:NAME", the CPU stand-in (tests, demos)
    gms_device: str | None = None
    #: where captured CUDA graphs keep their activations: "thaw" (a thaw.memory region released before a
    #: snapshot and re-mapped after it: scratch leaves the image) or "torch" (torch's own graph pool)
    graph_pool: str = "thaw"

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cuda", "cpu"):
            raise ConfigError("device", f"{self.device!r} is not auto, cuda or cpu")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ConfigError("dtype", f"{self.dtype!r} is not auto, bfloat16, float16 or float32")
        for name in ("max_batch", "max_model_len", "block_size", "canary_prompts", "canary_tokens"):
            if (getattr(self, name) or 1) < 1:
                raise ConfigError(name, f"{getattr(self, name)} < 1")
        if self.weights_from not in ("auto", "gms", "local"):
            raise ConfigError("weights_from", f"{self.weights_from!r} is not auto, gms or local")
        if self.graph_pool not in ("thaw", "torch"):
            raise ConfigError("graph_pool", f"{self.graph_pool!r} is not thaw or torch")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError("gpu_memory_utilization", f"{self.gpu_memory_utilization} is not in (0, 1]")
        if not self.graph_batch_sizes or min(self.graph_batch_sizes) < 1:
            raise ConfigError("graph_batch_sizes", f"{self.graph_batch_sizes} must be positive batch sizes")


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """"1,2,4,8" → (1, 2, 4, 8)."""
    try:
        return tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise ConfigError("graph_batch_sizes", f"{text!r} is not a comma-separated list of integers") from None
