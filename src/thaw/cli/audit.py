"""``thaw audit verify``: check that the agent's audit log is the one it wrote (the hash chain, agent/audit.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from thaw.cli.common import HomeOpt, settings
from thaw.cli.output import console, fail, friendly

app = typer.Typer(
    name="audit",
    help="The node agent's audit log.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.command()
@friendly
def verify(
    files: Annotated[list[Path] | None, typer.Argument(help="audit files in the order they were written "
                                                            "(rotated ones first) [default: HOME/agent/audit.log]",
                                                       show_default=False)] = None,
    home: HomeOpt = None,
) -> None:
    """Check every record's hash of the record before it; name the first one that breaks the chain (exit 1)."""
    from thaw.agent.audit import GENESIS
    from thaw.agent.audit import verify as verify_chain

    paths = files or [settings(home).home / "agent" / "audit.log"]
    for p in paths:
        if not p.is_file():
            fail(f"no audit log at {p}", "give the file(s), or --home of the agent that writes it")
    report = verify_chain(paths)
    if report.bad:
        fail(f"the audit log was altered: {report.bad} (the {report.records} records before it are intact)",
             "compare with a copy kept off the node; the records from there on cannot be trusted")
    start = "the agent's first record" if report.anchor == GENESIS else f"a record with hash {report.anchor}"
    console.print(f"[green]ok[/] {report.records} records, each chained to the one before, from {start}; "
                  f"last record's hash {report.head}")
