"""One operation's timings as a tree: ``unaccounted`` is what no top-level phase explains."""

from __future__ import annotations

import pytest

from thaw.model import Phase, PhaseTime, Timings
from thaw.pipeline import phases as phases_module
from thaw.pipeline.phases import Phases


def gpu_snapshot() -> Timings:
    # a snapshot whose GPU checkpoint (2.0 s) is a lock (0.5 s) and a checkpoint (1.4 s) inside it
    return Timings(total=6.5, phases=[
        PhaseTime(name="quiesce", seconds=0.5),
        PhaseTime(name="gpu_checkpoint", seconds=2.0, parts=[PhaseTime(name="cuda_lock", seconds=0.5),
                                                             PhaseTime(name="cuda_checkpoint", seconds=1.4)]),
        PhaseTime(name="dump", seconds=3.0),
    ])


def test_unaccounted_subtracts_each_top_level_phase_once_and_no_part() -> None:
    t = gpu_snapshot()
    assert t.unaccounted == pytest.approx(1.0)  # 6.5 - (0.5 + 2.0 + 3.0); the parts are inside gpu_checkpoint


def test_flat_lists_phases_and_parts_by_name_with_total_and_unaccounted() -> None:
    assert gpu_snapshot().flat() == {"quiesce": 0.5, "gpu_checkpoint": 2.0, "cuda_lock": 0.5, "cuda_checkpoint": 1.4,
                                     "dump": 3.0, "total": 6.5, "unaccounted": 1.0}
    assert "total" not in gpu_snapshot().flat(totals=False)


def test_unaccounted_is_never_negative() -> None:
    assert Timings(total=1.0, phases=[PhaseTime(name="dump", seconds=1.2)]).unaccounted == 0.0


def test_summary_shows_parts_inside_their_phase() -> None:
    assert gpu_snapshot().summary() == ("quiesce 500 ms, gpu_checkpoint 2.00 s (cuda_lock 500 ms, cuda_checkpoint "
                                        "1.40 s), dump 3.00 s, unaccounted 1.00 s")


def test_the_pipeline_recorder_nests_parts_and_accounts_for_the_rest(monkeypatch) -> None:
    clock = iter([100.0,            # the operation starts
                  100.5, 102.5,     # gpu_checkpoint: 2.0 s
                  103.0, 106.0,     # dump: 3.0 s
                  106.5])           # finish: 6.5 s in all
    monkeypatch.setattr(phases_module.time, "perf_counter", lambda: next(clock))
    seen: list[str] = []
    p = Phases(lambda phase, fraction, detail: seen.append(phase))
    with p(Phase.GPU_CHECKPOINT):
        pass
    p.parts(Phase.GPU_CHECKPOINT, {"cuda_lock": 0.5, "cuda_checkpoint": 1.4})
    with p(Phase.DUMP):
        pass
    t = p.finish()
    assert seen == ["gpu_checkpoint", "dump"]
    assert t.total == 6.5 and t.unaccounted == pytest.approx(1.5)  # before: 0.0, the parts subtracted twice
    assert t.seconds(Phase.CUDA_LOCK) == 0.5 and t.seconds("fetch") == 0.0
