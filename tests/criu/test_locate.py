"""Finding CRIU: which build it is (stock or fast CRIU with the parallel page fill), and what doctor says."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from thaw import doctor
from thaw.criu import find_criu
from thaw.criu.locate import Criu
from thaw.errors import HostError

STOCK = "Version: 4.1.1\n"
FAST = "Version: 4.1.1\nPage fill: parallel, huge pages (thaw fast-fill 1)\n"


def fake_criu(tmp_path: Path, name: str, version_text: str) -> Path:
    """A stand-in binary that only answers ``--version`` (find_criu's probe)."""
    path = tmp_path / name
    lines = " ".join(shlex.quote(line) for line in version_text.splitlines())
    path.write_text(f"#!/bin/sh\nprintf '%s\\n' {lines}\n")  # printf: a shell builtin, no PATH needed
    path.chmod(0o755)
    return path


def test_fast_criu_is_told_apart_from_stock_by_its_version_output(tmp_path: Path) -> None:
    fast = find_criu(str(fake_criu(tmp_path, "fast", FAST)))
    stock = find_criu(str(fake_criu(tmp_path, "stock", STOCK)))
    assert (fast.version, fast.parallel_fill) == ("4.1.1", True)
    assert (stock.version, stock.parallel_fill) == ("4.1.1", False)


def test_a_criu_older_than_4_is_refused_even_with_the_fill_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("thaw.criu.locate.DEFAULT_TREE", tmp_path / "none")
    monkeypatch.setattr("thaw.criu.locate.FAST_TREE", tmp_path / "none-fast")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    old = fake_criu(tmp_path, "old", "Version: 3.17\nPage fill: parallel\n")
    with pytest.raises(HostError, match="3.17 < 4"):
        find_criu(str(old))


@pytest.mark.parametrize(("parallel", "fast_installed", "says"), [
    (True, False, "parallel, huge pages"),
    (False, True, "THAW_CRIU="),
    (False, False, "scripts/install-criu-fast.sh"),
])
def test_doctor_says_which_page_fill_the_criu_in_use_has(parallel: bool, fast_installed: bool, says: str,
                                                        tmp_path: Path, monkeypatch) -> None:
    fast_tree = tmp_path / "criu-fast"
    if fast_installed:
        fast_tree.mkdir()
    monkeypatch.setattr(doctor, "FAST_TREE", fast_tree)
    row = doctor._page_fill(Criu(argv=("criu",), version="4.1.1", source="test", parallel_fill=parallel))
    assert row.ok and not row.required  # stock CRIU works; the fast fill is a speed-up
    assert says in row.detail
    if fast_installed:
        assert str(fast_tree) in row.detail
