"""Traffic profiles: request rates per minute (requests per second during each minute).

::

    steady:rate=20                                 20 req/s all day
    bursty:base=2,peak=40,every=120,length=10      2 req/s, and 40 for 10 minutes every 2 hours
    diurnal:low=2,high=40,peak_hour=14             a sine over 24 h, lowest 12 h before its peak
    csv:PATH (or a path ending in .csv)            one rate per row: a `rate` column, or the last column

Generated profiles last ``hours`` (default 24); a CSV lasts as long as its rows.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from pydantic import BaseModel, Field

from thaw.errors import ConfigError


class Trace(BaseModel):
    """What the simulation replays: a name for tables, and requests per second for each minute."""

    name: str
    per_minute: list[float] = Field(min_length=1)

    @property
    def minutes(self) -> int:
        return len(self.per_minute)

    @property
    def hours(self) -> float:
        return len(self.per_minute) / 60

    @property
    def peak(self) -> float:
        return max(self.per_minute)

    @property
    def mean(self) -> float:
        return sum(self.per_minute) / len(self.per_minute)


def steady(rate: float, hours: float = 24) -> Trace:
    return Trace(name=f"steady {rate:g} req/s", per_minute=[float(rate)] * _minutes(hours))


def bursty(base: float, peak: float, every: float = 120, length: float = 10, hours: float = 24,
           first: float | None = None) -> Trace:
    """``base`` req/s, and ``peak`` for ``length`` minutes every ``every`` minutes (the first at ``first``)."""
    if length <= 0 or every <= 0 or length > every:
        raise ConfigError("--profile", f"bursty: length {length:g} must be in (0, every={every:g}] minutes")
    start = every - length if first is None else first
    rates = [peak if (m - start) % every < length and m >= start else base for m in range(_minutes(hours))]
    return Trace(name=f"bursty {base:g}→{peak:g} req/s, {length:g} min every {every:g} min", per_minute=rates)


def diurnal(low: float, high: float, peak_hour: float = 14, hours: float = 24) -> Trace:
    """A day's sine: ``high`` at ``peak_hour``, ``low`` twelve hours away."""
    mid, amp = (high + low) / 2, (high - low) / 2
    rates = [mid + amp * math.cos(2 * math.pi * (m / 60 - peak_hour) / 24) for m in range(_minutes(hours))]
    return Trace(name=f"diurnal {low:g}–{high:g} req/s (peak at {peak_hour:g}:00)", per_minute=rates)


def from_csv(path: Path) -> Trace:
    """One row per minute: the ``rate`` column if there is one, else the last column; a header row is allowed."""
    try:
        rows = list(csv.reader(Path(path).read_text().splitlines()))
    except OSError as exc:
        raise ConfigError("--profile", f"cannot read {path}: {exc.strerror or exc}") from None
    rows = [r for r in rows if r and any(cell.strip() for cell in r)]
    column, first_line = -1, 1
    if rows and _number(rows[0][-1]) is None:  # a header row
        header = [c.strip().lower() for c in rows[0]]
        column = header.index("rate") if "rate" in header else -1
        rows, first_line = rows[1:], 2
    rates = []
    for line, row in enumerate(rows, start=first_line):
        value = _number(row[column])
        if value is None or value < 0 or not math.isfinite(value):
            raise ConfigError("--profile", f"{path}: row {line}: {row[column]!r} is not a rate (requests/s >= 0)")
        rates.append(value)
    if not rates:
        raise ConfigError("--profile", f"{path} has no rates", hint="one row per minute, requests per second")
    return Trace(name=f"{Path(path).name} ({len(rates)} min)", per_minute=rates)


def parse(spec: str, hours: float = 24) -> Trace:
    """A profile from its command-line form (see the module's docstring)."""
    kind, _, args = spec.partition(":")
    if kind == "csv" or (not args and spec.endswith(".csv")):
        return from_csv(Path(args if kind == "csv" else spec))
    makers = {"steady": (steady, {"rate"}), "bursty": (bursty, {"base", "peak", "every", "length", "first"}),
              "diurnal": (diurnal, {"low", "high", "peak_hour"})}
    if kind not in makers:
        raise ConfigError("--profile", f"{spec!r}: unknown profile {kind!r}",
                          hint="steady:rate=R | bursty:base=B,peak=P[,every=MIN,length=MIN] | "
                               "diurnal:low=L,high=H[,peak_hour=14] | csv:PATH")
    maker, allowed = makers[kind]
    kwargs: dict[str, float] = {}
    for part in filter(None, args.split(",")):
        key, _, value = part.partition("=")
        number = _number(value)
        if key.strip() not in allowed or number is None or number < 0:
            raise ConfigError("--profile", f"{spec!r}: {part!r} is not one of {', '.join(sorted(allowed))} "
                                           "= a number >= 0")
        kwargs[key.strip()] = number
    try:
        return maker(hours=hours, **kwargs)  # type: ignore[operator]
    except TypeError as exc:
        raise ConfigError("--profile", f"{spec!r}: {exc}") from None


def _minutes(hours: float) -> int:
    if hours <= 0:
        raise ConfigError("--hours", f"{hours:g} is not a positive number of hours")
    return max(1, round(hours * 60))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
