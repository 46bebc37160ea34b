"""Freeze and thaw hooks: engine-specific steps around a snapshot.

Freeze hooks run in registration order right before thaw checkpoints the worker
(e.g. ``torch.cuda.synchronize()``, ``empty_cache()``, releasing the KV cache).
Thaw hooks run in *reverse* registration order after a restore, and also after a
failed or ``--leave-running`` snapshot, to undo what the freeze hooks did
(re-acquire the KV cache, ...). A hook may return a JSON-serialisable dict; thaw
records what the hooks report (e.g. bytes released) in the artifact's manifest.

If a freeze hook fails, the freeze hooks that completed are undone right away by the
thaw hooks *of the same name* (reason "abort"): register a freeze step and its undo
under one ``name`` (``@on_freeze(name="kv")`` / ``@on_thaw(name="kv")``).

Frozen checks (``on_frozen``) run after *every* freeze hook, whatever the order the
hooks were registered in: they verify the worker is now safe to checkpoint (e.g. it maps
no GPU memory imported from another process). A failing check undoes the freeze like a
failing hook.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HookFn = Callable[["HookContext"], "dict[str, Any] | None"]


@dataclass
class HookContext:
    """What a hook is told about the step it runs in."""

    #: "snapshot" (freeze), "thaw" (restored copy), "abort" (snapshot failed), "release" (snapshot taken, go on)
    reason: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hook:
    name: str
    fn: HookFn


_freeze: list[Hook] = []
_thaw: list[Hook] = []
_frozen_checks: list[Hook] = []


def on_freeze(fn: HookFn | None = None, *, name: str | None = None) -> Any:
    """Register ``fn`` to run before a snapshot. Usable as ``@on_freeze`` or ``on_freeze(fn, name=...)``."""
    return _register(_freeze, fn, name)


def on_thaw(fn: HookFn | None = None, *, name: str | None = None) -> Any:
    """Register ``fn`` to run after a restore (and to undo a freeze). Runs in reverse registration order."""
    return _register(_thaw, fn, name)


def on_frozen(fn: HookFn | None = None, *, name: str | None = None) -> Any:
    """Register a check that runs after every freeze hook; raising refuses the snapshot (the freeze is undone)."""
    return _register(_frozen_checks, fn, name)


def registered() -> dict[str, list[str]]:
    """Names of the registered hooks, for the readiness marker and ``thaw inspect``."""
    return {"freeze": [h.name for h in _freeze], "thaw": [h.name for h in _thaw]}


def clear() -> None:
    """Forget every hook (for tests)."""
    _freeze.clear()
    _thaw.clear()
    _frozen_checks.clear()


def run_freeze(ctx: HookContext) -> dict[str, Any]:
    """Run the freeze hooks in order. If one fails, the thaw hooks of those that ran are run to undo them."""
    report: dict[str, Any] = {}
    done: list[str] = []
    for hook in _freeze:
        try:
            report[hook.name] = _timed(hook, ctx)
        except BaseException as exc:
            undo = HookContext(reason="abort", info=ctx.info)
            _run(list(reversed(_thaw)), undo, only=set(done), swallow=True)
            raise HookFailed(hook.name, exc) from exc
        done.append(hook.name)
    for check in _frozen_checks:
        try:
            check.fn(ctx)
        except BaseException as exc:
            _run(list(reversed(_thaw)), HookContext(reason="abort", info=ctx.info), only=set(done), swallow=True)
            raise HookFailed(check.name, exc) from exc
    return report


def run_thaw(ctx: HookContext) -> dict[str, Any]:
    """Run the thaw hooks in reverse registration order; the first failure stops and raises."""
    return _run(list(reversed(_thaw)), ctx)


class HookFailed(Exception):
    def __init__(self, name: str, exc: BaseException) -> None:
        super().__init__(f"hook {name!r} failed: {type(exc).__name__}: {exc}")
        self.name = name


def _run(hooks: list[Hook], ctx: HookContext, *, only: set[str] | None = None, swallow: bool = False) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for hook in hooks:
        if only is not None and hook.name not in only:
            continue
        try:
            report[hook.name] = _timed(hook, ctx)
        except BaseException as exc:
            if not swallow:
                raise HookFailed(hook.name, exc) from exc
    return report


def _timed(hook: Hook, ctx: HookContext) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = hook.fn(ctx) or {}
    return {**out, "seconds": round(time.perf_counter() - t0, 6)}


def _register(hooks: list[Hook], fn: HookFn | None, name: str | None) -> Any:
    def add(f: HookFn) -> HookFn:
        hook_name = name or getattr(f, "__qualname__", repr(f))
        hooks[:] = [h for h in hooks if h.name != hook_name]  # re-registering replaces
        hooks.append(Hook(hook_name, f))
        return f

    return add(fn) if fn is not None else add
