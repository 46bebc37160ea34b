"""Phase trees: nested phases go under their parent, and ``unaccounted`` is what no sub-phase explains."""

from __future__ import annotations

import pytest

from thaw.bench.phases import aggregate, from_timings, node, walk
from thaw.bench.schema import Phase


def _sum_holds(tree: Phase) -> None:
    """At every node with children, the children (unaccounted included) add up to the node."""
    if tree.children:
        assert sum(c.seconds for c in tree.children) == pytest.approx(tree.seconds, abs=1e-5), tree.name
        assert tree.children[-1].name == "unaccounted"
    for c in tree.children:
        _sum_holds(c)


def test_a_restore_s_timings_as_the_pipeline_reports_them() -> None:
    # as pipeline/restore.py returns them on a GPU: cuda_* are timed inside gpu_restore, fetch_verify_s inside fetch,
    # and the pipeline's own unaccounted (0.0 here: it subtracts the nested phases twice) is not a phase
    timings = {"fetch": 0.30, "fetch_verify_s": 0.25, "plan": 0.01, "criu_restore": 2.00, "gpu_restore": 0.80,
               "cuda_restore": 0.60, "cuda_unlock": 0.15, "thaw_hooks": 0.40, "go": 0.02, "total": 3.70,
               "unaccounted": 0.0}
    tree = from_timings("restore", timings)
    _sum_holds(tree)
    top = {c.name: c.seconds for c in tree.children}
    assert list(top) == ["fetch", "plan", "criu_restore", "gpu_restore", "thaw_hooks", "go", "unaccounted"]
    # 3.70 - (0.30 + 0.01 + 2.00 + 0.80 + 0.40 + 0.02) = 0.17: real, not 0 (which subtracting cuda_* twice gives)
    assert top["unaccounted"] == pytest.approx(0.17)
    gpu = next(c for c in tree.children if c.name == "gpu_restore")
    assert [(c.name, c.seconds) for c in gpu.children] == [("cuda_restore", 0.60), ("cuda_unlock", 0.15),
                                                           ("unaccounted", pytest.approx(0.05))]
    fetch = next(c for c in tree.children if c.name == "fetch")
    assert [c.name for c in fetch.children] == ["verify", "unaccounted"]


def test_a_snapshot_s_gpu_checkpoint_holds_lock_and_checkpoint() -> None:
    timings = {"quiesce": 0.0, "freeze_hooks": 0.5, "gpu_checkpoint": 3.0, "cuda_lock": 0.5, "cuda_checkpoint": 2.4,
               "dump": 5.0, "publish": 1.0, "stop_original": 0.1, "total": 9.8}
    tree = from_timings("snapshot", timings)
    _sum_holds(tree)
    assert dict(walk(tree))["gpu_checkpoint/unaccounted"] == pytest.approx(0.1)
    assert dict(walk(tree))["unaccounted"] == pytest.approx(0.2)


def test_a_fetch_that_copies_has_a_child_named_like_it() -> None:
    # dir:///...?fetch=copy reports fetch_fetch_s: a child "fetch" under "fetch", not a loop
    tree = from_timings("restore", {"fetch": 1.0, "fetch_fetch_s": 0.9, "criu_restore": 1.0, "total": 2.5})
    _sum_holds(tree)
    assert dict(walk(tree))["fetch/fetch"] == pytest.approx(0.9)


def test_dotted_names_nest_without_a_table() -> None:
    tree = from_timings("op", {"a": 2.0, "a.b": 1.5, "a.b.c": 1.0, "d": 1.0}, seconds=4.0)
    _sum_holds(tree)
    assert dict(walk(tree)) == {"a": 2.0, "a/b": 1.5, "a/b/c": 1.0, "a/b/unaccounted": 0.5,
                                "a/unaccounted": 0.5, "d": 1.0, "unaccounted": 1.0}


def test_unaccounted_is_signed_when_children_overlap() -> None:
    assert node("x", 1.0, [node("a", 0.8), node("b", 0.5)]).children[-1].seconds == pytest.approx(-0.3)


def test_a_leaf_has_no_unaccounted() -> None:
    assert node("leaf", 1.0).children == []


def test_aggregate_gives_each_phase_s_distribution_by_path() -> None:
    runs = [node("r", t, [node("restore", t - 0.1, [node("criu_restore", t - 0.3)]), node("first_answer", 0.05)])
            for t in (1.0, 2.0, 3.0)]
    phases = aggregate(runs)
    assert phases["restore/criu_restore"].p50 == pytest.approx(1.7)
    assert phases["restore/unaccounted"].max == pytest.approx(0.2)
    assert phases["unaccounted"].p50 == pytest.approx(0.05)
    assert phases["first_answer"].count == 3
