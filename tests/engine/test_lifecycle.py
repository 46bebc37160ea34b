"""The engine under thaw's control protocol, without CRIU: park, freeze, thaw with a canary check, serve.

The engine runs in the test's own pid namespace, so the test creates the
``$THAW_RUN_DIR/ns/<pid-namespace inode>`` link to a control directory itself — what
thaw does for each sandbox — and writes the commands thaw would write.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_serving import ONE_THREAD

from thaw.worker import protocol
from thaw.worker.protocol import Action

TIMEOUT_S = 120


class Managed:
    def __init__(self, tmp: Path, weights: Path) -> None:
        self.dir = tmp / "ctl"
        self.dir.mkdir()
        run_dir = tmp / "run"
        link = protocol.ns_link(run_dir, protocol.sandbox_key())
        link.parent.mkdir(parents=True)
        os.symlink(self.dir, link)
        self.log = open(tmp / "worker.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "thaw.engine", "serve", "--weights", str(weights), "--device", "cpu",
             "--port", "0", "--name", "llm"],
            env={**os.environ, protocol.ENV_RUN_DIR: str(run_dir), **ONE_THREAD}, stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_for(self, what: str, probe: Any) -> Any:
        deadline = time.monotonic() + TIMEOUT_S
        while not (value := probe()):
            if self.proc.poll() is not None:  # it may have answered just before exiting (STOP): look once more
                value = probe()
                assert value, f"the engine exited while waiting for {what}:\n{self.output()}"
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.output()}"
            time.sleep(0.02)
        return value

    def ready(self) -> protocol.ReadyMarker:
        return protocol.decode_ready(self.wait_for("ready.json", lambda: protocol.read_json(self.dir / protocol.READY)))

    def send(self, action: Action, *, verify: bool = False) -> protocol.Reply:
        cmd = protocol.Command(id=uuid.uuid4().hex, action=action, verify=verify)
        protocol.write_json_atomic(self.dir / protocol.COMMAND, protocol.encode(cmd))

        def reply() -> dict[str, Any] | None:
            raw = protocol.read_json(self.dir / protocol.REPLY)
            return raw if raw and raw["id"] == cmd.id else None

        return protocol.decode_reply(self.wait_for(f"the reply to {action.value}", reply))

    def http(self) -> httpx.Client:
        sock = self.dir / "http.sock"
        self.wait_for("http.sock", sock.exists)
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://engine", timeout=30)


@pytest.fixture
def managed(tmp_path: Path, tiny_weights: Path) -> Iterator[Managed]:
    m = Managed(tmp_path, tiny_weights)
    yield m
    if m.proc.poll() is None:
        m.proc.kill()
        m.proc.wait(10)
    m.log.close()


def test_a_thawed_engine_checks_its_canary_then_serves_exactly_its_tokens_on_the_control_socket(
        managed: Managed) -> None:
    marker = managed.ready()
    assert marker.name == "llm"
    assert set(marker.hooks) >= {"thaw.engine"}
    recorded = marker.canary
    assert (len(recorded["prompts"]), recorded["max_tokens"]) == (1, 4)  # the CPU's default: it runs at every restore
    # the cold-start breakdown is in the control dir by the time the worker parks
    startup = protocol.read_json(managed.dir / "engine-startup.json")["startup"]
    assert {"weights", "kv", "warmup", "canary"} <= set(startup["phases"])
    assert not (managed.dir / "http.sock").exists()  # nothing listens while parked

    frozen = managed.send(Action.FREEZE)
    assert frozen.ok, frozen.error
    assert frozen.data["thaw.engine"]["kv_bytes"] > 0
    thawed = managed.send(Action.THAW, verify=True)
    assert thawed.ok, thawed.error
    assert thawed.data["thaw.engine"]["kv_blocks_free"] > 0
    assert thawed.canary == recorded  # the cache was reset and zeroed; the answers did not change
    assert managed.send(Action.GO).ok

    with managed.http() as http:
        health = http.get("/health").json()
        assert health["restored"] is True and health["canary"] == recorded
        for prompt, tokens in zip(recorded["prompts"], recorded["tokens"]):
            r = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": recorded["max_tokens"],
                                                   "temperature": 0, "ignore_eos": True, "return_token_ids": True})
            assert r.json()["choices"][0]["token_ids"] == tokens
    serving = protocol.read_json(managed.dir / "engine-startup.json")
    assert serving["outcome"] == "thawed" and serving["listen"]["uds"] == str(managed.dir / "http.sock")


def test_a_stopped_engine_exits_0_without_listening(managed: Managed) -> None:
    managed.ready()
    assert managed.send(Action.STOP).ok
    assert managed.proc.wait(TIMEOUT_S) == 0
    assert not (managed.dir / "http.sock").exists()
    assert "listening" not in managed.output()


def test_the_freeze_hook_refuses_an_engine_with_work_in_flight_and_the_thaw_hook_empties_the_cache(
        make_engine) -> None:  # type: ignore[no-untyped-def]
    import torch

    from thaw.engine.engine import Request, SamplingParams
    from thaw.engine.lifecycle import _Hooks
    from thaw.errors import WorkerError
    from thaw.worker import HookContext

    hooks = _Hooks()
    hooks.engine = engine = make_engine()
    engine.add(Request([1, 2, 3], SamplingParams(max_tokens=4)))
    engine.step()
    with pytest.raises(WorkerError, match="in flight"):
        hooks.freeze(HookContext("snapshot"))
    while engine.has_work():
        engine.step()
    assert hooks.freeze(HookContext("snapshot"))["kv_bytes"] == engine.kv.nbytes
    engine.kv.data.fill_(float("nan"))  # what re-mapped memory may hold
    report = hooks.thaw(HookContext("thaw"))
    assert report["kv_blocks_free"] == engine.kv.num_blocks - 1
    assert torch.count_nonzero(engine.kv.data) == 0
