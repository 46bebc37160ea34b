"""The runner's pure decisions: what answers are compared with, what a manifest says must reach the GPU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from thaw.bench.runner import BenchOptions, _gpu_bytes, _intervals, _reference
from thaw.bench.schema import Answer
from thaw.errors import ConfigError

HTTP = Answer(kind="http", path="/x")


def test_the_reference_is_the_cold_starts_only_when_two_agree() -> None:
    assert _reference(HTTP, ["a", "a"]) == ("cold-start", "a")
    assert _reference(HTTP, ["a"]) == ("first-restore", None)  # one cold start shows nothing about determinism
    assert _reference(HTTP, ["a", "b"]) == ("first-restore", None)
    assert _reference(Answer(kind="canary"), ["a", "a"]) == ("none", None)


@pytest.mark.parametrize(("gpus", "expected"), [
    ([{"used_bytes": 5}, {"used_bytes": 7}], 12),
    ([], 0),  # a CPU worker: nothing reaches a GPU
    ([{"used_bytes": None}], None),  # NVML could not tell
    ([{"used_bytes": "lots"}], None),  # a manifest is untrusted: not a byte count, no figure
    ([{"used_bytes": -1}], None),
    (["junk"], None),
])
def test_gpu_bytes_from_a_manifest(gpus: list, expected: int | None) -> None:
    assert _gpu_bytes(SimpleNamespace(gpus=gpus)) == expected  # type: ignore[arg-type]


def test_intervals_make_consecutive_phases() -> None:
    tree = _intervals("cold_start", 10.0, [("launch", 10.5), ("warm_up", 12.0), ("first_answer", 12.25)])
    assert [(c.name, c.seconds) for c in tree.children] == [("launch", 0.5), ("warm_up", 1.5),
                                                           ("first_answer", 0.25), ("unaccounted", 0.0)]
    assert tree.seconds == 2.25


@pytest.mark.parametrize(("changes", "message"), [
    ({"name": "Bad Name"}, "--name"),
    ({"name": "x" * 41}, "longer than 40"),
    ({"restores": 0}, "--restores: 0 is less than 1"),
    ({"cold": -1}, "--cold"),
    ({"concurrency": 0}, "--concurrency"),
    ({"argv": [], "artifact": None, "cold": 0}, "no command and no --artifact"),
    ({"time_limit": 0.0}, "--time-limit"),
])
def test_options_are_checked_before_anything_runs(changes: dict, message: str) -> None:
    options = BenchOptions(name="ok", argv=["true"])
    for key, value in changes.items():
        setattr(options, key, value)
    with pytest.raises(ConfigError, match=message):
        options.check()
