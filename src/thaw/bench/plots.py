"""PNG plots of ``thaw bench`` results (matplotlib, no display needed).

* ``latency_cdf.png`` — the distribution of restore → first answer, one line per set of
  restores (mode × page cache) and worker; the cold starts dashed, for scale;
* ``phases.png`` — one stacked bar per worker and set: the median of each restore phase;
* ``cold_vs_restore.png`` — cold start and restore side by side per worker (p50, whisker to p90).

matplotlib is imported here only, so a GPU machine without it still measures and writes the
JSON; ``thaw bench report`` draws the plots later, anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from thaw.bench.phases import UNACCOUNTED
from thaw.bench.report import set_label
from thaw.bench.schema import BenchResult, Phase
from thaw.bench.stats import percentile

FILES = ("latency_cdf.png", "phases.png", "cold_vs_restore.png")


def draw(results: Sequence[BenchResult], out: Path) -> list[Path]:
    """Write the three plots under ``out``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    out.mkdir(parents=True, exist_ok=True)
    return [_cdf(results, out / FILES[0]), _phases(results, out / FILES[1]), _cold_vs_restore(results, out / FILES[2])]


def _name(r: BenchResult, results: Sequence[BenchResult]) -> str:
    return f"{r.plan.name}: " if len(results) > 1 else ""


def _cdf(results: Sequence[BenchResult], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in results:
        for s in r.summaries:
            xs = sorted(x.seconds for x in r.restores
                        if x.ok and x.seconds is not None and x.mode == s.mode and x.page_cache == s.page_cache)
            if xs:
                ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post",
                        label=f"{_name(r, results)}restore, {set_label(s)} (n={len(xs)})")
        for cache in r.cold_summary:
            xs = sorted(c.seconds for c in r.cold_starts if c.ok and c.seconds is not None and c.page_cache == cache)
            if xs:
                ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", linestyle="--",
                        label=f"{_name(r, results)}cold start, page cache {cache} (n={len(xs)})")
    ax.set_xscale("log")
    ax.set_xlabel("seconds until the first answer (log scale)")
    ax.set_ylabel("fraction of runs")
    ax.axhline(0.9, color="grey", linewidth=0.5, linestyle=":")
    ax.set_ylim(0, 1.02)
    ax.grid(True, which="both", linewidth=0.3)
    _legend(ax, fontsize=7, loc="lower right")
    ax.set_title("restore → first answer vs cold start → first answer")
    return _save(fig, path)


def segments(tree: Phase) -> dict[str, float]:
    """A restore's bar: the pipeline's phases, then the first answer, then what lies outside both."""
    out: dict[str, float] = {}
    for child in tree.children:
        if child.children:
            for grandchild in child.children:
                name = f"{child.name} {UNACCOUNTED}" if grandchild.name == UNACCOUNTED else grandchild.name
                out[name] = grandchild.seconds
        else:
            out["outside the pipeline" if child.name == UNACCOUNTED else child.name] = child.seconds
    return out


def _phases(results: Sequence[BenchResult], path: Path) -> Path:
    import matplotlib.pyplot as plt

    bars: list[tuple[str, dict[str, float]]] = []
    for r in results:
        for s in r.summaries:
            trees = [x.phases for x in r.restores
                     if x.ok and x.phases is not None and x.mode == s.mode and x.page_cache == s.page_cache]
            if not trees:
                continue
            per_phase: dict[str, list[float]] = {}
            for tree in trees:
                for name, secs in segments(tree).items():
                    per_phase.setdefault(name, []).append(secs)
            bars.append((f"{_name(r, results)}{set_label(s)}",
                         {k: percentile(v, 50) or 0.0 for k, v in per_phase.items()}))
    names: list[str] = []
    for _, medians in bars:
        names += [k for k in medians if k not in names]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.6 * max(1, len(bars))))
    left = [0.0] * len(bars)
    colours = plt.get_cmap("tab20")
    for i, name in enumerate(names):
        widths = [max(0.0, medians.get(name, 0.0)) for _, medians in bars]
        ax.barh(range(len(bars)), widths, left=left, label=name, color=colours(i % 20))
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_yticks(range(len(bars)), [label for label, _ in bars], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (median of each phase)")
    ax.set_title("where a restore's time goes, phase by phase")
    _legend(ax, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def _cold_vs_restore(results: Sequence[BenchResult], path: Path) -> Path:
    import matplotlib.pyplot as plt

    labels, cold, cold_hi, rest, rest_hi = [], [], [], [], []
    for r in results:
        for cache, d in r.cold_summary.items():
            seq = next((s for s in r.summaries if s.mode == "sequential" and s.page_cache == cache), None)
            if seq is None:
                continue
            labels.append(f"{r.plan.name}\npage cache {cache}")
            cold.append(d.p50 or 0.0)
            cold_hi.append(max(0.0, (d.p90 or 0.0) - (d.p50 or 0.0)))
            rest.append(seq.latency.p50 or 0.0)
            rest_hi.append(max(0.0, (seq.latency.p90 or 0.0) - (seq.latency.p50 or 0.0)))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.8 * len(labels) + 2), 4))
    xs = list(range(len(labels)))
    ax.bar([x - 0.2 for x in xs], cold, 0.4, yerr=[[0] * len(xs), cold_hi], label="cold start (p50, to p90)",
           color="#999999", capsize=3)
    ax.bar([x + 0.2 for x in xs], rest, 0.4, yerr=[[0] * len(xs), rest_hi], label="restore (p50, to p90)",
           color="#1f77b4", capsize=3)
    for x, c, r_ in zip(xs, cold, rest, strict=True):
        if r_ > 0:
            ax.annotate(f"{c / r_:.1f}× faster", (x + 0.2, r_), textcoords="offset points", xytext=(0, 4),
                        ha="center", fontsize=8)
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_ylabel("seconds until the first answer")
    ax.set_title("cold start vs restore")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _legend(ax: object, **kwargs: object) -> None:
    """A legend, or a note that nothing succeeded to be drawn (a run whose every restore failed still gets its plots)."""
    if ax.get_legend_handles_labels()[0]:  # type: ignore[attr-defined]
        ax.legend(**kwargs)  # type: ignore[attr-defined]
    else:
        ax.text(0.5, 0.5, "no successful run to show", transform=ax.transAxes, ha="center")  # type: ignore[attr-defined]


def _save(fig: object, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()  # type: ignore[attr-defined]
    fig.savefig(path, dpi=120)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return path
