"""The files of ``thaw bench`` results: result.json, results.md and the plots, in one directory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from thaw.bench.report import markdown
from thaw.bench.schema import BenchResult


def write_outputs(results: Sequence[BenchResult], out: Path, *, write_json: bool = True,
                  warn: Callable[[str], None] = print) -> list[Path]:
    """result.json (of the first result), results.md and the plots; the paths written.

    Without matplotlib the plots are skipped with a note: a GPU host that lacks it still keeps
    every measurement, and ``thaw bench report`` draws the plots anywhere later.
    """
    from thaw.bench.plots import draw

    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    if write_json:
        (out / "result.json").write_text(results[0].model_dump_json(indent=2) + "\n")
        files.append(out / "result.json")
    try:
        plots = draw(results, out)
    except ImportError as exc:
        warn(f"plots skipped: {exc}; draw them later with `thaw bench report {out}/result.json`")
        plots = []
    (out / "results.md").write_text(markdown(results, [p.name for p in plots]) + "\n")
    return files + [out / "results.md", *plots]
