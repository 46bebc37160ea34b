"""The result's schema is documented, versioned, and read back strictly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thaw.bench.schema import SCHEMA_VERSION, BenchResult, load_result
from thaw.errors import ConfigError

DOC = Path(__file__).resolve().parents[2] / "docs" / "bench.schema.json"


def test_the_committed_schema_is_the_models_schema() -> None:
    committed = json.loads(DOC.read_text())
    assert committed == BenchResult.model_json_schema(), (
        f"thaw.bench.schema changed: bump SCHEMA_VERSION (now {SCHEMA_VERSION}) if old results no longer read, "
        "and regenerate docs/bench.schema.json with `thaw bench schema > docs/bench.schema.json`")


def test_every_field_of_the_result_is_described_in_docs_bench_md() -> None:
    doc = (DOC.parent / "bench.md").read_text()
    schema = BenchResult.model_json_schema()
    models = {"BenchResult": schema, **schema["$defs"]}
    missing = [f"{model}.{field}" for model, body in models.items() for field in body.get("properties", {})
               if f"`{field}`" not in doc]
    assert missing == [], f"docs/bench.md does not describe {missing}"


def test_another_version_or_an_unknown_field_is_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1, "kind": "thaw.bench"}))
    with pytest.raises(ConfigError, match="schema_version") as caught:
        load_result(newer)
    assert "another version of thaw bench" in (caught.value.hint or "")
    with pytest.raises(ConfigError, match="cannot read"):
        load_result(tmp_path / "absent.json")
