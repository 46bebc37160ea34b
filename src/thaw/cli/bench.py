"""``thaw bench``: measure a worker's cold start and restores the way an operator would.

::

    thaw bench --name NAME [OPTIONS] -- CMD [ARGS...]     run (cold starts, a snapshot, restores)
    thaw bench --name NAME --artifact A --cold 0          restores of an existing artifact
    thaw bench report RESULT.json [...] [--readme FILE]   Markdown and plots of earlier results
    thaw bench schema                                     the result's JSON Schema

Goes through the node agent when one runs (``--agent``, ``$THAW_AGENT``, its default socket),
like ``thaw restore``; ``--local`` runs the pipeline in this process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from thaw.cli.output import console, err, fail, friendly
from thaw.cli.sections import replace_section

SECTION = "thaw-bench"


class _RunByDefault(TyperGroup):
    """``thaw bench [OPTIONS] -- CMD`` runs a benchmark: arguments that name no sub-command go to ``run``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_RunByDefault,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="Measure cold starts and restores of a worker: [bold]thaw bench --name N [OPTIONS] -- CMD[/]. "
    "`thaw bench run --help` lists the options.",
)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def run(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", "-n", help="names the benchmark, its workers and its artifact")],
    cold: Annotated[
        int, typer.Option("--cold", help="cold starts (process start → first answer) per page-cache state")
    ] = 3,
    restores: Annotated[
        int, typer.Option("--restores", "-N", help="restores per set (one at a time; and C at once)")
    ] = 10,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-C", help="restores at once in the concurrent set (1: no such set)")
    ] = 1,
    artifact: Annotated[
        Optional[str], typer.Option("--artifact", help="restore this existing artifact instead of taking a snapshot")
    ] = None,
    answer_http: Annotated[
        Optional[str],
        typer.Option(
            "--answer-http",
            metavar="URL-PATH",
            help="first answer = a 2xx reply to this HTTP request (default: the canary exchange)",
        ),
    ] = None,
    answer_body: Annotated[
        Optional[str],
        typer.Option(
            "--answer-body",
            metavar="JSON",
            help="request body (POST); /v1/completions and /v1/chat/completions get a greedy 8-token request",
        ),
    ] = None,
    answer_method: Annotated[
        Optional[str], typer.Option("--answer-method", help="GET or POST [default: POST with a body]")
    ] = None,
    answer_socket: Annotated[
        str, typer.Option("--answer-socket", help="the worker's unix socket, in its control directory")
    ] = "http.sock",
    answer_port: Annotated[
        Optional[int], typer.Option("--answer-port", help="ask on this TCP port of the worker's own loopback instead")
    ] = None,
    answer_compare: Annotated[
        Optional[list[str]],
        typer.Option(
            "--answer-compare",
            metavar="FIELD",
            help="dotted JSON path that copies must agree on (repeatable) [default: all; choices for completions]",
        ),
    ] = None,
    answer_timeout: Annotated[
        float, typer.Option("--answer-timeout", help="seconds to wait for a first answer")
    ] = 120.0,
    drop_caches: Annotated[
        bool, typer.Option("--drop-caches", help="also run every set from a cold page cache (root)")
    ] = False,
    pretouch: Annotated[
        float,
        typer.Option(
            "--pretouch", metavar="GIB", help="touch this much host memory first (memory grows on first touch)"
        ),
    ] = 0.0,
    gpus: Annotated[
        Optional[str],
        typer.Option("--gpus", help="restore onto these GPUs, round-robin (e.g. 0,1) [default: as recorded]"),
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="results directory [default: ./thaw-bench/NAME-DATE]")
    ] = None,
    keep_artifact: Annotated[bool, typer.Option("--keep-artifact", help="keep the artifact the run made")] = False,
    ready_timeout: Annotated[float, typer.Option(help="seconds a worker may take to reach its quiesce point")] = 900.0,
    time_limit: Annotated[
        Optional[float],
        typer.Option(
            "--time-limit",
            metavar="SECONDS",
            help="start no cold start or restore after this; the result says it stopped early",
        ),
    ] = None,
    home: Annotated[
        Optional[Path], typer.Option("--home", envvar="THAW_HOME", help="thaw's state directory", show_default=False)
    ] = None,
    store: Annotated[
        Optional[str], typer.Option("--store", envvar="THAW_STORE", help="artifact store", show_default=False)
    ] = None,
    agent: Annotated[
        Optional[str],
        typer.Option("--agent", envvar="THAW_AGENT", help="go through this node agent", show_default=False),
    ] = None,
    local: Annotated[bool, typer.Option("--local", help="run in this process even when an agent runs")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the result JSON on stdout")] = False,
) -> None:
    """Cold starts, one snapshot, then restores one at a time and C at once, each to its first answer, checked.

    Writes result.json (docs/bench.md), results.md and three PNG plots to --out.
    """
    from thaw.bench.answer import http_answer
    from thaw.bench.files import write_outputs
    from thaw.bench.runner import BenchOptions, run_bench
    from thaw.bench.schema import Answer

    argv = list(ctx.args)
    answer = (
        http_answer(
            answer_http,
            body=answer_body,
            method=answer_method,
            socket=answer_socket,
            port=answer_port,
            compare=answer_compare,
            timeout=answer_timeout,
        )
        if answer_http
        else Answer(kind="canary", timeout=answer_timeout)
    )
    options = BenchOptions(
        name=name,
        argv=argv,
        artifact=artifact,
        cold=cold,
        restores=restores,
        concurrency=concurrency,
        drop_caches=drop_caches,
        pretouch_bytes=int(pretouch * 2**30),
        gpus=[g.strip() for g in gpus.split(",") if g.strip()] if gpus else [],
        answer=answer,
        cwd=Path.cwd(),
        ready_timeout=ready_timeout,
        time_limit=time_limit,
        keep_artifact=keep_artifact,
    )
    options.check()  # before anything starts: a bad flag costs nothing
    ops = _operations(home, store, agent, local)
    out = out or Path("thaw-bench") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    from thaw.cli.main import _unwind_on_sigterm

    # every sample as it is measured: a run killed outright (SIGKILL, a lost machine) still leaves them
    with (out / "samples.jsonl").open("w") as stream, _unwind_on_sigterm(), _progress(not json_out) as listener:

        def sink(kind: str, sample: Any) -> None:
            stream.write(json.dumps({"kind": kind, **sample.model_dump(mode="json")}) + "\n")
            stream.flush()

        result = run_bench(options, ops, listener, sink)
    files = write_outputs([result], out, warn=_warn)
    if json_out:
        typer.echo(result.model_dump_json(indent=2))
    else:
        _print_summary(result)
        console.print(f"results: {', '.join(str(f) for f in files)}")
    if not result.complete:
        fail(f"the run stopped early ({result.stopped}); {out}/results.md has what it measured")
    failed = [r for r in result.restores if not r.ok]
    if failed:
        first = failed[0].failure
        why = f"{first.reason}: {first.message}" if first is not None else "no reason recorded"
        fail(f"{len(failed)} of {len(result.restores)} restores failed, the first with {why}; "
             f"{out}/results.md lists them all")


@app.command()
@friendly
def report(
    results: Annotated[list[Path], typer.Argument(help="result.json files of thaw bench (one per worker)")],
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="where to write results.md and the plots [default: beside the first result]"),
    ] = None,
    readme: Annotated[
        Optional[Path],
        typer.Option("--readme", help=f"also replace the <!-- {SECTION} --> section of this Markdown file"),
    ] = None,
) -> None:
    """Write the Markdown report and the plots of earlier results (several: side by side)."""
    from thaw.bench.files import write_outputs
    from thaw.bench.report import readme_section
    from thaw.bench.schema import load_result

    loaded = [load_result(p) for p in results]
    out = out or results[0].parent
    files = write_outputs(loaded, out, write_json=False, warn=_warn)
    if readme is not None:
        plot = next((f for f in files if f.name == "cold_vs_restore.png"), None)
        rel = _relative(plot, readme.parent) if plot else None
        replace_section(
            readme, SECTION, "\n\n".join(readme_section(r, rel if i == 0 else None) for i, r in enumerate(loaded))
        )
        files.append(readme)
    console.print(f"wrote {', '.join(str(f) for f in files)}")


@app.command()
def schema() -> None:
    """Print the JSON Schema of a thaw bench result (docs/bench.schema.json)."""
    from thaw.bench.schema import BenchResult

    typer.echo(json.dumps(BenchResult.model_json_schema(), indent=2))


def _warn(text: str) -> None:
    err.print(f"[yellow]{text}[/]")


def _operations(home: Path | None, store: str | None, agent: str | None, local: bool):  # type: ignore[no-untyped-def]
    from thaw.bench.operations import AgentOperations, LocalOperations
    from thaw.cli.remote import agent_for
    from thaw.config import Settings

    if client := agent_for(agent, local=local):
        return AgentOperations(client)
    kwargs: dict[str, Any] = {}
    if home is not None:
        kwargs["home"] = home
    if store is not None:
        kwargs["store"] = store
    return LocalOperations(Settings(**kwargs))


class _progress:
    """A rich progress bar per stage of the run (on stderr), fed by the runner's listener."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("[dim]{task.fields[detail]}"),
            console=err,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}
        self.last = ""

    def __enter__(self):  # type: ignore[no-untyped-def]
        if self.enabled and err.is_terminal:
            self.bar.start()
        return self.update

    def __exit__(self, *exc: object) -> None:
        if self.enabled and err.is_terminal:
            self.bar.stop()

    def update(self, stage: str, done: int, total: int, detail: str) -> None:
        if not self.enabled:
            return
        if stage == "clean-up":
            err.print(f"[yellow]{stage}[/]: {detail}")
            return
        if not err.is_terminal:  # a log file (nohup, CI): one line per step, not a redrawn bar
            line = f"{stage}: {done}/{total} {detail}".rstrip()
            if line != self.last:
                err.print(line, markup=False, highlight=False)
                self.last = line
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total or None, detail="")
        self.bar.update(self.tasks[stage], completed=done, total=total or None, detail=detail)


def _print_summary(result: Any) -> None:
    from thaw.bench.report import percent, seconds, set_label, times

    table = Table(title=f"thaw bench {result.plan.name}: restore → first answer")
    for col in ("set", "success", "exact", "p50", "p90", "p99", "max", "speed-up", "× floor"):
        table.add_column(col, justify="left" if col == "set" else "right")
    for s in result.summaries:
        table.add_row(
            set_label(s),
            f"{s.successes}/{s.attempts} ({percent(s.success_rate)})",
            f"{s.exact}/{s.attempts}",
            seconds(s.latency.p50),
            seconds(s.latency.p90),
            seconds(s.latency.p99),
            seconds(s.latency.max),
            times(s.speedup_p50),
            times(s.floor_multiple_p50),
        )
    console.print(table)
    for cache, d in result.cold_summary.items():
        console.print(
            f"cold start → first answer, page cache {cache}: p50 {seconds(d.p50)} "
            f"(min {seconds(d.min)}, max {seconds(d.max)}, n={d.count})"
        )


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)
