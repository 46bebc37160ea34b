"""Generated sections of a Markdown file (the README's measured figures), replaced in place.

A section lies between a line ``<!-- KEY -->`` and a line ``<!-- /KEY -->``; everything else in
the file is left as it is — prose may even name the markers inline — so that `thaw bench report
--readme` and `thaw cost --readme` regenerate their figures without touching the text around them.
"""

from __future__ import annotations

from pathlib import Path

from thaw.errors import ConfigError


def replace_section(path: Path, key: str, body: str) -> None:
    """Put ``body`` between the marker lines of ``key`` in ``path``; ConfigError unless there is exactly one section."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError("--readme", f"cannot read {path}: {exc.strerror or exc}") from None
    begin, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == begin]
    ends = [i for i, line in enumerate(lines) if line.strip() == end]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ConfigError("--readme", f"{path} needs exactly one section: a line {begin}, then a line {end}",
                          hint="add the two marker lines where the generated figures belong")
    new = [*lines[: starts[0] + 1], body.strip() + "\n", *lines[ends[0]:]]
    path.write_text("".join(new))
