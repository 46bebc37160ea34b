"""thaw doctor's huge-page row: what it says for each THP mode, and the fix it offers."""

from __future__ import annotations

from pathlib import Path

import pytest

from thaw.doctor import _thp


@pytest.mark.parametrize(("content", "mode", "fix"), [
    ("always [madvise] never\n", "madvise", True),
    ("[always] madvise never\n", "always", False),
    ("always madvise [never]\n", "never", True),
])
def test_the_huge_page_row_names_the_mode_and_its_fix(tmp_path: Path, content: str, mode: str, fix: bool) -> None:
    knob = tmp_path / "enabled"
    knob.write_text(content)
    check = _thp(str(knob))
    assert check.ok and not check.required
    assert f"THP {mode}" in check.detail
    assert ("--thp always" in check.fix) is fix


def test_a_host_without_thp_is_not_a_failure(tmp_path: Path) -> None:
    check = _thp(str(tmp_path / "missing"))
    assert check.ok and "not available" in check.detail
