"""``thaw``: snapshot a warmed inference worker once, restore it in seconds.

    thaw run --name llm -- python -m thaw.engine serve --config tiny --weights W
    thaw snapshot llm --artifact llm-v1
    thaw restore llm-v1            # as often as you like, on any node sharing the store

Every command goes through thaw.ops: the node agent when one runs (``--agent``,
``$THAW_AGENT``, or its default socket), else this process (``--local`` forces that).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from thaw.cli import agent, artifacts, audit, bench, cost, engine, gms, keys, operator, workers
from thaw.cli.common import HomeOpt, StoreOpt, settings
from thaw.cli.output import console, friendly

app = typer.Typer(
    name="thaw",
    help="Snapshot a warmed GPU inference worker once; restore it in seconds, on any node.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(workers.run)
app.command()(workers.ps)
app.command()(workers.gc)
app.command()(artifacts.snapshot)
app.command()(artifacts.restore)
app.command()(workers.release)
app.command()(workers.stop)
app.command("ls")(artifacts.list_artifacts)
app.command()(artifacts.inspect)
app.command()(artifacts.verify)
app.command("rm")(artifacts.remove)


@app.command()
@friendly
def doctor(home: HomeOpt = None, store: StoreOpt = None) -> None:
    """Check this host: root and capabilities, kernel, CRIU >= 4 and `criu check`, store, NVIDIA driver >= 580."""
    from thaw.doctor import run_checks

    checks = run_checks(settings(home, store))
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
    """Cold-start a real inference worker (torch.compile'd encoder, CPU), snapshot it, restore copies, compare."""
    from thaw.demo import run_demo

    run_demo(home, keep=keep)


# each sub-app lives in its own module and imports its heavy dependencies only when a command runs
app.add_typer(engine.app, name="engine", help="The reference inference engine (Qwen3-architecture LLM server).")
app.add_typer(agent.app, name="agent", help="The per-node agent: snapshot/restore as a service.")
app.add_typer(operator.app, name="operator", help="The Kubernetes operator.")
app.add_typer(gms.app, name="gms", help="The GPU memory service: weights kept on the node, outside every snapshot.")
app.add_typer(keys.app, name="keys", help="Signing keys for artifacts (ed25519).")
app.add_typer(audit.app, name="audit", help="The node agent's audit log: check its hash chain.")
app.add_typer(bench.app, name="bench",
              help="Measure cold starts and restores of a worker (thaw bench --name N -- CMD).")
app.command("cost")(cost.cost)

if __name__ == "__main__":
    app()
