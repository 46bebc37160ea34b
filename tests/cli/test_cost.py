"""``thaw cost`` as a user runs it: the table, its JSON, files, a README section; bad input, one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thaw.cost.model import HOURS_PER_MONTH, CostReport

ARGS = ("cost", "--price", "3", "--capacity", "2", "--cold-start", "40", "--restore", "2", "--hours", "1")


def test_a_constant_load_costs_what_its_workers_cost(thaw, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = CostReport.model_validate_json(thaw.ok(*ARGS, "--profile", "steady:rate=10", "--arrivals", "fluid",
                                                    "--target-utilization", "1", "--out", str(out), "--json"))
    for sc in report.scenarios:
        for s in sc.strategies:  # 10 req/s at 2 each: 5 workers, whatever the strategy
            assert s.workers == 5 and s.slo_met
            assert s.dollars_per_month == pytest.approx(5 * 3 * HOURS_PER_MONTH)
    assert json.loads((out / "cost.json").read_text())["kind"] == "thaw.cost"
    assert "| conservative | warm pool | 5 |" in (out / "cost.md").read_text()
    assert (out / "cost.png").stat().st_size > 10_000


def test_the_table_and_the_readme_section(thaw, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- thaw-cost -->\n<!-- /thaw-cost -->\nafter\n")
    shown = thaw.ok(*ARGS, "--profile", "bursty:base=1,peak=20,every=30,length=5", "--readme", str(readme))
    assert "autoscale, restores" in shown and "conservative" in shown and "optimistic" in shown
    text = readme.read_text()
    assert text.startswith("before\n<!-- thaw-cost -->\nTraffic: bursty")
    assert text.endswith("<!-- /thaw-cost -->\nafter\n")


def test_the_same_seed_prints_the_same_figures(thaw) -> None:
    run = ("--profile", "bursty:base=1,peak=20,every=30,length=5", "--json")
    first = json.loads(thaw.ok(*ARGS, *run, "--seed", "11"))
    again = json.loads(thaw.ok(*ARGS, *run, "--seed", "11"))
    other = json.loads(thaw.ok(*ARGS, *run, "--seed", "12"))
    assert first == again
    assert first["trace"]["requests"] != other["trace"]["requests"]


def test_bad_input_is_one_clear_line(thaw, tmp_path: Path) -> None:
    thaw.fails(*ARGS, "--profile", "sawtooth", message="unknown profile 'sawtooth'")
    thaw.fails(*ARGS, "--profile", "steady:rate=1", "--slo", "90%", message="--slo: '90%' is not pP<=SECONDS")
    thaw.fails("cost", "--price", "3", "--capacity", "2", "--profile", "steady:rate=1",
               message="no latencies: give a thaw bench result")
    thaw.fails(*ARGS, "--profile", "steady:rate=1", "--bench", str(tmp_path / "nope.json"), message="cannot read")
    (tmp_path / "other.json").write_text('{"kind": "something else"}')
    thaw.fails(*ARGS, "--profile", "steady:rate=1", "--bench", str(tmp_path / "other.json"),
               message="is not a thaw bench result")
    thaw.fails(*ARGS, "--profile", "steady:rate=1", "--price", "-1", message="--price: Input should be greater than 0")
