"""``thaw engine``: the reference inference engine — list its configs, write weights, serve.

::

    thaw engine configs [--json]
    thaw engine make-weights qwen3-0.6b /data/qwen3-0.6b [--seed 0] [--shard-gb 4] [--force]
    thaw engine serve --weights /data/qwen3-0.6b [--device cuda] [--port 8000] [--uds PATH] ...

``serve`` takes the flags of ``python -m thaw.engine serve`` (the worker's own entry
point, which ``thaw run`` launches).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from thaw.cli.output import friendly

app = typer.Typer(help="thaw's reference inference engine: Qwen3 shapes, paged KV cache, CUDA graphs.",
                  no_args_is_help=True)


@app.command()
def configs(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """List the model configs with their sizes."""
    from thaw.engine.config import CONFIGS

    rows = [{
        "name": c.name, "params": c.param_count(), "weight_bytes": c.weight_bytes(), "dtype": c.dtype,
        "layers": c.num_layers, "hidden": c.hidden_size, "heads": c.num_heads, "kv_heads": c.num_kv_heads,
        "vocab": c.vocab_size, "tied_embeddings": c.tie_word_embeddings,
        "kv_bytes_per_token": c.kv_bytes_per_token(),
    } for c in CONFIGS.values()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("config", "params", "weights (bf16)", "layers", "hidden", "heads / kv", "vocab", "tied",
                  "KV / token")
    for r in rows:
        table.add_row(r["name"], _count(r["params"]), _bytes(r["weight_bytes"]), str(r["layers"]), str(r["hidden"]),
                      f"{r['heads']} / {r['kv_heads']}", str(r["vocab"]), "yes" if r["tied_embeddings"] else "no",
                      _bytes(r["kv_bytes_per_token"]))
    Console().print(table)


@app.command("make-weights")
@friendly
def make_weights(
    config: Annotated[str, typer.Argument(help="a config name (thaw engine configs)")],
    dest: Annotated[Path, typer.Argument(metavar="DIR", help="where to write the checkpoint")],
    seed: Annotated[int, typer.Option(help="seed of the random values")] = 0,
    shard_gb: Annotated[float, typer.Option(help="largest safetensors shard, in GiB")] = 4.0,
    device: Annotated[str | None, typer.Option(help="draw values on this device (default: cuda if present)")] = None,
    force: Annotated[bool, typer.Option(help="replace DIR if it is not empty")] = False,
) -> None:
    """Write a safetensors checkpoint of CONFIG with seeded random weights (HF layout, config.json)."""
    from thaw.engine.config import get_config
    from thaw.engine.weights import make_weights as write

    out = write(get_config(config), dest, seed=seed, shard_bytes=int(shard_gb * 1024**3), device=device,
                force=force)
    typer.echo(f"wrote {config} to {out.path}: {out.files} file(s), {_bytes(out.bytes)} in {out.seconds:.1f}s "
               f"({out.bytes / max(out.seconds, 1e-9) / 1e9:.2f} GB/s, values drawn on {out.generator})")


@app.command()
@friendly
def serve(
    weights: Annotated[Path, typer.Option(help="checkpoint dir (thaw engine make-weights)")],
    config: Annotated[str | None, typer.Option(help="expected config; must match the checkpoint")] = None,
    device: Annotated[str, typer.Option(help="auto | cuda | cpu")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | bfloat16 | float16 | float32")] = "auto",
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(help="0: any free port")] = 8000,
    uds: Annotated[Path | None, typer.Option(help="also serve on this unix socket (under thaw: "
                                                  "<control dir>/http.sock)")] = None,
    name: Annotated[str | None, typer.Option(help="the worker's name for thaw")] = None,
    max_batch: int = 8,
    max_model_len: Annotated[int | None, typer.Option(help="prompt + completion tokens (default: 4096 GPU, "
                                                            "1024 CPU)")] = None,
    block_size: int = 16,
    kv_gb: Annotated[float | None, typer.Option(help="KV-cache size (default on GPU: memory utilization)")] = None,
    gpu_memory_utilization: float = 0.9,
    graph_batch_sizes: str = "1,2,4,8",
    cuda_graphs: bool = True,
    canary_prompts: Annotated[int | None, typer.Option(help="how many canary prompts, 1-3 (default 1: a restore waits for the canary)")] = None,
    canary_tokens: Annotated[int | None, typer.Option(help="tokens per canary prompt (default: 8 GPU, 4 CPU)")] = None,
    log_level: str = "info",
    weights_from: Annotated[str, typer.Option(help="gms: map weights from this node's GPU memory service "
                                              "(they stay out of snapshots) | local | auto")] = "auto",
    gms_device: Annotated[str | None, typer.Option(help="the service's device when not this GPU "
                                                   "(memfd:NAME, the CPU stand-in)")] = None,
    graph_pool: Annotated[str, typer.Option(help="thaw: CUDA-graph activations released before a snapshot "
                                            "| torch")] = "thaw",
) -> None:
    """Warm up, park at thaw's quiesce point, then serve OpenAI-style completions."""
    from thaw.engine.options import ServeOptions, parse_batch_sizes
    from thaw.engine.startup import start

    opts = ServeOptions(
        weights=weights, config=config, device=device, dtype=dtype, host=host, port=port, uds=uds, name=name,
        max_batch=max_batch, max_model_len=max_model_len, block_size=block_size, kv_gb=kv_gb,
        gpu_memory_utilization=gpu_memory_utilization, graph_batch_sizes=parse_batch_sizes(graph_batch_sizes),
        cuda_graphs=cuda_graphs, canary_prompts=canary_prompts, canary_tokens=canary_tokens, log_level=log_level,
        weights_from=weights_from, gms_device=gms_device, graph_pool=graph_pool,
    )
    raise typer.Exit(start(opts))


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"
