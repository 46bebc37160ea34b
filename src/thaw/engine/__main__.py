"""``python -m thaw.engine serve --weights DIR [--config C] [--device cuda|cpu] [--port P] [--uds PATH] ...``

The worker's own entry point — what ``thaw run -- python -m thaw.engine serve ...``
launches. It parses its flags with argparse (not the CLI's typer and rich) so that the
process imports as little as possible before its timed phases; ``thaw engine serve``
takes the same flags.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from thaw.engine.options import ServeOptions, parse_batch_sizes
from thaw.engine.startup import start
from thaw.errors import ThawError


def parse(argv: list[str]) -> ServeOptions:
    d = ServeOptions(weights=Path("."))
    p = argparse.ArgumentParser(prog="python -m thaw.engine")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="warm up, park at the quiesce point, then serve HTTP")
    s.add_argument("--weights", type=Path, required=True, help="checkpoint dir (thaw engine make-weights)")
    s.add_argument("--config", help="expected config name; must match the checkpoint's config.json")
    s.add_argument("--device", choices=["auto", "cuda", "cpu"], default=d.device)
    s.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default=d.dtype)
    s.add_argument("--host", default=d.host)
    s.add_argument("--port", type=int, default=d.port, help="0: any free port")
    s.add_argument("--uds", type=Path, help="also serve on this unix socket (under thaw: <control dir>/http.sock)")
    s.add_argument("--name", help="the worker's name for thaw (default thaw-engine-<config>)")
    s.add_argument("--max-batch", type=int, default=d.max_batch)
    s.add_argument("--max-model-len", type=int, help="prompt + completion tokens (default: 4096 GPU, 1024 CPU)")
    s.add_argument("--block-size", type=int, default=d.block_size)
    s.add_argument("--kv-gb", type=float, help="KV-cache size (default: GPU → --gpu-memory-utilization)")
    s.add_argument("--gpu-memory-utilization", type=float, default=d.gpu_memory_utilization)
    s.add_argument("--graph-batch-sizes", default=",".join(map(str, d.graph_batch_sizes)))
    s.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false")
    s.add_argument("--canary-prompts", type=int, help="how many of the canary's prompts, 1-3 (default 1: a restore waits for it)")
    s.add_argument("--canary-tokens", type=int, help="greedy tokens per canary prompt (default: 8 GPU, 4 CPU)")
    s.add_argument("--log-level", default=d.log_level, choices=["debug", "info", "warning", "error"])
    s.add_argument("--weights-from", choices=["auto", "gms", "local"], default=d.weights_from,
                   help="gms: map the weights from this node's GPU memory service (they stay out of snapshots); "
                   "local: load them into the engine; auto: gms when a service listens")
    s.add_argument("--gms-device", help="the service's device when not this GPU (memfd:NAME, the CPU stand-in)")
    s.add_argument("--graph-pool", choices=["thaw", "torch"], default=d.graph_pool,
                   help="thaw: CUDA-graph activations in memory released before a snapshot; torch: torch's pool")
    a = p.parse_args(argv)
    return ServeOptions(
        weights=a.weights, config=a.config, device=a.device, dtype=a.dtype, host=a.host, port=a.port, uds=a.uds,
        name=a.name, max_batch=a.max_batch, max_model_len=a.max_model_len, block_size=a.block_size,
        kv_gb=a.kv_gb, gpu_memory_utilization=a.gpu_memory_utilization,
        graph_batch_sizes=parse_batch_sizes(a.graph_batch_sizes), cuda_graphs=a.cuda_graphs,
        canary_prompts=a.canary_prompts, canary_tokens=a.canary_tokens, log_level=a.log_level,
        weights_from=a.weights_from, gms_device=a.gms_device, graph_pool=a.graph_pool,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        return start(parse(sys.argv[1:] if argv is None else argv))
    except ThawError as exc:
        print(f"thaw-engine: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
