"""``thaw snapshot | restore | ls | inspect | verify | rm``: artifacts, made, restored and looked after."""

from __future__ import annotations

import json
from pathlib import Path
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
from thaw.cli.output import console, emit_json, friendly, human_bytes, progress, safe, seconds
from thaw.model import TOTAL
from thaw.pipeline import http_canary
from thaw.store import parse_reference


@friendly
def snapshot(
    worker: Annotated[str, typer.Argument(help="the worker's name or id (see `thaw ps`)")],
    artifact: Annotated[str, typer.Option("--artifact", "-a", help="name of the new artifact")],
    leave_running: Annotated[bool, typer.Option(
        "--leave-running", help="keep the original worker and let it serve")] = False,
    ready_timeout: Annotated[float, typer.Option(help="seconds to wait for the worker's quiesce point")] = 600.0,
    canary_http: Annotated[Path | None, typer.Option(
        "--canary-http", help="JSONL of requests (OpenAI-style {\"prompt\": ...} / {\"messages\": ...} at "
        "temperature 0, or {\"method\", \"path\", \"body\"}) the original answers after the snapshot; every "
        "restored copy must answer alike", show_default=False)] = None,
    home: HomeOpt = None,
    store: StoreOpt = None,
    agent: AgentOpt = None,
    local: LocalOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Snapshot a parked worker into an artifact (GPU state, process tree, canary)."""
    requests = http_canary.parse(canary_http.read_text(), where=str(canary_http)) if canary_http else []
    ops = operations(home, store, agent, local)
    with unwind_on_sigterm(), progress(not json_out) as cb:
        res = ops.snapshot(worker, artifact, leave_running=leave_running, ready_timeout=ready_timeout,
                           canary_http=requests, progress=cb)
    if json_out:
        emit_json(res.model_dump(mode="json"))
        return
    console.print(f"[green]snapshot[/] [bold]{res.artifact}[/] ({human_bytes(res.bytes)}, {res.digest}) "
                  f"in {seconds(res.timings[TOTAL])}: " + phases(res.timings))
    if leave_running:
        console.print(f"worker [bold]{res.worker}[/] goes on serving")


@friendly
def restore(
    artifact: Annotated[str, typer.Argument(help="the artifact to restore: NAME, or NAME@DIGEST to restore only "
                                                 "that exact artifact (see `thaw ls`, `thaw inspect`)")],
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
    name_, digest = parse_reference(artifact)
    target = gpu_option(gpu)
    ops = operations(home, store, agent, local)
    with unwind_on_sigterm(), progress(not json_out) as cb:
        res = ops.restore(name_, name=name, gpu=target, verify_canary=canary, digest=digest, progress=cb)
    if json_out:
        emit_json(res.model_dump(mode="json"))
        return
    w = res.worker
    check = "canary passed" if res.canary.checked else "no canary"
    if res.canary.http_requests:
        check += f" ({res.canary.http_requests} HTTP requests answered as the original did)"
    console.print(f"[green]restored[/] [bold]{w.name}[/] ({w.id}), pid {w.host_pid}, {check}, "
                  f"in {seconds(res.timings[TOTAL])}: " + phases(res.timings))
    console.print(f"control directory: {w.control_dir}")


@friendly
def list_artifacts(home: HomeOpt = None, store: StoreOpt = None, agent: AgentOpt = None, local: LocalOpt = False,
                   json_out: JsonOpt = False) -> None:
    """List the artifacts in the store (the agent's store when an agent runs)."""
    ops = operations(home, store, agent, local)
    rows = ops.artifacts()
    if json_out:
        emit_json([a.model_dump(mode="json") for a in rows])
        return
    # the store listed, then its artifacts: an empty listing still says where it looked
    where = safe(ops.store_name)
    count = len(rows)
    console.print(f"{count} artifact{'' if count == 1 else 's'} in {where}" if count else f"no artifacts in {where}",
                  soft_wrap=True)
    if not rows:
        return
    table = Table("NAME", "WORKER", "SIZE", "CREATED", "FROM NODE", "GPUS", "DIGEST")
    for a in rows:  # every text from a manifest is untrusted: printed escaped (safe)
        table.add_row(safe(a.name), safe(a.worker), human_bytes(a.bytes), a.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                      safe(a.source_host), str(a.gpus) if a.gpus else "-", safe(a.digest))
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
    """Show an artifact's manifest: origin, worker, GPUs, released memory, files, timings, signature.

    Fails (exit 1) when a file the manifest lists is missing or has another size (a half-deleted artifact).
    """
    seen = operations(home, store, agent, local).inspect(artifact)
    m = seen.manifest
    if memory:
        from thaw.cli.memory_view import memory_breakdown, render_breakdown

        if json_out:
            emit_json(memory_breakdown(m))
        else:
            render_breakdown(m)
        return
    if json_out:
        emit_json({**json.loads(m.to_json()), "digest": m.digest, "size": m.size, "trust": seen.trust})
        return
    # every text below comes from the manifest, i.e. from whoever can write the store: printed escaped (safe)
    console.print(f"[bold]{safe(m.name)}[/]  id {m.artifact_id}  schema v{m.schema_version}")
    console.print(f"digest {m.digest}, {human_bytes(m.size)} in {len(m.files)} files")
    console.print(f"signature: {safe(seen.trust)}")
    src = m.source
    console.print(safe(f"taken {m.created_at:%Y-%m-%d %H:%M:%S %Z} on {src.host} (Linux {src.kernel}, "
                       f"CRIU {src.criu_version}, thaw {src.thaw_version}"
                       + (f", CUDA driver {src.cuda_driver}" if src.cuda_driver else "") + ")", limit=1000))
    console.print(f"worker {safe(m.worker.name)}: {safe(' '.join(m.worker.argv), limit=1000)}")
    console.print(f"canary: {'recorded' if m.worker.canary is not None else 'none'}; "
                  f"hooks: {safe(', '.join(m.worker.hooks) or 'none')}")
    if m.worker.http_canary is not None:
        console.print(f"HTTP canary: {len(m.worker.http_canary.exchanges)} requests to "
                      f"{safe(m.worker.http_canary.serves)}")
    if m.gpu_pids:
        console.print(f"GPU state of processes {', '.join(map(str, m.gpu_pids))} (pids inside the sandbox)")
    for g in m.gpus:
        used = f" ({human_bytes(g.used_bytes)} used)" if g.used_bytes else ""
        console.print(f"gpu: {safe(g.name)} {g.uuid}{used}")
    for r in m.memory_released:
        console.print(f"released before checkpoint: {safe(r.tag)} {human_bytes(r.bytes)}")
    console.print("timings: " + safe(phases(m.timings), limit=2000))
    table = Table("FILE", "SIZE", "DIGEST")
    for f in sorted(m.files, key=lambda f: -f.size)[:15]:
        table.add_row(safe(f.path), human_bytes(f.size), f.digest)
    console.print(table)


@friendly
def verify(artifact: Annotated[str, typer.Argument(help="the artifact: NAME, or NAME@DIGEST to also require "
                                                        "exactly that digest")],
           home: HomeOpt = None, store: StoreOpt = None, agent: AgentOpt = None, local: LocalOpt = False,
           json_out: JsonOpt = False) -> None:
    """Check an artifact: its digest (with NAME@DIGEST), its signature (when this node trusts keys), and every
    file against its manifest's sizes and digests."""
    name, digest = parse_reference(artifact)
    with progress(not json_out) as cb:
        res = operations(home, store, agent, local).verify(name, digest=digest, progress=cb)
    if json_out:
        emit_json(res.model_dump(mode="json"))
        return
    console.print(f"[green]ok[/] {safe(res.artifact)}: {res.files} files, {human_bytes(res.bytes)} match; "
                  f"digest {res.digest}" + (" (as expected)" if res.expected_digest else ""))
    console.print(f"signature: {safe(res.trust)}")


@friendly
def remove(artifact: Annotated[str, typer.Argument(help="the artifact's name")], home: HomeOpt = None,
           store: StoreOpt = None, agent: AgentOpt = None, local: LocalOpt = False, json_out: JsonOpt = False) -> None:
    """Delete an artifact from the store (also a leftover directory of that name that has no manifest)."""
    res = operations(home, store, agent, local).delete(artifact)
    if json_out:
        emit_json(res.model_dump(mode="json"))
    elif res.leftover:
        console.print(f"removed the leftover directory {res.artifact}: it had no manifest (not a complete artifact)")
    else:
        console.print(f"removed {res.artifact}")


def phases(timings: dict[str, float]) -> str:
    """The phase timings of a result, for one line (the store's own steps inside a fetch left out)."""
    return ", ".join(f"{k} {seconds(v)}" for k, v in timings.items() if k != TOTAL and not k.startswith("fetch_"))
