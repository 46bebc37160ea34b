"""Generated sections of a Markdown file: only the marked lines' content changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from thaw.cli.sections import replace_section
from thaw.errors import ConfigError


def test_only_the_section_between_marker_lines_changes(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    # prose may name the markers inline (docs/cost.md does): only markers on lines of their own count
    doc.write_text("# Title\n\nregenerate the `<!-- x -->` section with a command\n\n"
                   "<!-- x -->\nold\n<!-- /x -->\n\nafter\n")
    replace_section(doc, "x", "new table\n")
    assert doc.read_text() == ("# Title\n\nregenerate the `<!-- x -->` section with a command\n\n"
                               "<!-- x -->\nnew table\n<!-- /x -->\n\nafter\n")


@pytest.mark.parametrize("text", [
    "no markers\n",
    "<!-- x -->\nonly a start\n",
    "<!-- x -->\n<!-- /x -->\n<!-- x -->\n<!-- /x -->\n",  # twice: which one?
    "<!-- /x -->\n<!-- x -->\n",  # the wrong way round
])
def test_a_file_without_exactly_one_section_is_refused(tmp_path: Path, text: str) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(text)
    with pytest.raises(ConfigError, match="--readme"):
        replace_section(doc, "x", "body")
    assert doc.read_text() == text
