"""From samples to the figures an operator asks for: percentiles, success rates, speed-up, floor.

Pure functions of the samples (no I/O), so that the arithmetic is tested on known data.
"""

from __future__ import annotations

from collections.abc import Iterable

from thaw.bench.phases import aggregate
from thaw.bench.schema import ColdStart, Distribution, Floor, Phase, Restore, Summary
from thaw.bench.stats import distribution, rate_lower_bound

#: where the restore's fetch sits in a restore sample's phase tree (runner.restore_tree)
FETCH_PATH = ("restore", "fetch")


def cold_summary(cold_starts: Iterable[ColdStart]) -> dict[str, Distribution]:
    """Cold start → first answer, by page-cache state, over the cold starts that answered."""
    by_cache: dict[str, list[float]] = {}
    for c in cold_starts:
        by_cache.setdefault(c.page_cache, [])
        if c.ok and c.seconds is not None:
            by_cache[c.page_cache].append(c.seconds)
    return {cache: distribution(values) for cache, values in by_cache.items()}


def floor(page_cache: str, *, gpu_bytes: int | None, h2d_bandwidth: float | None, image_bytes: int,
          read_bandwidth: float | None) -> Floor:
    """The physical floor of one restore: the larger of (GPU bytes / H2D bandwidth) and (image / read bandwidth)."""
    gpu_s = gpu_bytes / h2d_bandwidth if gpu_bytes is not None and h2d_bandwidth else None
    read_s = image_bytes / read_bandwidth if read_bandwidth else None
    terms = [t for t in (gpu_s, read_s) if t is not None]
    return Floor(page_cache=page_cache, gpu_bytes=gpu_bytes, h2d_bandwidth=h2d_bandwidth, gpu_seconds=gpu_s,  # type: ignore[arg-type]
                 image_bytes=image_bytes, read_bandwidth=read_bandwidth, read_seconds=read_s,
                 seconds=max(terms) if terms else None)


def summarize(restores: list[Restore], *, image_bytes: int, colds: dict[str, Distribution], floors: list[Floor],
              concurrency: int) -> list[Summary]:
    """One Summary per (mode, page cache), in the order the sets ran."""
    groups: dict[tuple[str, str], list[Restore]] = {}
    for r in restores:
        groups.setdefault((r.mode, r.page_cache), []).append(r)
    floor_of = {f.page_cache: f.seconds for f in floors}
    out = []
    for (mode, cache), samples in groups.items():
        ok = [r for r in samples if r.ok and r.seconds is not None]
        latency = distribution([r.seconds for r in ok if r.seconds is not None])
        cold_p50 = colds[cache].p50 if cache in colds else None
        floor_s = floor_of.get(cache)
        fetches = [s for s in (_seconds_at(r.phases, FETCH_PATH) for r in ok) if s]
        out.append(Summary(
            mode=mode,  # type: ignore[arg-type]
            page_cache=cache,  # type: ignore[arg-type]
            concurrency=concurrency if mode == "concurrent" else 1,
            attempts=len(samples),
            successes=len(ok),
            success_rate=len(ok) / len(samples) if samples else None,
            success_rate_lower_95=rate_lower_bound(len(ok), len(samples)),
            exact=sum(1 for r in ok if exact(r)),
            canary_mismatches=sum(1 for r in samples if r.canary == "mismatch"),
            answer_mismatches=sum(1 for r in samples if r.answer_matches is False),
            latency=latency,
            phases=aggregate(r.phases for r in ok if r.phases is not None),
            read_throughput=distribution([image_bytes / s for s in fetches]),
            speedup_p50=cold_p50 / latency.p50 if cold_p50 and latency.p50 else None,
            floor_multiple_p50=latency.p50 / floor_s if floor_s and latency.p50 else None,
        ))
    return out


def exact(r: Restore) -> bool:
    """Restored, answered, and every check that ran (canary, answer) agreed; at least one ran."""
    checks = [r.canary == "passed"] if r.canary in ("passed", "mismatch") else []
    if r.answer_matches is not None:
        checks.append(r.answer_matches)
    return r.ok and bool(checks) and all(checks)


def _seconds_at(tree: Phase | None, path: tuple[str, ...]) -> float | None:
    node = tree
    for name in path:
        if node is None:
            return None
        node = next((c for c in node.children if c.name == name), None)
    return node.seconds if node is not None else None
