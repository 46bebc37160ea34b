"""From samples to an operator's figures: success, exact answers, speed-up and the physical floor, on known data."""

from __future__ import annotations

import pytest

from thaw.bench.phases import node
from thaw.bench.schema import ColdStart, Failure, Restore
from thaw.bench.summary import cold_summary, exact, floor, summarize


def _restore(i: int, seconds: float | None, *, mode: str = "sequential", cache: str = "warm", fetch: float = 0.5,
             canary: str | None = "passed", answer: bool | None = True, reason: str | None = None) -> Restore:
    ok = seconds is not None
    tree = None
    if seconds is not None:
        tree = node("restore_to_first_answer", seconds,
                    [node("restore", seconds - 0.2, [node("fetch", fetch)]), node("first_answer", 0.1)])
    return Restore(index=i, mode=mode, page_cache=cache, wave=i, ok=ok, seconds=seconds, phases=tree, canary=canary,
                   answer_matches=answer if ok else None,
                   failure=None if ok else Failure(reason=reason or "restore", message="failed"))


def test_a_set_s_figures() -> None:
    restores = [_restore(0, 1.0), _restore(1, 2.0), _restore(2, 3.0, answer=False),
                _restore(3, None, canary="mismatch", reason="canary_mismatch"), _restore(4, 4.0)]
    colds = cold_summary([ColdStart(index=i, page_cache="warm", ok=True, seconds=t) for i, t in enumerate((20, 25, 30))])
    floors = [floor("warm", gpu_bytes=4 * 10**9, h2d_bandwidth=50e9, image_bytes=2 * 10**9, read_bandwidth=4e9)]
    (s,) = summarize(restores, image_bytes=2 * 10**9, colds=colds, floors=floors, concurrency=4)
    assert (s.attempts, s.successes, s.canary_mismatches, s.answer_mismatches) == (5, 4, 1, 1)
    assert s.success_rate == pytest.approx(0.8)
    assert s.exact == 3  # the copy whose answer differed restored fine but is not exact
    assert s.latency.p50 == pytest.approx(2.5) and s.latency.max == 4.0
    assert s.concurrency == 1  # a sequential set runs one at a time whatever -C says
    assert s.speedup_p50 == pytest.approx(25 / 2.5)
    # floor: max(4 GB / 50 GB/s = 0.08 s, 2 GB / 4 GB/s = 0.5 s) = 0.5 s; the restore's p50 is 5 times that
    assert floors[0].seconds == pytest.approx(0.5)
    assert s.floor_multiple_p50 == pytest.approx(5.0)
    assert s.read_throughput.p50 == pytest.approx(4e9)  # 2 GB over a 0.5 s fetch
    assert s.phases["restore/fetch"].count == 4


def test_sets_are_split_by_mode_and_page_cache_in_the_order_they_ran() -> None:
    restores = [_restore(0, 1.0), _restore(1, 1.5, mode="concurrent"), _restore(2, 3.0, cache="dropped"),
                _restore(3, 3.5, mode="concurrent", cache="dropped")]
    sets = summarize(restores, image_bytes=1, colds={}, floors=[], concurrency=2)
    assert [(s.mode, s.page_cache, s.concurrency) for s in sets] == [
        ("sequential", "warm", 1), ("concurrent", "warm", 2), ("sequential", "dropped", 1),
        ("concurrent", "dropped", 2)]
    assert all(s.speedup_p50 is None and s.floor_multiple_p50 is None for s in sets)  # nothing to compare with


def test_the_floor_without_a_gpu_or_a_local_store() -> None:
    cpu = floor("warm", gpu_bytes=0, h2d_bandwidth=None, image_bytes=10**9, read_bandwidth=2e9)
    assert cpu.gpu_seconds is None and cpu.seconds == pytest.approx(0.5)
    s3 = floor("warm", gpu_bytes=10**9, h2d_bandwidth=None, image_bytes=10**9, read_bandwidth=None)
    assert s3.seconds is None  # nothing measured: no floor, not a floor of 0


def test_exact_needs_a_check_that_ran() -> None:
    assert not exact(_restore(0, 1.0, canary="unchecked", answer=None))
    assert exact(_restore(0, 1.0, canary="unchecked", answer=True))
    assert not exact(_restore(0, 1.0, canary="passed", answer=False))


def test_cold_starts_by_page_cache_count_only_those_that_answered() -> None:
    colds = cold_summary([ColdStart(index=0, page_cache="warm", ok=True, seconds=10.0),
                          ColdStart(index=1, page_cache="warm", ok=False, failure=Failure(reason="x", message="y")),
                          ColdStart(index=2, page_cache="dropped", ok=True, seconds=30.0)])
    assert colds["warm"].count == 1 and colds["warm"].p50 == 10.0
    assert colds["dropped"].p50 == 30.0
