"""``thaw run | ps | gc | release | stop``: the workers on this node."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from thaw.api.models import Recovery, Worker
from thaw.cli.common import AgentOpt, HomeOpt, JsonOpt, LocalOpt, StoreOpt, duration, operations
from thaw.cli.output import console, emit_json, err, fail, friendly, progress
from thaw.errors import ConfigError
from thaw.listen import ParkAtListen
from thaw.ops import Operations


@friendly
def run(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", "-n", help="the worker's name (used by snapshot, release, stop)")],
    wait: Annotated[bool, typer.Option(
        "--wait/--no-wait", help="wait until the worker parks at its quiesce point")] = False,
    ready_timeout: Annotated[float, typer.Option(help="seconds to wait for the quiesce point with --wait")] = 600.0,
    park_at_listen: Annotated[bool, typer.Option(
        "--park-at-listen", help="an unmodified Python server: park it at its first TCP listening socket, before "
        "the bind (docs/integrations.md)")] = False,
    park_port: Annotated[int | None, typer.Option(
        "--park-port", help="park at the bind of this TCP port (implies --park-at-listen)", show_default=False)] = None,
    park_path: Annotated[str | None, typer.Option(
        "--park-path", help="park at the bind of this unix socket path, '@name' for an abstract one (implies "
        "--park-at-listen)", show_default=False)] = None,
    park_nth: Annotated[int, typer.Option("--park-nth", help="park at the n-th matching bind")] = 1,
    park_min_warmup: Annotated[float, typer.Option(
        "--park-min-warmup", help="seconds: a bind sooner after start is 'early': not parked, reported")] = 2.0,
    park_expect_gpu: Annotated[str, typer.Option(
        "--park-expect-gpu", help="auto | yes | no: a bind before any process holds a GPU is 'early' (auto: where "
        "the sandbox sees a GPU)")] = "auto",
    home: HomeOpt = None,
    agent: AgentOpt = None,
    local: LocalOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Start a worker in a snapshot-able sandbox: [bold]thaw run --name NAME -- CMD [ARGS...][/].

    The worker runs in new pid, mount and network namespaces. It warms up, then calls
    thaw.worker.quiesce() and parks until you snapshot or release it. A server that knows
    nothing of thaw (a FastAPI app, vLLM, SGLang) runs with [bold]--park-at-listen[/]: thaw parks
    it inside its first bind of a listening socket, which proceeds once it is thawed or released.
    """
    argv = list(ctx.args)
    if not argv:
        fail("no command given", "thaw run --name NAME -- CMD [ARGS...]", code=2)
    park = None
    if park_at_listen or park_port is not None or park_path is not None:
        try:
            park = ParkAtListen(port=park_port, path=park_path, nth=park_nth, min_warmup_s=park_min_warmup,
                                expect_gpu=park_expect_gpu)
        except ValueError as exc:
            fail(f"--park-at-listen: {exc}", "thaw run --help", code=2)
    ops = operations(home, agent=agent, local=local)
    # the worker gets this command's environment and working directory, wherever it is launched
    worker = ops.launch(name, argv, env=dict(os.environ), cwd=Path.cwd(), park=park)
    if wait:
        with progress(not json_out) as cb:
            cb("warm-up", None, f"waiting for {name} to reach its quiesce point")
            worker = ops.wait_ready(worker.id, ready_timeout)
    if json_out:
        emit_json(worker.model_dump(mode="json"))
    else:
        console.print(f"started [bold]{worker.name}[/] ({worker.id}), pid {worker.host_pid}; "
                      f"log: {Path(worker.control_dir) / 'worker.log'}")


@friendly
def ps(
    all_: Annotated[bool, typer.Option("--all", "-a", help="include workers that are gone")] = False,
    home: HomeOpt = None,
    agent: AgentOpt = None,
    local: LocalOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """List the workers on this node (and settle operations whose process died, as `thaw gc` does)."""
    ops = operations(home, agent=agent, local=local)
    _recover(ops)
    rows = ops.workers(include_gone=all_)
    if json_out:
        emit_json([w.model_dump(mode="json") for w in rows])
        return
    table = Table("NAME", "ID", "PID", "STATE", "ORIGIN", "CREATED")
    for w in rows:
        state = ("parked" if w.parked else "running") if w.alive else w.state
        origin = f"restored from {w.artifact}" if w.origin == "restored" else "launched"
        table.add_row(w.name, w.id, str(w.host_pid), state, origin, w.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    console.print(table)


@friendly
def gc(
    older_than: Annotated[str, typer.Option(
        "--older-than", help="also remove what no owner on this node can claim once older than this: other nodes' or "
        "earlier boots' staging, unfinished S3 uploads, directories of workers gone (90m, 24h, 7d)")] = "24h",
    home: HomeOpt = None, store: StoreOpt = None, agent: AgentOpt = None, local: LocalOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Clean up after crashes: kill restored copies whose restore died (e.g. SIGKILL), roll back interrupted
    snapshots, remove staging debris of dead snapshots and fetches, abort interrupted uploads, and prune old
    instance directories."""
    try:
        age = duration(older_than, option="--older-than")
    except ConfigError as exc:
        fail(exc.message, exc.hint, code=2)  # a usage error, like typer's own
    ops = operations(home, store, agent, local)
    recovered = _recover(ops)
    swept = ops.sweep(age)
    if json_out:
        emit_json({"recovered": [r.model_dump(mode="json") for r in recovered], "swept": swept.model_dump(mode="json")})
        return
    restores = sum(1 for r in recovered if r.operation == "restore")
    snapshots = len(recovered) - restores
    console.print(f"recovered {restores} interrupted restore(s)"
                  + (f", {snapshots} interrupted snapshot(s)" if snapshots else "")
                  + f"; removed {len(swept.staging)} node staging entries, {swept.store_entries} store staging "
                  f"entries and uploads, {len(swept.instances)} instance directories older than {older_than}",
                  highlight=False)


@friendly
def release(worker: Annotated[str, typer.Argument(help="the worker's name or id")], home: HomeOpt = None,
            agent: AgentOpt = None, local: LocalOpt = False, json_out: JsonOpt = False) -> None:
    """Let a parked worker go on serving without taking a snapshot."""
    _show(operations(home, agent=agent, local=local).release(worker), "released", json_out)


@friendly
def stop(worker: Annotated[str, typer.Argument(help="the worker's name or id")], home: HomeOpt = None,
         agent: AgentOpt = None, local: LocalOpt = False, json_out: JsonOpt = False) -> None:
    """Stop a worker (parked or serving) and remove its sandbox."""
    _show(operations(home, agent=agent, local=local).stop(worker), "stopped", json_out)


def _show(worker: Worker, done: str, json_out: bool) -> None:
    if json_out:
        emit_json(worker.model_dump(mode="json"))
    else:
        console.print(f"{done} [bold]{worker.name}[/] ({worker.id})")


def _recover(ops: Operations) -> list[Recovery]:
    recovered = ops.recover()
    for r in recovered:
        w = r.worker
        if r.operation == "restore":
            err.print(f"killed {w.name} ({w.id}): its restore by pid {r.owner_pid} never finished", highlight=False)
        else:
            err.print(f"settled the snapshot of {w.name} ({w.id}) that pid {r.owner_pid} left in "
                      f"{r.phase or 'its start'}: {'; '.join(r.notes)}", highlight=False)
    return recovered
