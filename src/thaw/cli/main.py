"""``thaw``: snapshot a warmed inference worker once, restore it in seconds.

    thaw run --name llm -- python -m thaw.engine serve --config tiny --weights W
    thaw snapshot llm --artifact llm-v1
    thaw restore llm-v1            # as often as you like, on any node sharing the store
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from thaw.cli.output import console, emit_json, err, fail, friendly, human_bytes, progress, safe, seconds
from thaw.config import Settings
from thaw.errors import ThawError

app = typer.Typer(
    name="thaw",
    help="Snapshot a warmed GPU inference worker once; restore it in seconds, on any node.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

HomeOpt = Annotated[Optional[Path], typer.Option("--home", envvar="THAW_HOME", help="thaw's state directory (same path on every node) [default: /var/lib/thaw]", show_default=False)]
StoreOpt = Annotated[Optional[str], typer.Option("--store", envvar="THAW_STORE", help="artifact store: a directory, dir:///path or s3://bucket/prefix [default: HOME/artifacts]", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]
AgentOpt = Annotated[Optional[str], typer.Option("--agent", envvar="THAW_AGENT", help="go through this node agent: a unix socket path or http://HOST:PORT ($THAW_AGENT_TOKEN) [default: /run/thaw/agent.sock when an agent serves it]", show_default=False)]
LocalOpt = Annotated[bool, typer.Option("--local", help="run in this process even when an agent runs")]


def _settings(home: Path | None, store: str | None) -> Settings:
    kwargs: dict[str, object] = {}
    if home is not None:
        kwargs["home"] = home
    if store is not None:
        kwargs["store"] = store
    return Settings(**kwargs)  # type: ignore[arg-type]


def _store(settings: Settings):
    """The store ``settings`` name, after removing what crashed operations left in its staging and the node's."""
    from thaw.pipeline.cleanup import sweep
    from thaw.store import store_for

    store = store_for(settings)
    try:
        sweep(settings, store)
    except (ThawError, OSError) as exc:  # a clean-up that fails must not fail the command: `thaw gc` says more
        err.print(f"[yellow]warning:[/] could not sweep staging debris: {safe(str(exc))}")
    return store


def _duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d`` → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        fail(f"--older-than: {text!r} is not a duration", "e.g. 3600, 90m, 24h or 7d", code=2)
    if value < 0:
        fail(f"--older-than: {text!r} is negative", "e.g. 3600, 90m, 24h or 7d", code=2)
    return value


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def run(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", "-n", help="the worker's name (used by snapshot, release, stop)")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait until the worker parks at its quiesce point")] = False,
    ready_timeout: Annotated[float, typer.Option(help="seconds to wait for the quiesce point with --wait")] = 600.0,
    park_at_listen: Annotated[bool, typer.Option("--park-at-listen", help="an unmodified Python server: park it at its first TCP listening socket, before the bind (docs/integrations.md)")] = False,
    park_port: Annotated[Optional[int], typer.Option("--park-port", help="park at the bind of this TCP port (implies --park-at-listen)", show_default=False)] = None,
    park_path: Annotated[Optional[str], typer.Option("--park-path", help="park at the bind of this unix socket path, '@name' for an abstract one (implies --park-at-listen)", show_default=False)] = None,
    park_nth: Annotated[int, typer.Option("--park-nth", help="park at the n-th matching bind")] = 1,
    park_min_warmup: Annotated[float, typer.Option("--park-min-warmup", help="seconds: a bind sooner after start is 'early': not parked, reported")] = 2.0,
    park_expect_gpu: Annotated[str, typer.Option("--park-expect-gpu", help="auto | yes | no: a bind before any process holds a GPU is 'early' (auto: where the sandbox sees a GPU)")] = "auto",
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Start a worker in a snapshot-able sandbox: [bold]thaw run --name NAME -- CMD [ARGS...][/].

    The worker runs in new pid, mount and network namespaces. It warms up, then calls
    thaw.worker.quiesce() and parks until you snapshot or release it. A server that knows
    nothing of thaw (a FastAPI app, vLLM, SGLang) runs with [bold]--park-at-listen[/]: thaw parks
    it inside its first bind of a listening socket, which proceeds once it is thawed or released.
    """
    from thaw import pipeline
    from thaw.listen import ParkAtListen

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
    settings = _settings(home, None)
    inst = pipeline.launch(settings, argv, name=name, park=park)
    if wait:
        with progress(not json_out) as cb:
            cb("warm-up", None, f"waiting for {name} to reach its quiesce point")
            pipeline.wait_ready(settings, inst, ready_timeout)
    if json_out:
        emit_json(inst.model_dump(mode="json"))
    else:
        console.print(f"started [bold]{inst.name}[/] ({inst.id}), pid {inst.host_pid}; log: {inst.log}")


@app.command()
@friendly
def ps(
    all_: Annotated[bool, typer.Option("--all", "-a", help="include workers that are gone")] = False,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List the workers on this node."""
    from thaw import pipeline

    settings = _settings(home, None)
    _recover(settings)
    rows = [i for i in pipeline.list_instances(settings) if all_ or i.alive()]
    if json_out:
        emit_json([{**i.model_dump(mode="json"), "alive": i.alive(), "parked": i.parked()} for i in rows])
        return
    table = Table("NAME", "ID", "PID", "STATE", "ORIGIN", "CREATED")
    for i in rows:
        state = ("parked" if i.parked() else "running") if i.alive() else i.state
        origin = f"restored from {i.artifact}" if i.origin == "restored" else "launched"
        table.add_row(i.name, i.id, str(i.host_pid), state, origin, i.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    console.print(table)


@app.command()
@friendly
def gc(
    older_than: Annotated[str, typer.Option("--older-than", help="also remove what no owner on this node can "
                                            "claim once older than this: other nodes' or earlier boots' staging, "
                                            "unfinished S3 uploads, directories of workers gone (90m, 24h, 7d)")]
    = "24h",
    home: HomeOpt = None,
    store: StoreOpt = None,
) -> None:
    """Clean up after crashes: kill restored copies whose restore died (e.g. SIGKILL), remove staging debris of
    dead snapshots and fetches, abort interrupted uploads, and prune old instance directories."""
    from thaw.pipeline.cleanup import sweep
    from thaw.store import store_for

    age = _duration(older_than)
    settings = _settings(home, store)
    recovered = _recover(settings)
    swept = sweep(settings, store_for(settings), older_than_s=age)
    console.print(f"recovered {len(recovered)} interrupted restore(s); removed {len(swept.staging)} node staging "
                  f"entries, {swept.store_entries} store staging entries and uploads, "
                  f"{len(swept.instances)} instance directories older than {older_than}")


def _recover(settings: Settings) -> list:
    from thaw import pipeline

    recovered = pipeline.recover(settings)
    for inst in recovered:
        err.print(f"killed {inst.name} ({inst.id}): its restore by pid {inst.owner_pid} never finished")
    return recovered


@contextmanager
def _unwind_on_sigterm() -> Iterator[None]:
    """Make SIGTERM (kill, systemd, kubelet) unwind like Ctrl-C: a half-done restore then kills what it restored,
    and a half-done snapshot rolls the worker back, instead of dying with the work half done."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
@friendly
def snapshot(
    worker: Annotated[str, typer.Argument(help="the worker's name or id (see `thaw ps`)")],
    artifact: Annotated[str, typer.Option("--artifact", "-a", help="name of the new artifact")],
    leave_running: Annotated[bool, typer.Option("--leave-running", help="keep the original worker and let it serve")] = False,
    ready_timeout: Annotated[float, typer.Option(help="seconds to wait for the worker's quiesce point")] = 600.0,
    canary_http: Annotated[Optional[Path], typer.Option("--canary-http", help="JSONL of requests (OpenAI-style {\"prompt\": ...} / {\"messages\": ...} at temperature 0, or {\"method\", \"path\", \"body\"}) the original answers after the snapshot; every restored copy must answer alike", show_default=False)] = None,
    home: HomeOpt = None,
    store: StoreOpt = None,
    agent: AgentOpt = None,
    local: LocalOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Snapshot a parked worker into an artifact (GPU state, process tree, canary)."""
    from thaw import pipeline
    from thaw.cli.remote import agent_for, follow
    from thaw.pipeline.http_canary import parse

    requests = parse(canary_http.read_text(), where=str(canary_http)) if canary_http else []
    if client := agent_for(agent, local=local):
        result = follow(client, client.snapshot(worker, artifact, leave_running=leave_running,
                                                ready_timeout=ready_timeout, canary_http=requests),
                        json_out=json_out)
        if result is not None:
            console.print(f"[green]snapshot[/] [bold]{result['artifact']}[/] ({human_bytes(result['bytes'])}, "
                          f"{result['digest']}) through the agent: " + _phases(result.get("timings", {})))
        return
    settings = _settings(home, store)
    with _unwind_on_sigterm(), progress(not json_out) as cb:
        res = pipeline.snapshot(settings, worker, artifact, store=_store(settings), leave_running=leave_running,
                                ready_timeout=ready_timeout, canary_http=requests, progress=cb)
    if json_out:
        emit_json({"manifest": json.loads(res.manifest.to_json()), "digest": res.manifest.digest, "timings": res.timings})
        return
    m = res.manifest
    console.print(f"[green]snapshot[/] [bold]{m.name}[/] ({human_bytes(m.size)}, {m.digest}) "
                  f"in {seconds(res.timings['total'])}: " + _phases(res.timings))
    if leave_running:
        console.print(f"worker [bold]{res.instance.name}[/] goes on serving")


@app.command()
@friendly
def restore(
    artifact: Annotated[str, typer.Argument(help="the artifact to restore: NAME, or NAME@DIGEST to restore only "
                                                 "that exact artifact (see `thaw ls`, `thaw inspect`)")],
    name: Annotated[Optional[str], typer.Option("--name", "-n", help="name of the restored worker [default: the original's]")] = None,
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="restore onto this GPU (index or UUID) [default: the recorded one]")] = None,
    canary: Annotated[bool, typer.Option("--canary/--no-canary", help="check the worker reproduces its recorded canary before it serves")] = True,
    home: HomeOpt = None,
    store: StoreOpt = None,
    agent: AgentOpt = None,
    local: LocalOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Restore an artifact as a new worker on this node (fresh namespaces; run it as often as you like)."""
    from thaw import pipeline
    from thaw.cli.remote import agent_for, follow
    from thaw.store import parse_reference

    artifact, digest = parse_reference(artifact)
    target: int | str | None = int(gpu) if gpu is not None and gpu.isdigit() else gpu
    if client := agent_for(agent, local=local):
        result = follow(client, client.restore(artifact, name=name, gpu=target, verify_canary=canary, digest=digest),
                        json_out=json_out)
        if result is not None:
            w = result["worker"]
            console.print(f"[green]restored[/] [bold]{w['name']}[/] ({w['id']}) through the agent, pid {w['host_pid']}, "
                          f"canary {'passed' if (result.get('canary') or {}).get('match') else 'not checked'}: "
                          + _phases(result.get("timings", {})))
            console.print(f"control directory: {w['control_dir']}")
        return
    settings = _settings(home, store)
    with _unwind_on_sigterm(), progress(not json_out) as cb:
        res = pipeline.restore(settings, artifact, store=_store(settings), gpu_target=target, name=name,
                               verify_canary=canary, expected_digest=digest, progress=cb)
    inst = res.instance
    if json_out:
        emit_json({"instance": inst.model_dump(mode="json"), "timings": res.timings,
                   "canary": "passed" if res.canary_checked else "not checked"})
        return
    check = "canary passed" if res.canary_checked else "no canary"
    if res.http_canary_got:
        check += f" ({len(res.http_canary_got)} HTTP requests answered as the original did)"
    console.print(f"[green]restored[/] [bold]{inst.name}[/] ({inst.id}), pid {inst.host_pid}, {check}, "
                  f"in {seconds(res.timings['total'])}: " + _phases(res.timings))
    console.print(f"control directory: {inst.dir}")


@app.command()
@friendly
def release(worker: Annotated[str, typer.Argument(help="the worker's name or id")], home: HomeOpt = None) -> None:
    """Let a parked worker go on serving without taking a snapshot."""
    from thaw import pipeline

    inst = pipeline.release(_settings(home, None), worker)
    console.print(f"released [bold]{inst.name}[/] ({inst.id})")


@app.command()
@friendly
def stop(worker: Annotated[str, typer.Argument(help="the worker's name or id")], home: HomeOpt = None) -> None:
    """Stop a worker (parked or serving) and remove its sandbox."""
    from thaw import pipeline

    inst = pipeline.stop(_settings(home, None), worker)
    console.print(f"stopped [bold]{inst.name}[/] ({inst.id})")


@app.command("ls")
@friendly
def list_artifacts(home: HomeOpt = None, store: StoreOpt = None, agent: AgentOpt = None, local: LocalOpt = False,
                   json_out: JsonOpt = False) -> None:
    """List the artifacts in the store (the agent's store when an agent runs)."""
    from thaw.cli.remote import agent_for

    if client := agent_for(agent, local=local):
        rows = [a.model_dump(mode="json") for a in client.artifacts()]
        if json_out:
            emit_json(rows)
            return
        table = Table(*(k.upper() for k in ("name", "bytes", "digest", "created_at")))
        for a in rows:
            table.add_row(safe(a.get("name", "")), human_bytes(a.get("bytes", 0)), safe(a.get("digest", "")),
                          safe(a.get("created_at", "")))
        _print_listing(table, len(rows), f"the store of the agent at {safe(client.where)}")
        return
    settings = _settings(home, store)
    manifests = _store(settings).list()
    if json_out:
        emit_json([{"name": m.name, "artifact_id": m.artifact_id, "digest": m.digest, "size": m.size,
                    "created_at": m.created_at, "worker": m.worker.name, "source": m.source.host} for m in manifests])
        return
    table = Table("NAME", "WORKER", "SIZE", "CREATED", "FROM NODE", "GPUS")
    for m in manifests:  # every text from a manifest is untrusted: printed escaped (safe)
        table.add_row(safe(m.name), safe(m.worker.name), human_bytes(m.size),
                      m.created_at.strftime("%Y-%m-%d %H:%M:%S"), safe(m.source.host),
                      safe(", ".join(str(g.get("name", "?")) for g in m.gpus) or "-"))
    _print_listing(table, len(manifests), safe(settings.store_url))


def _print_listing(table: Table, count: int, store: str) -> None:
    """The store listed, then its artifacts: an empty listing still says where it looked."""
    console.print(f"{count} artifact{'' if count == 1 else 's'} in {store}" if count else f"no artifacts in {store}",
                  soft_wrap=True)
    if count:
        console.print(table)


@app.command()
@friendly
def inspect(
    artifact: Annotated[str, typer.Argument(help="the artifact's name")],
    home: HomeOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    memory: Annotated[bool, typer.Option("--memory", help="break the image down by what its pages are")] = False,
) -> None:
    """Show an artifact's manifest: origin, worker, GPUs, released memory, files, timings, signature.

    Fails (exit 1) when a file the manifest lists is missing or has another size (a half-deleted artifact).
    """
    s = _store(_settings(home, store))
    m = s.check_complete(artifact)
    if memory:
        from thaw.cli.memory_view import memory_breakdown, render_breakdown

        if json_out:
            emit_json(memory_breakdown(m))
        else:
            render_breakdown(m)
        return
    if json_out:
        emit_json({**json.loads(m.to_json()), "digest": m.digest, "size": m.size, "trust": s.trust.describe(m)})
        return
    # every text below comes from the manifest, i.e. from whoever can write the store: printed escaped (safe)
    console.print(f"[bold]{safe(m.name)}[/]  id {m.artifact_id}  schema v{m.schema_version}")
    console.print(f"digest {m.digest}, {human_bytes(m.size)} in {len(m.files)} files")
    console.print(f"signature: {safe(s.trust.describe(m))}")
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
        used = g.get("used_bytes")
        amount = f" ({human_bytes(used)} used)" if isinstance(used, int) and not isinstance(used, bool) and used else ""
        console.print(f"gpu: {safe(g.get('name'))} {safe(g.get('uuid'))}{amount}")
    for r in m.memory_released:
        console.print(f"released before checkpoint: {safe(r.tag)} {human_bytes(r.bytes)}")
    console.print("timings: " + safe(_phases(m.timings), limit=2000))
    table = Table("FILE", "SIZE", "DIGEST")
    for f in sorted(m.files, key=lambda f: -f.size)[:15]:
        table.add_row(safe(f.path), human_bytes(f.size), f.digest)
    console.print(table)


@app.command()
@friendly
def verify(artifact: Annotated[str, typer.Argument(help="the artifact: NAME, or NAME@DIGEST to also require "
                                                        "exactly that digest")],
           home: HomeOpt = None, store: StoreOpt = None) -> None:
    """Check an artifact: its digest (with NAME@DIGEST), its signature (when this node trusts keys), and every
    file against its manifest's sizes and digests."""
    from thaw.store import parse_reference

    name, digest = parse_reference(artifact)
    s = _store(_settings(home, store))
    m = s.verify(name, expected_digest=digest)
    console.print(f"[green]ok[/] {safe(m.name)}: {len(m.files)} files, {human_bytes(m.size)} match; digest {m.digest}"
                  + (" (as expected)" if digest else ""))
    console.print(f"signature: {safe(s.trust.describe(m))}")


@app.command("rm")
@friendly
def remove(artifact: Annotated[str, typer.Argument(help="the artifact's name")], home: HomeOpt = None,
           store: StoreOpt = None) -> None:
    """Delete an artifact from the store (also a leftover directory of that name that has no manifest)."""
    if _store(_settings(home, store)).delete(artifact) == "leftover":
        console.print(f"removed the leftover directory {artifact}: it had no manifest (not a complete artifact)")
    else:
        console.print(f"removed {artifact}")


@app.command()
@friendly
def doctor(home: HomeOpt = None, store: StoreOpt = None) -> None:
    """Check this host: root and capabilities, kernel, CRIU >= 4 and `criu check`, store, NVIDIA driver >= 580."""
    from thaw.doctor import run_checks

    checks = run_checks(_settings(home, store))
    table = Table("CHECK", "", "DETAIL", "FIX")
    for c in checks:
        mark = "[green]ok[/]" if c.ok else ("[red]FAIL[/]" if c.required else "[yellow]warn[/]")
        table.add_row(c.name, mark, c.detail, "" if c.ok else c.fix)
    console.print(table)
    if any(not c.ok and c.required for c in checks):
        raise typer.Exit(1)


@app.command()
@friendly
def demo(
    home: Annotated[Path, typer.Option("--home", help="where the demo keeps its state")] = Path("/var/lib/thaw/demo"),
    keep: Annotated[bool, typer.Option("--keep", help="leave the demo's workers running")] = False,
) -> None:
    """Cold-start a real inference worker (torch.compile'd encoder + index, CPU), snapshot it, restore copies, compare."""
    from thaw.demo import run_demo

    run_demo(home, keep=keep)


def _phases(timings: dict[str, float]) -> str:
    return ", ".join(f"{k} {seconds(v)}" for k, v in timings.items() if k not in ("total",) and not k.startswith("fetch_"))


def _mount_subapps() -> None:
    # each sub-app lives in its own module and imports its heavy dependencies lazily
    for module, name, help_text in (
        ("thaw.cli.engine", "engine", "The reference inference engine (Qwen3-architecture LLM server)."),
        ("thaw.cli.agent", "agent", "The per-node agent: snapshot/restore as a service."),
        ("thaw.cli.operator", "operator", "The Kubernetes operator."),
        ("thaw.cli.gms", "gms", "The GPU memory service: weights kept on the node, outside every snapshot."),
        ("thaw.cli.keys", "keys", "Signing keys for artifacts (ed25519)."),
        ("thaw.cli.audit", "audit", "The node agent's audit log: check its hash chain."),
        ("thaw.cli.bench", "bench", "Measure cold starts and restores of a worker (thaw bench --name N -- CMD)."),
    ):
        try:
            sub = __import__(module, fromlist=["app"]).app
        except ImportError:
            continue
        app.add_typer(sub, name=name, help=help_text)


_mount_subapps()
app.command("cost")(__import__("thaw.cli.cost", fromlist=["cost"]).cost)

if __name__ == "__main__":
    app()
