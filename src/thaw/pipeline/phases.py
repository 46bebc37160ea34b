"""Timing every phase of an operation (a tree: a phase and the parts measured inside it)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from thaw import faults
from thaw.model import Phase, PhaseTime, Timings

#: progress callback: (phase, fraction done or None, detail)
Progress = Callable[[str, float | None, str], None]


def no_progress(phase: str, fraction: float | None, detail: str) -> None:
    return None


class Phases:
    """Times the phases of one operation, tells ``progress`` when each starts, and ends in one ``Timings``."""

    def __init__(self, progress: Progress | None = None, *, operation: str = "") -> None:
        #: names the fault points of this operation's phases (``snapshot.dump``; thaw.faults)
        self.operation = operation
        self.started = time.perf_counter()
        self._phases: list[PhaseTime] = []
        self.progress = progress or no_progress

    @contextmanager
    def __call__(self, phase: Phase, detail: str = "") -> Iterator[None]:
        self.progress(phase.value, None, detail)
        faults.point(f"{self.operation}.{phase.value}")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - t0)

    def add(self, phase: Phase, seconds: float) -> None:
        self._phases.append(PhaseTime(name=phase.value, seconds=round(seconds, 6)))

    def parts(self, phase: Phase, parts: Mapping[str, float]) -> None:
        """Record what was measured inside the last ``phase`` (a GPU step's driver calls, a store's steps)."""
        for i in range(len(self._phases) - 1, -1, -1):
            if self._phases[i].name == phase.value:
                timed = [PhaseTime(name=name, seconds=round(s, 6)) for name, s in parts.items()]
                self._phases[i] = self._phases[i].model_copy(update={"parts": [*self._phases[i].parts, *timed]})
                return
        raise ValueError(f"no phase {phase.value!r} was timed")  # a bug in the pipeline, not a user error

    def so_far(self) -> Timings:
        """The phases timed until now (a manifest records them before it is published)."""
        return Timings(phases=list(self._phases), total=round(time.perf_counter() - self.started, 6))

    def finish(self) -> Timings:
        return self.so_far()


@contextmanager
def timed(timings: dict[str, float], phase: Phase) -> Iterator[None]:
    """Record the seconds the block took as ``timings[phase]`` (a GPU step's driver calls), also when it raises."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[phase.value] = round(time.perf_counter() - start, 6)
