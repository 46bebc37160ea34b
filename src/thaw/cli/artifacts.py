"""``thaw snapshot | restore | ls | inspect | verify | rm``: artifacts, made, restored and looked after."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from thaw.cli.common import (
    AgentOpt,
    GpuOpt,
    HomeOpt,
    JsonOpt,
    LocalOpt,
    StoreOpt,
    gpu_option,
    operations,
    unwind_on_sigterm,
)
from thaw.cli.output import console, emit_json, friendly, human_bytes, progress, seconds
from thaw.model import TOTAL


@friendly
def snapshot(
    worker: Annotated[str, typer.Argument(help="the worker's name or id (see `thaw ps`)")],
    artifact: Annotated[str, typer.Option("--artifact", "-a", help="name of the new artifact")],
    leave_running: Annotated[bool, typer.Option(
        "--leave-running", help="keep the original worker and let it serve")] = False,
    ready_timeout: Annotated[float, typer.Option(help="seconds to wait for the worker's quiesce point")] = 600.0,
    home: HomeOpt = None,
    store: StoreOpt = None,
    agent: AgentOpt = None,
    local: LocalOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Snapshot a parked worker into an artifact (GPU state, process tree, canary)."""
    ops = operations(home, store, agent, local)
    with unwind_on_sigterm(), progress(not json_out) as cb:
        res = ops.snapshot(worker, artifact, leave_running=leave_running, ready_timeout=ready_timeout, progress=cb)
    if json_out:
        emit_json(res.model_dump(mode="json"))
        return
    console.print(f"[green]snapshot[/] [bold]{res.artifact}[/] ({human_bytes(res.bytes)}, {res.digest}) "
                  f"in {seconds(res.timings[TOTAL])}: " + phases(res.timings))
    if leave_running:
        console.print(f"worker [bold]{res.worker}[/] goes on serving")


@friendly
def restore(
    artifact: Annotated[str, typer.Argument(help="the artifact to restore (see `thaw ls`)")],
    name: Annotated[str | None, typer.Option(
        "--name", "-n", help="name of the restored worker [default: the original's]")] = None,
    gpu: GpuOpt = None,
    canary: Annotated[bool, typer.Option(
        "--canary/--no-canary", help="check the worker reproduces its recorded canary before it serves")] = True,
    home: HomeOpt = None,
    store: StoreOpt = None,
    agent: AgentOpt = None,
    local: LocalOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Restore an artifact as a new worker on this node (fresh namespaces; run it as often as you like)."""
    target = gpu_option(gpu)
    ops = operations(home, store, agent, local)
    with unwind_on_sigterm(), progress(not json_out) as cb:
        res = ops.restore(artifact, name=name, gpu=target, verify_canary=canary, progress=cb)
    if json_out:
        emit_json(res.model_dump(mode="json"))
        return
    w = res.worker
    check = "canary passed" if res.canary.checked else "no canary"
    console.print(f"[green]restored[/] [bold]{w.name}[/] ({w.id}), pid {w.host_pid}, {check}, "
                  f"in {seconds(res.timings[TOTAL])}: " + phases(res.timings))
    console.print(f"control directory: {w.control_dir}")


@friendly
def list_artifacts(home: HomeOpt = None, store: StoreOpt = None, agent: AgentOpt = None, local: LocalOpt = False,
                   json_out: JsonOpt = False) -> None:
    """List the artifacts in the store (the agent's store when an agent runs)."""
    rows = operations(home, store, agent, local).artifacts()
    if json_out:
        emit_json([a.model_dump(mode="json") for a in rows])
        return
    table = Table("NAME", "WORKER", "SIZE", "CREATED", "FROM NODE", "GPUS", "DIGEST")
    for a in rows:
        table.add_row(a.name, a.worker, human_bytes(a.bytes), a.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                      a.source_host, str(a.gpus) if a.gpus else "-", a.digest)
    console.print(table)


@friendly
def inspect(
    artifact: Annotated[str, typer.Argument(help="the artifact's name")],
    home: HomeOpt = None,
    store: StoreOpt = None,
    agent: AgentOpt = None,
    local: LocalOpt = False,
    json_out: JsonOpt = False,
    memory: Annotated[bool, typer.Option("--memory", help="break the image down by what its pages are")] = False,
) -> None:
    """Show an artifact's manifest: origin, worker, GPUs, released memory, files, timings."""
    m = operations(home, store, agent, local).manifest(artifact)
    if memory:
        from thaw.cli.memory_view import memory_breakdown, render_breakdown

        if json_out:
            emit_json(memory_breakdown(m))
        else:
            render_breakdown(m)
        return
    if json_out:
        emit_json({**json.loads(m.to_json()), "digest": m.digest, "size": m.size})
        return
    console.print(f"[bold]{m.name}[/]  id {m.artifact_id}  schema v{m.schema_version}")
    console.print(f"digest {m.digest}, {human_bytes(m.size)} in {len(m.files)} files")
    console.print(f"taken {m.created_at:%Y-%m-%d %H:%M:%S %Z} on {m.source.host} (Linux {m.source.kernel}, "
                  f"CRIU {m.source.criu_version}, thaw {m.source.thaw_version}"
                  + (f", CUDA driver {m.source.cuda_driver}" if m.source.cuda_driver else "") + ")")
    console.print(f"worker {m.worker.name}: {' '.join(m.worker.argv)}")
    console.print(f"canary: {'recorded' if m.worker.canary is not None else 'none'}; "
                  f"hooks: {', '.join(m.worker.hooks) or 'none'}")
    for g in m.gpus:
        console.print(f"gpu: {g.name} {g.uuid} " + (f"({human_bytes(g.used_bytes)} used)" if g.used_bytes else ""))
    for r in m.memory_released:
        console.print(f"released before checkpoint: {r.tag} {human_bytes(r.bytes)}")
    console.print("timings: " + phases(m.timings))
    table = Table("FILE", "SIZE", "DIGEST")
    for f in sorted(m.files, key=lambda f: -f.size)[:15]:
        table.add_row(f.path, human_bytes(f.size), f.digest)
    console.print(table)


@friendly
def verify(artifact: Annotated[str, typer.Argument(help="the artifact's name")], home: HomeOpt = None,
           store: StoreOpt = None, agent: AgentOpt = None, local: LocalOpt = False, json_out: JsonOpt = False) -> None:
    """Check every file of an artifact against its manifest's sizes and digests."""
    with progress(not json_out) as cb:
        res = operations(home, store, agent, local).verify(artifact, progress=cb)
    if json_out:
        emit_json(res.model_dump(mode="json"))
        return
    console.print(f"[green]ok[/] {res.artifact}: {res.files} files, {human_bytes(res.bytes)} match {res.digest}")


@friendly
def remove(artifact: Annotated[str, typer.Argument(help="the artifact's name")], home: HomeOpt = None,
           store: StoreOpt = None, agent: AgentOpt = None, local: LocalOpt = False, json_out: JsonOpt = False) -> None:
    """Delete an artifact from the store."""
    res = operations(home, store, agent, local).delete(artifact)
    if json_out:
        emit_json(res.model_dump(mode="json"))
        return
    console.print(f"removed {res.artifact}")


def phases(timings: dict[str, float]) -> str:
    """The phase timings of a result, for one line (the store's own steps inside a fetch left out)."""
    return ", ".join(f"{k} {seconds(v)}" for k, v in timings.items() if k != TOTAL and not k.startswith("fetch_"))
