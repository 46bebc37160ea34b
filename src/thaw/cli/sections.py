"""Generated sections of a Markdown file (the README's measured figures), replaced in place.

A section lies between ``<!-- KEY -->`` and ``<!-- /KEY -->``; everything else in the file is
left as it is, so `thaw bench report --readme` and `thaw cost --readme` regenerate their
figures without touching the prose around them.
"""

from __future__ import annotations

import re
from pathlib import Path

from thaw.errors import ConfigError


def replace_section(path: Path, key: str, body: str) -> None:
    """Put ``body`` between the markers of ``key`` in ``path``; ConfigError if the markers are missing."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError("--readme", f"cannot read {path}: {exc.strerror or exc}") from None
    begin, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise ConfigError("--readme", f"{path} has no section {begin} ... {end}",
                          hint="add the two marker lines where the generated figures belong")
    path.write_text(pattern.sub(lambda _: f"{begin}\n{body.strip()}\n{end}", text, count=1))
