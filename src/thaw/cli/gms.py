"""``thaw gms``: the GPU memory service — run one per GPU, see what it holds, load or evict weight sets.

::

    thaw gms serve --gpu 0 --allow /models [--budget-gb 60] [--threads 8] [--dir /var/lib/thaw/gms]
    thaw gms status [--gpu 0] [--json]
    thaw gms load --gpu 0 /models/q8b/*.safetensors      # make a set resident ahead of time
    thaw gms evict --gpu 0 KEY
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from thaw.cli.output import console, emit_json, escape, friendly, human_bytes

app = typer.Typer(help="The GPU memory service: weights kept on the node, outside every snapshot.",
                  no_args_is_help=True)

GpuOpt = Annotated[str, typer.Option("--gpu", help="GPU index or UUID (memfd:NAME for the CPU stand-in)")]
DirOpt = Annotated[Path | None, typer.Option("--dir", help="where the services' sockets live "
                                             "[default: $THAW_GMS_DIR or <THAW_HOME>/gms]")]


def _gms_dir(given: Path | None) -> Path:
    if given is not None:
        return given
    from thaw.config import Settings

    return Settings().gms_dir


def _device_name(gpu: str) -> str:
    if gpu.startswith("memfd:") or gpu.upper().startswith("GPU-"):
        return gpu
    from thaw.cuda import devices

    for g in devices():
        if str(g.index) == gpu:
            return g.uuid
    from thaw.errors import ConfigError

    raise ConfigError("gpu", f"no GPU {gpu!r} on this host", hint="nvidia-smi -L lists them")


@app.command()
@friendly
def serve(
    gpu: GpuOpt = "0",
    allow: Annotated[list[Path], typer.Option("--allow", help="a directory weights may be loaded from "
                                              "(repeat for more); nothing outside is ever read")] = [],  # noqa: B006
    budget_gb: Annotated[float | None, typer.Option(help="GPU memory the resident sets may use; least recently "
                                                    "used unmapped sets are evicted past it [default: free memory]")]
    = None,
    threads: Annotated[int, typer.Option(min=0, max=64, help="reader threads, two pinned 64 MiB buffers each "
                                         "[default 0: one per core, at most 16]")] = 0,
    io: Annotated[str, typer.Option(help="auto (O_DIRECT for files not in the page cache), buffered or direct")]
    = "auto",
    gms_dir: DirOpt = None,
) -> None:
    """Run the service for one GPU in the foreground (the agent starts one per GPU itself)."""
    from thaw.errors import ConfigError
    from thaw.gms.device import open_backend
    from thaw.gms.server import Server
    from thaw.gms.service import WeightService

    if io not in ("auto", "buffered", "direct"):
        raise ConfigError("io", f"auto, buffered or direct, got {io!r}")
    import os

    backend = open_backend(gpu)
    threads = threads or min(16, os.cpu_count() or 8)
    service = WeightService(backend, allow=list(allow), threads=threads, io=io,  # type: ignore[arg-type]
                            budget_bytes=int(budget_gb * 2**30) if budget_gb else None)
    server = Server(service, _gms_dir(gms_dir))
    try:
        server.bind()
    except BaseException:
        service.close()
        raise
    console.print(f"thaw gms: serving {escape(backend.device)} on {escape(str(server.path))} "
                  f"(allowed: {escape(', '.join(map(str, service.allow)))})", highlight=False)
    server.serve_forever()


@app.command()
@friendly
def status(gpu: GpuOpt = "0", gms_dir: DirOpt = None,
           as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """What the service of one GPU holds: each set, its state, bytes, holders and how fast it loaded."""
    from rich.table import Table

    from thaw.gms import Client

    with Client.for_device(_gms_dir(gms_dir), _device_name(gpu), timeout=10) as client:
        st = client.status()
    if as_json:
        emit_json(st.model_dump(mode="json"))
        return
    console.print(f"{escape(st.device)} (pid {st.pid}): {human_bytes(st.resident_bytes)} resident"
                  + (f", {human_bytes(st.free_bytes)} free on the GPU" if st.free_bytes is not None else "")
                  + (f", budget {human_bytes(st.budget_bytes)}" if st.budget_bytes else ""), highlight=False)
    table = Table("key", "state", "bytes", "holders", "load", "files")
    for s in st.sets:
        load = f"{s.load.gbps:.1f} GB/s ({s.load.io})" if s.load else (escape(s.error or "") if s.error else "")
        files = escape(s.files[0] + (f" (+{len(s.files) - 1})" if len(s.files) > 1 else "")) if s.files else ""
        table.add_row(escape(s.key or "-"), s.state, human_bytes(s.bytes), str(s.holders), load, files)
    console.print(table)


@app.command()
@friendly
def load(files: Annotated[list[Path], typer.Argument(help="safetensors files of one model")],
         gpu: GpuOpt = "0", gms_dir: DirOpt = None,
         as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Make a weight set resident now (in file order), and report how fast it loaded."""
    from thaw.gms import Client, WeightSpec
    from thaw.gms.plan import describe

    spec = WeightSpec(files=describe([str(f) for f in files]))
    with Client.for_device(_gms_dir(gms_dir), _device_name(gpu)) as client:
        st = client.prefetch(spec, wait=True)
    if as_json:
        emit_json(st.model_dump(mode="json"))
        return
    rate = f" at {st.load.gbps:.1f} GB/s ({st.load.io}, {st.load.threads} threads)" if st.load else ""
    console.print(f"{escape(st.key or '')}: {human_bytes(st.bytes)} resident{rate}", highlight=False)


@app.command()
@friendly
def evict(key: Annotated[str, typer.Argument(help="the set's key (thaw gms status)")],
          gpu: GpuOpt = "0", gms_dir: DirOpt = None) -> None:
    """Free a resident set that no worker maps."""
    from thaw.gms import Client

    with Client.for_device(_gms_dir(gms_dir), _device_name(gpu), timeout=10) as client:
        st = client.evict(key)
    console.print(f"evicted {escape(key)} ({human_bytes(st.bytes)})", highlight=False)
