"""Two agents ("nodes") share one artifact store: snapshot through A, restore through B.

Real agent processes, real workers, real CRIU; the store is a shared directory or a
real S3-compatible server process.
"""

from __future__ import annotations

import re

import pytest
from agent_nodes import launch_worker

pytestmark = pytest.mark.criu


def _store_url(kind: str, s3_url: str, tmp_path) -> str:
    if kind == "dir":  # a shared volume: each node copies an artifact to its own staging before CRIU runs
        return f"dir://{tmp_path / 'shared'}?fetch=copy"
    bucket, _, query = s3_url[len("s3://"):].partition("?")
    return f"s3://{bucket}/{tmp_path.name}?{query}&chunk_mib=1"


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if m and m.group(1) == name and ",".join(sorted(m.group(2).split(","))) == want:
            return float(m.group(3))
    return 0.0


@pytest.mark.parametrize("store", ["dir", "s3"])
def test_snapshot_on_node_a_restores_on_node_b(make_node, tmp_path, store, request):
    url = _store_url(store, request.getfixturevalue("s3_url") if store == "s3" else "", tmp_path)
    a, b = make_node("a", store=url), make_node("b", store=url)
    original = launch_worker(a, "llm")

    with a.client() as ca:
        job = ca.wait(ca.snapshot("llm", "llm-v1", leave_running=True).id, timeout=120)
        assert job.state.value == "succeeded", job.error
        assert job.result.bytes > 0 and job.result.write_gbps > 0 and job.result.original == "running"
        assert {"quiesce", "freeze_hooks", "dump", "publish", "total"} <= set(job.result.timings)
    served = a.worker_state(original.control_dir)
    assert served["outcome"] == "released"

    with b.client() as cb:
        [summary] = cb.artifacts()
        assert (summary.name, summary.source_host, summary.has_canary) == ("llm-v1", "a", True)
        job = cb.wait(cb.restore("llm-v1", name="llm-b").id, timeout=120)
        assert job.state.value == "succeeded", job.error
        result = job.result
        assert result.canary.checked and result.canary.match
        assert result.canary.expected == result.canary.got == {"digest": served["digest"]}
        assert result.read_gbps > 0 and result.bytes == summary.bytes
        restored = cb.worker("llm-b")
        assert restored.ready and restored.alive and restored.origin == "restored" and restored.node == "b"
        assert restored.id == result.worker.id

    answer = b.worker_state(restored.control_dir)
    assert answer["token"] == served["token"], "the restored copy holds the original's warmed state"
    assert answer["outcome"] == "thawed"
    assert not b.host(restored.control_dir).samefile(a.host(original.control_dir))
    assert list(b.staging.iterdir()) in ([], [b.staging / ".scratch"]), "the fetched copy was cleaned up"

    with b.client() as cb:
        metrics = cb.metrics()
    assert _metric(metrics, "thaw_phase_seconds_count", operation="restore", phase="criu_restore") == 1
    assert _metric(metrics, "thaw_canary_checks_total", result="match") == 1
    assert _metric(metrics, "thaw_store_bytes_total", direction="read") == summary.bytes
    audit = [line for line in (a.root / "agent" / "audit.log").read_text().splitlines() if '"succeeded"' in line]
    assert any('"operation": "snapshot"' in line and summary.artifact_id in line and summary.digest in line
               and '"uid": 0' in line for line in audit)
