"""``thaw bench`` end to end: real workers, real CRIU, every output a user gets (small N: CI has 2 cores)."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from thaw.bench.schema import BenchResult, Phase, load_result
from workers import SERVE, TCP, processes_of, wait_until

pytestmark = [pytest.mark.criu, pytest.mark.slow]

THAW = Path(sys.executable).with_name("thaw")


def _adds_up(tree: Phase) -> None:
    """Every node's children, its unaccounted remainder included, add up to the node."""
    if tree.children:
        assert tree.children[-1].name == "unaccounted", tree
        assert sum(c.seconds for c in tree.children) == pytest.approx(tree.seconds, abs=1e-5), tree.name
    for child in tree.children:
        _adds_up(child)


def _child(tree: Phase, name: str) -> Phase:
    return next(c for c in tree.children if c.name == name)


def _png_ok(path: Path) -> None:
    import matplotlib.image

    assert path.stat().st_size > 10_000, path
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300, path
    assert pixels.std() > 0.05, f"{path} is nearly one colour"  # something was drawn on it


def test_bench_of_a_worker_measures_cold_starts_and_restores_and_writes_every_output(thaw, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = thaw("bench", "--name", "sv", "--cold", "2", "--restores", "2", "--concurrency", "2", "--local",
                "--answer-http", "/state", "--answer-compare", "digest", "--out", str(out),
                "--", sys.executable, str(SERVE), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "restore → first answer" in done.stdout
    # progress in a log (not a terminal): one line per step
    assert "restores, 2 at once, page cache warm: 2/2" in done.stderr.splitlines()

    result = load_result(out / "result.json")  # the schema, validated (extra fields or a wrong version fail)
    assert result.schema_version == 1 and result.plan.through == "local"
    assert [c.ok for c in result.cold_starts] == [True, True]
    # serve.py's state is random per process: cold starts disagree, so copies are compared with the first restore
    assert result.reference == "first-restore"
    assert [(r.mode, r.ok, r.canary, r.answer_matches) for r in result.restores] == [
        ("sequential", True, "passed", True)] * 2 + [("concurrent", True, "passed", True)] * 2
    assert {r.wave for r in result.restores if r.mode == "concurrent"} == {0}  # both at once
    assert [(s.mode, s.attempts, s.successes, s.exact) for s in result.summaries] == [
        ("sequential", 2, 2, 2), ("concurrent", 2, 2, 2)]
    seq = result.summaries[0]
    assert seq.latency.p50 is not None and seq.speedup_p50 is not None and seq.floor_multiple_p50 is not None
    assert result.snapshot.image_bytes > 1 << 20 and result.snapshot.seconds is not None
    assert result.machine.criu is not None and result.machine.kernel and result.machine.storage

    for r in result.restores:
        assert r.phases is not None
        _adds_up(r.phases)
        restore = _child(r.phases, "restore")
        # the pipeline does real work between its phases (instance records, links): unaccounted is real, not 0
        assert _child(restore, "unaccounted").seconds > 0
        assert {"fetch", "criu_restore", "thaw_hooks"} <= {c.name for c in restore.children}
        assert r.seconds == pytest.approx(r.phases.seconds, abs=1e-5)  # the tree rounds to microseconds
    for c in result.cold_starts:
        assert c.phases is not None
        _adds_up(c.phases)
        assert [p.name for p in c.phases.children] == ["launch", "warm_up", "release", "first_answer", "unaccounted"]
    assert result.snapshot.phases is not None
    _adds_up(result.snapshot.phases)

    report = (out / "results.md").read_text()
    assert "| one at a time, page cache warm | 2/2 (100.0 %) |" in report
    assert "| 2 at once, page cache warm | 2/2 (100.0 %) |" in report
    for png in ("latency_cdf.png", "phases.png", "cold_vs_restore.png"):
        _png_ok(out / png)

    assert processes_of(thaw.home) == []  # every worker the run started is gone
    assert json.loads(thaw.ok("ls", "--local", "--json")) == []  # and so is the artifact it made

    # the report renders again from the JSON alone, and regenerates a README's section in place
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nprose\n\n<!-- thaw-bench -->\nold figures\n<!-- /thaw-bench -->\n\nmore prose\n")
    thaw.ok("bench", "report", str(out / "result.json"), "--out", str(tmp_path / "again"), "--readme", str(readme))
    text = readme.read_text()
    assert "old figures" not in text and "prose\n" in text and "more prose" in text
    assert "| one at a time, page cache warm |" in text and "cold_vs_restore.png" in text
    _png_ok(tmp_path / "again" / "phases.png")


def test_bench_of_an_existing_artifact_through_the_agent_uses_the_canary_exchange(thaw, agent: Path,
                                                                                   tmp_path: Path) -> None:
    thaw.run_worker("orig")
    thaw.ok("snapshot", "orig", "--artifact", "given", "--local")
    done = thaw("bench", "--name", "gv", "--artifact", "given", "--cold", "0", "--restores", "2",
                "--out", str(tmp_path / "out"), "--json", timeout=300, THAW_AGENT=str(agent))
    assert done.returncode == 0, done.stderr
    result = BenchResult.model_validate_json(done.stdout)
    assert result.plan.through == f"agent at {agent}"
    assert result.plan.artifact_given and result.snapshot.seconds is None
    assert result.plan.argv[-1] == str(SERVE)  # the command the artifact came from, read from its manifest
    assert [(r.ok, r.canary, r.answer_matches) for r in result.restores] == [(True, "passed", None)] * 2
    assert result.reference == "none" and result.summaries[0].exact == 2
    for r in result.restores:
        assert r.phases is not None
        _adds_up(r.phases)
    audit = [json.loads(line) for line in (thaw.home / "agent" / "audit.log").read_text().splitlines()]
    assert sum(1 for a in audit if a["operation"] == "restore" and a["outcome"] == "succeeded") == 2
    assert json.loads(thaw.ok("ls", "--local", "--json"))[0]["name"] == "given"  # a given artifact is kept
    wait_until(lambda: len(processes_of(thaw.home)) == 0, 30, "the restored copies to be stopped")

    # cold starts through the agent too: it launches, releases and stops them
    # short names: the workers' sockets live under the test's home, and unix socket paths end at 107 bytes
    done = thaw("bench", "--name", "va", "--artifact", "given", "--cold", "1", "--restores", "1",
                "--answer-http", "/state", "--answer-compare", "digest", "--out", str(tmp_path / "out2"), "--json",
                "--", sys.executable, str(SERVE), timeout=300, THAW_AGENT=str(agent))
    assert done.returncode == 0, done.stderr
    result = BenchResult.model_validate_json(done.stdout)
    assert result.cold_starts[0].ok and [p.name for p in result.cold_starts[0].phases.children][:2] == [
        "launch", "warm_up"]
    assert result.restores[0].ok and result.restores[0].answer_matches
    audit = [json.loads(line) for line in (thaw.home / "agent" / "audit.log").read_text().splitlines()]
    assert {"launch", "stop"} <= {a["operation"] for a in audit}
    wait_until(lambda: len(processes_of(thaw.home)) == 0, 30, "every worker to be stopped")


def test_bench_asks_each_copy_on_its_own_loopback(thaw, tmp_path: Path) -> None:
    # two copies at once, both listening on port 8765: each in its own network namespace, asked from inside it
    done = thaw("bench", "--name", "tcp", "--cold", "2", "--restores", "2", "--concurrency", "2", "--local",
                "--answer-http", "/answer", "--answer-port", "8765", "--answer-compare", "state",
                "--out", str(tmp_path / "o"), "--", sys.executable, str(TCP), timeout=300)
    assert done.returncode == 0, done.stderr
    result = load_result(tmp_path / "o" / "result.json")
    assert result.cold_starts[1].ok and result.reference == "cold-start"  # a deterministic worker: both agreed
    assert [(r.mode, r.ok, r.answer_matches) for r in result.restores] == [
        ("sequential", True, True), ("sequential", True, True), ("concurrent", True, True), ("concurrent", True, True)]


def test_bench_of_the_reference_engine_as_the_gpu_runs_call_it(thaw, tmp_path: Path) -> None:
    # the command line of the GPU runs, on the CPU: the engine serves <control dir>/http.sock, and a greedy
    # /v1/completions is every copy's first answer
    weights = tmp_path / "tiny"
    thaw.ok("engine", "make-weights", "tiny", str(weights), "--device", "cpu")
    out = tmp_path / "out"
    done = thaw("bench", "--name", "etiny", "--cold", "1", "--restores", "2", "--concurrency", "2", "--local",
                "--answer-http", "/v1/completions", "--out", str(out),
                "--", sys.executable, "-m", "thaw.engine", "serve", "--weights", str(weights), "--device", "cpu",
                "--port", "0", timeout=600)
    assert done.returncode == 0, done.stderr
    result = load_result(out / "result.json")
    assert result.reference == "first-restore"  # one cold start cannot show the worker is deterministic
    assert result.plan.answer.compare == ["choices"]
    assert all(r.ok and r.canary == "passed" and r.answer_matches for r in result.restores)
    assert [s.exact for s in result.summaries] == [2, 2]


def test_bad_flags_fail_before_anything_starts(thaw) -> None:
    thaw.fails("bench", "--name", "x", "--restores", "0", "--local", "--", "true",
               message="--restores: 0 is less than 1")
    thaw.fails("bench", "--name", "x", "--local", message="cold starts need the worker's command")
    thaw.fails("bench", "--name", "x", "--answer-http", "state", "--local", "--", "true",
               message="is not a URL path")
    assert not (thaw.home / "instances").exists() or not any((thaw.home / "instances").iterdir())


def test_a_run_interrupted_keeps_what_it_measured_and_leaves_nothing_running(thaw, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = thaw.start("bench", "--name", "cut", "--cold", "1", "--restores", "50", "--local", "--out", str(out),
                      "--", sys.executable, str(SERVE))
    samples = out / "samples.jsonl"
    wait_until(lambda: samples.exists() and '"kind": "restore"' in samples.read_text(), 120, "a first restore")
    proc.send_signal(signal.SIGINT)
    _, err = thaw.finish(proc, 120)
    assert proc.returncode == 1, err
    assert "the run stopped early (interrupted)" in err
    result = load_result(out / "result.json")
    assert not result.complete and result.stopped == "interrupted"
    assert len(result.cold_starts) == 1 and 1 <= len(result.restores) < 50
    assert all(r.ok for r in result.restores)  # the restore under way when interrupted is not counted
    assert processes_of(thaw.home) == []
    assert json.loads(thaw.ok("ls", "--local", "--json")) == []


def test_a_time_limit_stops_the_run_before_it_starts_more(thaw, tmp_path: Path) -> None:
    done = thaw("bench", "--name", "late", "--time-limit", "0.001", "--local", "--out", str(tmp_path / "o"),
                "--", sys.executable, str(SERVE))
    assert done.returncode == 1
    result = load_result(tmp_path / "o" / "result.json")
    assert (result.complete, result.stopped) == (False, "time limit of 0.001 s")
    # the first cold start may begin inside the first millisecond; nothing begins after it
    assert len(result.cold_starts) <= 1 and result.snapshot is None and result.restores == []
    assert "Incomplete run" in (tmp_path / "o" / "results.md").read_text()
