"""``thaw engine``: configs, make-weights, and the benchmark script's CPU path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from engine_serving import ONE_THREAD
from typer.testing import CliRunner

from thaw.cli.engine import app
from thaw.engine.config import CONFIGS
from thaw.engine.weights import iter_tensors

REPO = Path(__file__).resolve().parents[2]


def test_configs_lists_every_config_with_its_size() -> None:
    result = CliRunner().invoke(app, ["configs", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert set(rows) == set(CONFIGS)
    assert rows["qwen3-32b"]["weight_bytes"] >= 60e9
    assert rows["qwen3-8b"]["params"] == CONFIGS["qwen3-8b"].param_count()


def test_make_weights_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["make-weights", "tiny", str(tmp_path / "w"), "--seed", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "wrote tiny" in result.output
    assert len(dict(iter_tensors(tmp_path / "w"))) == len(CONFIGS["tiny"].tensor_shapes())


def test_make_weights_refuses_an_unknown_config_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["make-weights", "qwen3-7b", str(tmp_path / "w")])
    assert result.exit_code != 0
    assert "unknown config 'qwen3-7b'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "w").exists()


def test_the_benchmark_runs_on_the_cpu_and_writes_its_figures(tmp_path: Path, tiny_weights: Path) -> None:
    out = tmp_path / "bench.json"
    weights_root = tmp_path / "weights"
    weights_root.mkdir()
    (weights_root / "tiny").symlink_to(tiny_weights)
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "engine_bench.py"), str(out), "--device", "cpu", "--configs", "tiny",
         "--weights-root", str(weights_root), "--batches", "1,2", "--decode-tokens", "12", "--decode-kv-gb", "0.01"], check=False,
        capture_output=True, text=True, timeout=300, env={**os.environ, **ONE_THREAD},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["errors"] == []
    (result,) = report["results"]
    assert result["weights"]["made"] is False and result["exit_status"] == 0
    assert result["served_canary_tokens"] is True
    assert {"weights", "kv", "warmup", "canary"} <= set(result["cold_start"]["phases"])
    assert result["cold_start"]["spawn_to_listening_s"] >= result["cold_start"]["total"] * 0.5
    for batch in ("1", "2"):
        decode = result["decode"][batch]
        assert decode["tokens_per_s"] > 0
        # 12 tokens: the admitting step prefills (token 1) and decodes (token 2), then 10 decode-only steps
        assert decode["steps"] == 10
