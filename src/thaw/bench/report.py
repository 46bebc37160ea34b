"""Markdown of ``thaw bench`` results: every figure comes from the result, nothing is typed in by hand."""

from __future__ import annotations

from collections.abc import Sequence

from thaw.bench.phases import UNACCOUNTED
from thaw.bench.schema import BenchResult, Distribution, Phase, Summary


def seconds(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s * 1000:.0f} ms" if abs(s) < 1 else f"{s:.2f} s"


def size(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def rate(bps: float | None) -> str:
    return "–" if bps is None else f"{bps / 1e9:.2f} GB/s"


def percent(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.1f} %"


def times(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}×"


def set_label(s: Summary) -> str:
    how = "one at a time" if s.mode == "sequential" else f"{s.concurrency} at once"
    return f"{how}, page cache {s.page_cache}"


def conditions(r: BenchResult) -> str:
    """One line of the conditions a reader needs to trust the figures."""
    m = r.machine
    gpus = ", ".join(sorted({g.name for g in m.gpus})) or "no GPU"
    warm = (f"host warmed ({size(m.host.pretouched_bytes)} pre-touched)" if m.host.pretouched_bytes
            else "host not pre-touched")
    storage = "; ".join(f"{s.role} {s.path} ({s.filesystem or '?'}"
                        + ("" if s.rotational is None else (", rotational" if s.rotational else ", non-rotational"))
                        + ")" for s in m.storage)
    return (f"{gpus}" + (f", driver {m.cuda_driver}" if m.cuda_driver else "") + f"; {m.cpu_count} × {m.cpu_model}; "
            f"Linux {m.kernel}; CRIU {m.criu.version if m.criu else '?'}; THP {m.thp_enabled or '?'}; "
            f"{warm}; page cache: {', '.join(r.plan.page_cache)}; {storage}; through {r.plan.through}")


def restore_table(results: Sequence[BenchResult]) -> list[str]:
    many = len(results) > 1
    head = (["worker"] if many else []) + ["restores", "success", "exact", "canary mismatches", "answer mismatches",
                                           "p50", "p90", "p99", "max", "speed-up (p50)", "× floor (p50)"]
    rows = [_row(head), "|" + "---|" * len(head)]
    for r in results:
        for s in r.summaries:
            rows.append(_row(([r.plan.name] if many else []) + [
                set_label(s), f"{s.successes}/{s.attempts} ({percent(s.success_rate)})",
                f"{s.exact}/{s.attempts}", str(s.canary_mismatches), str(s.answer_mismatches),
                seconds(s.latency.p50), seconds(s.latency.p90), seconds(s.latency.p99), seconds(s.latency.max),
                times(s.speedup_p50), times(s.floor_multiple_p50)]))
    return rows


def cold_table(results: Sequence[BenchResult]) -> list[str]:
    many = len(results) > 1
    head = (["worker"] if many else []) + ["cold starts", "answered", "min", "p50", "p90", "max"]
    rows = [_row(head), "|" + "---|" * len(head)]
    for r in results:
        for cache, d in r.cold_summary.items():
            n = sum(1 for c in r.cold_starts if c.page_cache == cache)
            rows.append(_row(([r.plan.name] if many else []) + [
                f"page cache {cache}", f"{d.count}/{n}", seconds(d.min), seconds(d.p50), seconds(d.p90),
                seconds(d.max)]))
    return rows


def phase_table(phases: dict[str, Distribution]) -> list[str]:
    rows = [_row(["phase", "p50", "p90", "max"]), "|---|---|---|---|"]
    for path, d in phases.items():
        depth = path.count("/")
        rows.append(_row([f"{'&nbsp;' * 4 * depth}{path.rsplit('/', 1)[-1]}", seconds(d.p50), seconds(d.p90),
                          seconds(d.max)]))
    return rows


def tree_lines(tree: Phase, depth: int = 0) -> list[str]:
    lines = [f"{'  ' * depth}- {tree.name}: {seconds(tree.seconds)}"]
    for child in tree.children:
        lines += tree_lines(child, depth + 1)
    return lines


def floor_table(r: BenchResult) -> list[str]:
    rows = [_row(["page cache", "GPU bytes", "pinned H2D", "GPU term", "image", "read", "read term", "floor"]),
            "|---|---|---|---|---|---|---|---|"]
    for f in r.floors:
        rows.append(_row([f.page_cache, size(f.gpu_bytes), rate(f.h2d_bandwidth), seconds(f.gpu_seconds),
                          size(f.image_bytes), rate(f.read_bandwidth), seconds(f.read_seconds), seconds(f.seconds)]))
    return rows


def markdown(results: Sequence[BenchResult], plots: Sequence[str] = ()) -> str:
    """The full report of one or more results (several: one per worker, side by side)."""
    first = results[0]
    title = first.plan.name if len(results) == 1 else ", ".join(r.plan.name for r in results)
    md = [f"# thaw bench: {title} ({first.started_at:%Y-%m-%d})", ""]
    for r in results:
        snap = r.snapshot
        md += [f"**{r.plan.name}**: `{' '.join(r.plan.argv)}`", "", f"Conditions: {conditions(r)}.", ""]
        if not r.complete:
            md += [f"**Incomplete run**: stopped by {r.stopped}; the figures are of what ran before.", ""]
        if snap is not None:
            md += [f"Artifact `{r.plan.artifact}`{' (given)' if r.plan.artifact_given else ''}: image "
                   f"{size(snap.image_bytes)}, GPU memory to restore {size(snap.gpu_bytes)}, released before the "
                   f"snapshot {size(snap.released_bytes)}; snapshot {seconds(snap.seconds)}. First answer: "
                   + (f"HTTP {r.plan.answer.method} {r.plan.answer.path}, compared with the {r.reference} answer"
                      if r.plan.answer.kind == "http" else "the canary exchange (checked against the snapshot's)")
                   + ".", ""]
    md += ["## Restore → first answer", "", *restore_table(results), "",
           "Speed-up: the cold start's p50 over the restore's, same page cache. × floor: the restore's p50 over "
           "the physical floor (below). Exact: every check that ran (canary, answer) agreed.", "",
           "## Cold start → first answer", "", *cold_table(results), ""]
    for plot in plots:
        md += [f"![{plot}]({plot})", ""]
    for r in results:
        suffix = f" ({r.plan.name})" if len(results) > 1 else ""
        md += [f"## Physical floor{suffix}", "", *floor_table(r), "",
               "The floor is the larger of two terms that can overlap: the bytes that must reach the GPU over the "
               "measured pinned host→device bandwidth, and the image over the measured read bandwidth.", ""]
        for s in r.summaries:
            md += [f"### Phases{suffix}: restores {set_label(s)}", "",
                   f"Each phase by its place in the tree; `{UNACCOUNTED}` is the time no sub-phase explains "
                   "(at the top: outside the pipeline — the agent's queue and job polling, or the CLI).", "",
                   *phase_table(s.phases), ""]
        if r.snapshot is not None and r.snapshot.phases is not None:
            md += [f"### Snapshot phases{suffix}", "", *tree_lines(r.snapshot.phases), ""]
        failures = [x for x in r.restores if not x.ok] + [c for c in r.cold_starts if not c.ok]
        if failures:
            md += [f"### Failures{suffix}", ""]
            md += [f"- {type(x).__name__.lower()} {x.index}: {x.failure.reason}: {x.failure.message}"
                   for x in failures if x.failure is not None]
            md.append("")
    return "\n".join(md)


def readme_section(result: BenchResult, plot: str | None) -> str:
    """The README's short form: conditions, the restore and cold-start tables, one plot."""
    lines = [f"`thaw bench` of `{' '.join(result.plan.argv)}` on {result.started_at:%Y-%m-%d}: {conditions(result)}.",
             "", *restore_table([result]), "", *cold_table([result]), ""]
    if plot:
        lines += [f"![restore and cold start latency]({plot})", ""]
    return "\n".join(lines)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
