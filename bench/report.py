"""Render a GPU suite's results directory as results.md and one merged results.json.

    python bench/report.py DIR       (DIR holds system.json, bench_*.json, gpu-tests.xml, bench-*/result.json)

Every figure comes from the JSON files the suite wrote; nothing is typed in by hand. The
``thaw bench`` results that bench/gpu_pipeline.py leaves in ``bench-<worker>/`` are rendered by
thaw.bench.report (tables) and thaw.bench.plots (PNGs, when matplotlib is installed).
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

PIPELINE_COLUMNS = [
    ("worker", "worker"),
    ("cold start → parked", "cold_start_to_parked_s"),
    ("cold start → first answer", "cold_start_to_first_answer_s"),
    ("image", "image_bytes"),
    ("KV released", "kv_released_bytes"),
    ("freeze hooks", "snapshot.freeze_hooks"),
    ("CUDA lock", "snapshot.cuda_lock"),
    ("CUDA checkpoint", "snapshot.cuda_checkpoint"),
    ("CRIU dump", "snapshot.dump"),
    ("publish", "snapshot.publish"),
    ("verify", "restore.fetch"),
    ("CRIU restore", "restore.criu_restore"),
    ("CUDA restore", "restore.cuda_restore"),
    ("unlock", "restore.cuda_unlock"),
    ("thaw hooks + canary", "restore.thaw_hooks"),
    ("first answer after restore began (p50)", "first_answer_after_restore_s"),
    ("p90", "restore_p90_s"),
    ("p99", "restore_p99_s"),
    ("restores", "restores"),
    ("exact", "exact"),
    ("speed-up (p50)", "speedup_p50"),
    ("× floor (p50)", "floor_multiple_p50"),
    ("identical outputs", "outputs_identical"),
]


ENGINE_COLUMNS = [
    ("config", "config"),
    ("weights", "weights.bytes"),
    ("cold start", "cold_start.total"),
    ("imports", "cold_start.phases.imports"),
    ("CUDA context", "cold_start.phases.cuda_context"),
    ("weight load", "cold_start.phases.weights"),
    ("KV alloc", "cold_start.phases.kv"),
    ("graph capture", "cold_start.phases.graphs"),
    ("canary", "cold_start.phases.canary"),
    ("KV cache", "cold_start.details.kv.bytes"),
    ("decode tok/s, batch 1", "decode.1.tokens_per_s"),
    ("decode tok/s, batch 8", "decode.8.tokens_per_s"),
    ("served canary tokens", "served_canary_tokens"),
]
COLUMNS = {"gpu_pipeline": PIPELINE_COLUMNS, "engine": ENGINE_COLUMNS}


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def fmt(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        seconds = (key.endswith("_s") and not key.endswith("per_s")) or "seconds" in key or \
            key.split(".")[0] in ("snapshot", "restore") or key.startswith("cold_start.")
        if seconds:
            return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
        return f"{value:,.1f}" if value >= 100 else f"{value:.3g}"
    if isinstance(value, int) and ("bytes" in key):
        return f"{value / 2**30:.2f} GiB"
    return str(value)


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]] | None = None) -> str:
    flat = [flatten(r) for r in rows]
    if columns is None:
        keys: list[str] = []
        for f in flat:
            keys += [k for k in f if k not in keys]
        columns = [(k, k) for k in keys]
    columns = [(h, k) for h, k in columns if any(k in f for f in flat)]
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for f in flat:
        lines.append("| " + " | ".join(fmt(k, f[k]) if k in f else "" for _, k in columns) + " |")
    return "\n".join(lines)


def tests_summary(xml: Path) -> dict[str, Any]:
    root = ET.parse(xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    cases = []
    for case in suite.iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                reason = (el.get("message") or "")[:160]
                break
        else:
            reason = ""
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time", 0)), "reason": reason})
    return {"cases": cases, **{k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}}


def main(directory: Path) -> None:
    system = json.loads((directory / "system.json").read_text())
    merged: dict[str, Any] = {"system": system, "benchmarks": {}}
    md = [f"# thaw GPU results, {system['date'][:10]}", "",
          "GPU: " + "; ".join(str(system.get("gpus")).splitlines()) + f"; driver {system.get('driver')}; kernel {system.get('kernel')}; "
          f"torch {system.get('torch')} (CUDA {system.get('cuda_runtime')}); CRIU {system.get('criu')}; "
          f"{system.get('cpu_count')} CPUs.", ""]
    for xml in sorted(directory.glob("gpu-tests*.xml")):  # a suite run, then any re-runs
        t = tests_summary(xml)
        merged.setdefault("tests", {})[xml.stem] = t
        md += [f"## GPU tests ({xml.stem}): {t['passed']} passed, {t['failed']} failed, {t['error']} errors, "
               f"{t['skipped']} skipped", "", "| test | outcome | time | note |", "|---|---|---|---|"]
        md += [f"| {c['test']} | {c['outcome']} | {c['seconds']:.1f} s | {c['reason']} |" for c in t["cases"]]
        md.append("")
    for path in sorted(directory.glob("bench_*.json")):
        data = json.loads(path.read_text())
        name = data.get("benchmark", path.stem.removeprefix("bench_"))
        merged["benchmarks"][name] = data
        rows = data.get("results", [data])
        md += [f"## {name}", "", table(rows, COLUMNS.get(name)), ""]
    bench_results = sorted(directory.glob("bench-*/result.json"))
    if bench_results:
        from thaw.bench.files import write_outputs
        from thaw.bench.report import cold_table, restore_table
        from thaw.bench.schema import load_result

        loaded = [load_result(p) for p in bench_results]
        written = write_outputs(loaded, directory / "thaw-bench", write_json=False)
        md += ["## thaw bench", "", *restore_table(loaded), "", *cold_table(loaded), ""]
        md += [f"![{p.name}](thaw-bench/{p.name})" for p in written if p.suffix == ".png"] + [""]
        merged["thaw_bench"] = [json.loads(p.read_text()) for p in bench_results]
    (directory / "results.json").write_text(json.dumps(merged, indent=2))
    (directory / "results.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
