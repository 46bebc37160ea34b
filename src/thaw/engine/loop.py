"""The engine's own thread: it alone drives the Engine, the HTTP server only talks to it.

The server submits requests and aborts through a queue and gets each request's
outputs through the callback it registered with it (``sink``), which is called on the
engine thread — the server's sink hands them over to its event loop with
``call_soon_threadsafe``. The thread is started only after ``quiesce()`` returns:
nothing runs in the background while the worker is parked and snapshotted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import torch

from thaw.engine.engine import Engine, Output, Request
from thaw.engine.metrics import EngineMetrics

log = logging.getLogger("thaw.engine")

Sink = Callable[[Output], None]
IDLE_WAIT_S = 0.5  # an idle loop wakes up this often to notice stop()


class EngineStopped(Exception):
    """The engine loop is not running (stopped, or failed: see ``EngineLoop.error``)."""


class EngineLoop:
    def __init__(self, engine: Engine, metrics: EngineMetrics) -> None:
        self.engine = engine
        self.metrics = metrics
        self.error: BaseException | None = None
        self._inbox: queue.SimpleQueue[tuple[str, Request | str, Sink | None]] = queue.SimpleQueue()
        self._sinks: dict[str, Sink] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="thaw-engine", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def start(self) -> EngineLoop:
        self._update_gauges()
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._inbox.put(("wake", "", None))
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, request: Request, sink: Sink) -> None:
        if not self.alive:
            raise EngineStopped(f"the engine is not running: {self.error or 'stopped'}")
        self._inbox.put(("add", request, sink))

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id, None))

    def _run(self) -> None:
        # inference mode is per thread: the engine's step() enters it itself, and so does this thread
        with torch.inference_mode():
            try:
                while not self._stop.is_set():
                    self._drain(block=not self.engine.has_work())
                    if self.engine.has_work():
                        self._step()
            except BaseException as exc:  # a CUDA error or a bug: fail what is in flight, report unhealthy
                log.exception("engine loop failed")
                self.error = exc
            finally:
                self._fail_all("abort" if self.error is None else "error")

    def _drain(self, *, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=IDLE_WAIT_S) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(*item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, kind: str, payload: Request | str, sink: Sink | None) -> None:
        if kind == "add":
            assert isinstance(payload, Request) and sink is not None
            try:
                self.engine.add(payload)
            except Exception as exc:  # noqa: BLE001 - the server checks requests first; a last line of defence
                log.warning("refused request %s: %s", payload.id, exc)
                self._deliver(sink, Output(payload, None, None, "error"))
                return
            self._sinks[payload.id] = sink
            self.metrics.prompt_tokens.inc(len(payload.prompt))
        elif kind == "abort":
            assert isinstance(payload, str)
            out = self.engine.abort(payload)
            if out is not None:
                self._retire(out)

    def _step(self) -> None:
        start = time.perf_counter()
        outputs = self.engine.step()
        info = self.engine.last_step
        if info.prefills == 0 and info.decoded:
            self.metrics.decode_step.labels(str(info.decoded)).observe(time.perf_counter() - start)
        self._update_gauges()
        for out in outputs:
            if out.token is not None:
                self.metrics.generation_tokens.inc()
                if out.index == 0 and out.request.first_token_at is not None:
                    self.metrics.ttft.observe(out.request.first_token_at - out.request.arrived)
            if out.finish_reason is not None:
                self._retire(out)
            elif (sink := self._sinks.get(out.request.id)) is not None:
                self._deliver(sink, out)

    def _retire(self, out: Output) -> None:
        # count first, deliver last: a client that got its last token may read /metrics at once
        self.metrics.requests.labels(out.finish_reason or "unknown").inc()
        self.metrics.latency.observe(time.monotonic() - out.request.arrived)
        sink = self._sinks.pop(out.request.id, None)
        if sink is not None:
            self._deliver(sink, out)

    def _fail_all(self, reason: str) -> None:
        for r in [*self.engine.waiting, *self.engine.running]:
            out = self.engine.abort(r.id)
            if out is not None:
                self._retire(Output(r, None, None, reason))
        self._update_gauges()

    def _update_gauges(self) -> None:
        e = self.engine
        self.metrics.running.set(len(e.running))
        self.metrics.waiting.set(len(e.waiting))
        self.metrics.kv_blocks.labels("used").set(e.allocator.used)
        self.metrics.kv_blocks.labels("free").set(e.allocator.free)

    @staticmethod
    def _deliver(sink: Sink, out: Output) -> None:
        try:
            sink(out)
        except RuntimeError:  # the server's event loop is closed: the client is gone
            pass
