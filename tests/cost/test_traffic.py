"""Traffic profiles: generated ones have the shape they promise; CSV traces are checked like any input."""

from __future__ import annotations

from pathlib import Path

import pytest

from thaw.cost.traffic import bursty, diurnal, parse, steady
from thaw.errors import ConfigError


def test_generated_profiles() -> None:
    assert steady(3, hours=2).per_minute == [3.0] * 120
    b = bursty(base=1, peak=9, every=60, length=10, hours=3)
    assert b.minutes == 180 and b.peak == 9 and sum(r == 9 for r in b.per_minute) == 30
    assert b.per_minute[49] == 1 and b.per_minute[50:60] == [9.0] * 10  # the first burst ends the first period
    d = diurnal(low=2, high=10, peak_hour=14)
    assert d.minutes == 1440
    assert d.per_minute[14 * 60] == pytest.approx(10) and d.per_minute[2 * 60] == pytest.approx(2)


def test_profiles_from_the_command_line(tmp_path: Path) -> None:
    assert parse("steady:rate=4", hours=1).per_minute == [4.0] * 60
    assert parse("bursty:base=1,peak=5,every=30,length=3", hours=1).peak == 5
    csv = tmp_path / "rates.csv"
    csv.write_text("minute,rate\n0,1.5\n1,2\n2,0\n")
    assert parse(f"csv:{csv}").per_minute == [1.5, 2.0, 0.0]
    bare = tmp_path / "bare.csv"
    bare.write_text("0\n4\n")  # a first rate of 0 is a rate, not a header
    assert parse(str(bare)).per_minute == [0.0, 4.0]


@pytest.mark.parametrize(("spec", "message"), [
    ("sawtooth:rate=1", "unknown profile"),
    ("steady:rate=-1", "is not one of"),
    ("steady:speed=1", "is not one of"),
    ("bursty:base=1,peak=2,every=10,length=20", "length 20 must be in"),
])
def test_bad_profiles_are_refused_with_the_reason(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(spec)


def test_a_csv_with_a_bad_row_names_it(tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("rate\n1\nlots\n")
    with pytest.raises(ConfigError, match=r"row 3: 'lots' is not a rate"):
        parse(f"csv:{csv}")
    bare = tmp_path / "bare.csv"
    bare.write_text("1\n-2\n")
    with pytest.raises(ConfigError, match=r"row 2: '-2' is not a rate"):
        parse(str(bare))
    with pytest.raises(ConfigError, match="cannot read"):
        parse(f"csv:{tmp_path / 'missing.csv'}")
