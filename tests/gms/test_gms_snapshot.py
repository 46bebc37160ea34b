"""The engine's weights from the GPU memory service through a real snapshot and restore (real CRIU, CPU).

The memfd stand-in plays the GPU: the engine maps its weights from the service, the
snapshot's image leaves them out (it is smaller by about their size than the same
engine's image with weights it loaded itself), the manifest names the set, and two copies
restored at once map the service's one copy again and answer exactly their canary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from gms_helpers import ServiceProcess

pytestmark = [pytest.mark.criu, pytest.mark.slow]
TIMEOUT_S = 240
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def thaw_cli(home: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "thaw", *args[:1], "--json", *args[1:]], capture_output=True,
                          text=True, timeout=TIMEOUT_S, env={**os.environ, "THAW_HOME": str(home), **ONE_THREAD})
    assert proc.returncode == 0, f"thaw {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


def answer(control_dir: Path, canary: dict[str, Any]) -> list[int]:
    sock = control_dir / "http.sock"
    deadline = time.monotonic() + TIMEOUT_S
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://e", timeout=60) as http:
        while True:
            try:
                r = http.post("/v1/completions", json={"prompt": canary["prompts"][0], "temperature": 0,
                                                       "max_tokens": canary["max_tokens"], "ignore_eos": True,
                                                       "return_token_ids": True})
                r.raise_for_status()
                return r.json()["choices"][0]["token_ids"]
            except httpx.TransportError:
                assert time.monotonic() < deadline, (control_dir / "worker.log").read_text()[-3000:]
                time.sleep(0.05)


@pytest.fixture
def wide_weights(tmp_path: Path) -> Path:
    from thaw.engine.config import get_config, replace
    from thaw.engine.weights import make_weights

    config = replace(get_config("tiny"), name="wide", hidden_size=512, intermediate_size=2048, num_layers=4,
                     num_heads=8, num_kv_heads=4, head_dim=64)
    return make_weights(config, tmp_path / "models" / "wide", device="cpu").path


@pytest.fixture
def home(tmp_path: Path):  # type: ignore[no-untyped-def]
    home = tmp_path / "thaw"
    yield home
    from thaw import pipeline
    from thaw.config import Settings
    from thaw.errors import ThawError

    for inst in pipeline.list_instances(Settings(home=home)):
        try:
            pipeline.stop(Settings(home=home), inst)
        except ThawError:
            pass


def engine(weights: Path, source: str) -> list[str]:
    return [sys.executable, "-m", "thaw.engine", "serve", "--weights", str(weights), "--device", "cpu",
            "--dtype", "bfloat16", "--port", "0", "--weights-from", source, "--gms-device", "memfd:ci"]


def test_weights_from_the_service_leave_the_image_and_come_back_in_every_copy(home: Path, wide_weights: Path) -> None:
    from thaw.engine.weights import checkpoint_bytes

    svc = ServiceProcess(home / "gms", wide_weights.parent, device="memfd:ci")
    try:
        thaw_cli(home, "run", "--name", "own", "--wait", "--", *engine(wide_weights, "local"))
        own = thaw_cli(home, "snapshot", "own", "--artifact", "own-v1")["manifest"]
        original = thaw_cli(home, "run", "--name", "llm", "--wait", "--", *engine(wide_weights, "gms"))
        canary = json.loads((Path(original["dir"]) / "ready.json").read_text())["canary"]
        snap = thaw_cli(home, "snapshot", "llm", "--artifact", "llm-v1", "--leave-running")["manifest"]

        weight_bytes = checkpoint_bytes(wide_weights)
        [ref] = snap["weights"]
        assert ref["bytes"] >= 0.99 * weight_bytes and ref["device"] == "memfd:ci"
        assert [f["path"] for f in ref["files"]] == [str(wide_weights / "model.safetensors")]
        size = lambda m: sum(f["size"] for f in m["files"])  # noqa: E731
        assert size(own) - size(snap) >= 0.9 * weight_bytes, (size(own), size(snap), weight_bytes)

        copies: dict[int, dict[str, Any]] = {}

        def restore(k: int) -> None:
            copies[k] = thaw_cli(home, "restore", "llm-v1", "--name", f"copy{k}")

        threads = [threading.Thread(target=restore, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(copies) == [0, 1] and all(c["canary"] == "passed" for c in copies.values())
        for c in copies.values():
            assert answer(Path(c["instance"]["dir"]), canary) == canary["tokens"][0]
        assert answer(Path(original["dir"]), canary) == canary["tokens"][0]  # the released original too

        from thaw.gms import Client

        with Client(svc.sock) as client:
            sets = [s for s in client.status().sets if s.key == ref["key"]]
        assert len(sets) == 1 and sets[0].holders == 3  # one copy of the weights, mapped by all three workers
    finally:
        svc.stop()


def test_a_restore_where_no_service_runs_is_refused_before_anything_is_restored(home: Path, wide_weights: Path) -> None:
    svc = ServiceProcess(home / "gms", wide_weights.parent, device="memfd:ci")
    try:
        thaw_cli(home, "run", "--name", "llm", "--wait", "--", *engine(wide_weights, "gms"))
        thaw_cli(home, "snapshot", "llm", "--artifact", "llm-v1")
    finally:
        svc.stop()
    proc = subprocess.run([sys.executable, "-m", "thaw", "restore", "llm-v1", "--name", "orphan"], capture_output=True,
                          text=True, timeout=TIMEOUT_S, env={**os.environ, "THAW_HOME": str(home)})
    assert proc.returncode == 1
    assert "none answers for memfd:ci" in proc.stderr and "Traceback" not in proc.stderr
    ps = thaw_cli(home, "ps")
    assert not [w for w in ps if w["name"] == "orphan" and w.get("state") == "running"]
