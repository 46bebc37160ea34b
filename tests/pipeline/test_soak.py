"""The soak target, short (bench/soak.py runs 1,000 cycles; its figures are in bench/results/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.criu, pytest.mark.slow]

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


def test_twenty_cycles_of_snapshot_restore_answer_stop_fail_nothing_and_leak_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, str(SOAK), str(out), "--cycles", "20", "--check-every", "5",
                          "--home", str(tmp_path / "home")], check=False, capture_output=True, text=True, timeout=600)

    result = json.loads(out.read_text())
    assert result["failures"] == [], result["failures"][0]["trace"]
    assert result["leaks"] == {}
    assert result["cycles_done"] == 20 and result["ok"] and run.returncode == 0
    assert result["final"]["processes"] == 0
    # half the restores were of restored workers' snapshots (second generation)
    assert result["timings_s"]["restore"]["n"] == 20 and result["timings_s"]["delete"]["n"] == 10
