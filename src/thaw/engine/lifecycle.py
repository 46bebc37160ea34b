"""The engine's lifecycle: warm up, park at the quiesce point, then serve.

::

    start ─► imports ─► weights ─► KV cache ─► CUDA graphs / warm-up ─► canary
                                                                          │
                        thaw.worker.quiesce(name, canary) ◄───────────────┘  (a snapshot is taken here)
                          │ stopped: exit 0
                          │ released (original copy, or not under thaw) / thawed (restored copy)
                          ▼
          bind TCP (+ unix socket in the control dir) ─► engine thread ─► uvicorn

Nothing listens and no thread of ours runs while the worker is parked: a snapshot
holds no socket and no request. Under thaw the worker lives in its own network
namespace, so it also serves HTTP on ``<control dir>/http.sock`` — the control dir of
*this* copy, looked up after quiesce returns (a restored copy gets a new one) — which
is how the host reaches it.

The freeze/thaw hooks are registered before the KV cache is allocated, i.e. before
``thaw.memory`` registers its own on first use: freeze hooks run in registration order,
so the engine (idle check, synchronise, empty_cache) and ``thaw.cuda.worker_hooks`` (GPU
report) run *before* thaw.memory releases the cache; thaw hooks run in reverse, so the
engine resets and zeroes its cache *after* thaw.memory mapped it again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import torch
import uvicorn

import thaw.worker
from thaw.engine import server, weights
from thaw.engine.canary import Canary
from thaw.engine.config import ModelConfig, get_config
from thaw.engine.engine import Engine
from thaw.engine.kv_cache import KVCache
from thaw.engine.loop import EngineLoop
from thaw.engine.metrics import EngineMetrics
from thaw.engine.model import Qwen3
from thaw.engine.options import ServeOptions
from thaw.engine.startup import StartupClock
from thaw.engine.tokenizer import ByteTokenizer
from thaw.errors import ConfigError, HostError, WorkerError
from thaw.worker import protocol

log = logging.getLogger("thaw.engine")

HOOK = "thaw.engine"
GRAPHS_REGION = "graphs"  # thaw.memory tag of the CUDA graphs' activations (discarded at a snapshot)
GiB = 1024**3
CPU_KV_BYTES = 256 * 1024**2
STARTUP_JSON = "engine-startup.json"  # in the control dir: the cold-start breakdown and where this copy listens
UDS_NAME = "http.sock"
_UDS_MAX = 107  # sun_path holds 108 bytes including the terminating NUL
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def serve(opts: ServeOptions, clock: StartupClock) -> int:
    """Warm up, quiesce, serve until stopped (by thaw, or by SIGINT/SIGTERM). Returns the exit status."""
    _logging(opts.log_level)
    device, _ = _device(opts)
    hooks = _Hooks()
    # one name for both: thaw.worker undoes a completed freeze hook with the thaw hook of the same name
    thaw.worker.on_freeze(hooks.freeze, name=HOOK)
    thaw.worker.on_thaw(hooks.thaw, name=HOOK)
    if device.type == "cuda":
        from thaw.cuda import worker_hooks  # reports the GPU and torch's reserved bytes into the manifest

        worker_hooks.install()
    engine = hooks.engine = build(opts, clock)
    config, max_len = engine.model.config, engine.max_model_len
    gpu = engine.model.device.type == "cuda"
    canary = Canary(engine, config.name, prompts=opts.canary_prompts or 1,
                    max_tokens=opts.canary_tokens or (8 if gpu else 4))
    with clock.phase("canary"):
        recorded = canary.record()

    startup = clock.report()
    print(clock.summary_line(), flush=True)
    _publish({"startup": startup})
    # Everything that serving needs and that holds no socket and runs no thread is built before the quiesce
    # point: a restored copy then only binds and starts its threads (the restore waits for the first answer).
    metrics = EngineMetrics()
    loop = EngineLoop(engine, metrics)
    state = server.ServerState(loop, metrics, config.name)
    http = uvicorn.Config(server.build_app(state), log_level=opts.log_level, access_log=False, lifespan="off")
    http.load()
    outcome = thaw.worker.quiesce(name=opts.name or f"thaw-engine-{config.name}", canary=canary)
    if outcome.stopped:
        log.info("thaw stopped the worker at its quiesce point")
        return 0

    listen, sockets = _bind(opts)
    restore = outcome.info if outcome.thawed else None
    _publish({"startup": startup, "listen": listen, "outcome": outcome.kind.value, "restore": restore})
    metrics.record_startup(startup, restored=outcome.thawed)
    state.info.update({"model": config.name, "device": str(engine.model.device),
                       "dtype": str(engine.model.dtype).removeprefix("torch."),
                       "max_batch": opts.max_batch, "max_model_len": max_len, "listen": listen,
                       "restored": outcome.thawed, "restore": restore, "startup": startup, "canary": recorded})
    loop.start()
    print("thaw-engine listening " + json.dumps(listen), flush=True)
    try:
        with _stop_on_signals():
            uvicorn.Server(http).run(sockets=sockets)
    except _Stopped as stop:
        log.info("stopped by signal %s after a graceful shutdown", stop.signum)
    finally:
        loop.stop()
    return 1 if loop.error is not None else 0


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Make SIGINT/SIGTERM end ``serve()`` with status 0.

    uvicorn handles them itself (a graceful shutdown), then puts back the handlers it
    found and raises the signal again (uvicorn/server.py, ``capture_signals``); the
    handlers found are these, which turn that into an exception ``serve()`` catches.
    """
    def stop(signum: int, frame: object) -> None:
        raise _Stopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def build(opts: ServeOptions, clock: StartupClock) -> Engine:
    """Load the weights, allocate the KV cache, capture graphs / warm up: a ready engine, each phase timed."""
    config = _config(opts)
    device, dtype = _device(opts)
    max_len = min(opts.max_model_len or (4096 if device.type == "cuda" else 1024), config.max_position_embeddings)
    if device.type == "cuda":
        with clock.phase("cuda_context"):  # created lazily by torch; a restore skips this too
            torch.cuda.init()
            torch.zeros(1, device=device)
            _synchronize(device)
    with clock.phase("weights") as d:
        if _weights_source(opts, config, device, dtype) == "gms":
            from thaw.engine import gms_weights

            model, d["gms"] = gms_weights.load(opts.weights, config, device=device, dtype=dtype, max_len=max_len,
                                               gms_device=opts.gms_device)
        else:
            model = Qwen3.load(opts.weights, config, device=device, dtype=dtype, max_len=max_len)
        _synchronize(device)
        d["bytes"] = weights.checkpoint_bytes(opts.weights)
    with clock.phase("kv") as d:
        num_blocks = _kv_blocks(opts, config, device, dtype, max_len)
        kv = KVCache(config, num_blocks=num_blocks, block_size=opts.block_size, dtype=dtype, device=device)
        _synchronize(device)
        d |= {"blocks": num_blocks, "bytes": kv.nbytes}
    engine = Engine(model, kv, ByteTokenizer(config.vocab_size), max_batch=opts.max_batch, max_model_len=max_len)
    with clock.phase("graphs" if device.type == "cuda" else "warmup") as d:
        if device.type == "cuda" and opts.cuda_graphs:
            pool = None
            if opts.graph_pool == "thaw":
                import thaw.memory

                pool = thaw.memory.mempool(GRAPHS_REGION).id
            d["graphs"] = engine.capture_graphs([b for b in opts.graph_batch_sizes if b <= opts.max_batch] or [1],
                                                pool=pool)
            d["graph_pool"] = opts.graph_pool
        engine.warm_up()
        _synchronize(device)
    return engine


class _Hooks:
    """The engine's freeze/thaw hooks; registered before the engine exists, so they find it when they run."""

    def __init__(self) -> None:
        self.engine: Engine | None = None

    def freeze(self, ctx: thaw.worker.HookContext) -> dict[str, Any]:
        if self.engine is None or not self.engine.idle:
            # quiesce() runs between start-up and serving, so this is a bug, not a busy server
            raise WorkerError("the engine has work in flight at its quiesce point; refusing to be snapshotted")
        if self.engine.model.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        return {"kv_bytes": self.engine.kv.nbytes, "kv_blocks": self.engine.allocator.num_blocks}

    def thaw(self, ctx: thaw.worker.HookContext) -> dict[str, Any]:
        # runs after thaw.memory mapped the KV cache again (thaw hooks run in reverse): its contents are gone
        assert self.engine is not None
        self.engine.reset_cache()
        if self.engine.model.device.type == "cuda":
            torch.cuda.synchronize()
        return {"kv_blocks_free": self.engine.allocator.free}


def _weights_source(opts: ServeOptions, config: ModelConfig, device: torch.device, dtype: torch.dtype) -> str:
    """"gms" or "local": what --weights-from asks, with "auto" meaning gms when a service can serve these weights."""
    if opts.weights_from == "local":
        return "local"
    problem = ""
    if _DTYPES[config.dtype] != dtype:
        problem = f"the checkpoint is {config.dtype}, the engine runs in {dtype} (mapped weights are not converted)"
    elif device.type != "cuda" and not opts.gms_device:
        problem = "on the CPU the service is the memfd stand-in: give --gms-device memfd:NAME"
    if not problem:
        import thaw.memory.weights as gms

        where = opts.gms_device or (device.index if device.index is not None else torch.cuda.current_device())
        if gms.available(where) or opts.weights_from == "gms":
            return "gms"
        problem = f"no GPU memory service listens under {gms.gms_dir_default()}"
    if opts.weights_from == "gms":
        raise ConfigError("weights_from", f"--weights-from gms: {problem}")
    log.info("weights: loading them in the engine (%s)", problem)
    return "local"


def _config(opts: ServeOptions) -> ModelConfig:
    on_disk = weights.read_config(opts.weights)
    if opts.config is None or opts.config == on_disk.name:
        return on_disk
    wanted = get_config(opts.config)
    if asdict(wanted) | {"name": ""} != asdict(on_disk) | {"name": ""}:
        raise ConfigError("config", f"{opts.config!r} does not match the checkpoint in {opts.weights} "
                          f"(made for {on_disk.name!r})")
    return wanted


def _device(opts: ServeOptions) -> tuple[torch.device, torch.dtype]:
    kind = opts.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise HostError("--device cuda, but torch sees no CUDA device")
    dtype = opts.dtype if opts.dtype != "auto" else ("bfloat16" if kind == "cuda" else "float32")
    device = torch.device(kind)  # "cuda": torch's current device; naming an index here would create the context
    return device, _DTYPES[dtype]


def _kv_blocks(opts: ServeOptions, config: ModelConfig, device: torch.device, dtype: torch.dtype,
               max_len: int) -> int:
    per_block = KVCache.bytes_per_block(config, opts.block_size, dtype)
    per_seq = math.ceil(max_len / opts.block_size)
    if opts.kv_gb is not None:
        budget = int(opts.kv_gb * GiB)
    elif device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = int(opts.gpu_memory_utilization * total) - (total - free) - _activation_reserve(opts, config, max_len)
    else:
        return min(max(CPU_KV_BYTES // per_block, per_seq + 1), opts.max_batch * per_seq + 1)
    blocks = budget // per_block
    if blocks < per_seq + 1:
        raise ConfigError("kv_gb", f"{budget / GiB:.2f} GiB hold {max(blocks, 0)} KV blocks; one sequence of "
                          f"{max_len} tokens needs {per_seq} (+1 null block)",
                          hint="lower --max-model-len or give the cache more memory")
    return blocks


def _activation_reserve(opts: ServeOptions, config: ModelConfig, max_len: int) -> int:
    """GPU memory left for activations: a max-length prefill's (bf16, x2 for temporaries), the sampler's, 1 GiB."""
    c = config
    per_token = 4 * c.hidden_size + 3 * c.intermediate_size + (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    return GiB + 2 * 2 * max_len * per_token + 4 * 4 * opts.max_batch * c.vocab_size


def _bind(opts: ServeOptions) -> tuple[dict[str, Any], list[socket.socket]]:
    tcp = socket.create_server((opts.host, opts.port))
    listen: dict[str, Any] = {"tcp": f"{opts.host}:{tcp.getsockname()[1]}"}
    sockets = [tcp]
    uds = opts.uds
    if uds is None and thaw.worker.managed():
        ctl = thaw.worker.control_dir()  # this copy's: a restored copy's differs from the original's
        if ctl is None:
            raise WorkerError("running under thaw, but this sandbox has no control directory for http.sock")
        uds = ctl / UDS_NAME
    if uds is not None:
        if len(str(uds)) > _UDS_MAX:
            raise ConfigError("uds", f"{uds} is longer than a unix socket path may be ({_UDS_MAX} bytes)")
        uds.unlink(missing_ok=True)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(str(uds))
        os.chmod(uds, 0o666)  # the host side may be another user
        unix.listen(128)
        sockets.append(unix)
        listen["uds"] = str(uds)
    return listen, sockets


def _publish(doc: dict[str, Any]) -> None:
    """Write ``doc`` to this copy's control dir (under thaw only), for the host to read."""
    ctl = thaw.worker.control_dir() if thaw.worker.managed() else None
    if ctl is not None:
        protocol.write_json_atomic(ctl / STARTUP_JSON, doc)


def _synchronize(device: torch.device) -> None:
    # phases are timed on the host; without this, queued GPU work would be billed to the next phase
    if device.type == "cuda":
        torch.cuda.synchronize()


def _logging(level: str) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
