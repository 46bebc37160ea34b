"""How the CLI talks to people: one-line errors, progress, tables; JSON for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.status import Status

from thaw.errors import ThawError

console = Console()
# soft_wrap: an error stays one line in logs and pipes, whatever the terminal width
err = Console(stderr=True, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Turn thaw's errors (and bad paths) into one clear line on stderr and exit code 1, no traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ThawError as exc:
            fail(exc.message, exc.hint)
        except (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            fail(f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc))
        except KeyboardInterrupt:
            fail("interrupted")

    return wrapper  # type: ignore[return-value]


def fail(message: str, hint: str | None = None, code: int = 1) -> None:
    # an error may quote what it refused (a manifest's field names, a worker's log): never let that text
    # steer the terminal; line breaks stay (CRIU's log tail, a worker's last lines)
    err.print(f"[bold red]error:[/] {escape(_no_controls(message))}")
    if hint:
        err.print(f"[dim]hint: {escape(_no_controls(hint))}[/]")
    raise typer.Exit(code)


def _no_controls(text: str) -> str:
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def safe(value: object, limit: int = 300) -> str:
    """Untrusted text (a manifest's, a store's) made harmless to print: no rich markup, no terminal control
    characters (shown escaped, as repr does), bounded length."""
    text = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(value))
    return escape(text if len(text) <= limit else text[:limit] + "...")


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@contextmanager
def progress(enabled: bool = True) -> Iterator[Callable[[str, float | None, str], None]]:
    """A progress callback for the pipeline that shows the current phase with a spinner (on stderr)."""
    if not enabled:
        yield lambda phase, fraction, detail: None
        return
    status = Status("", console=err)
    status.start()

    def update(phase: str, fraction: float | None, detail: str) -> None:
        pct = f" {fraction:.0%}" if fraction is not None else ""
        status.update(f"[cyan]{phase}[/]{pct} {escape(detail)}")

    try:
        yield update
    finally:
        status.stop()


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"
