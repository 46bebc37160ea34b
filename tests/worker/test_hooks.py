"""Freeze and thaw hooks: order, reports, replacement, and undo when a freeze hook fails."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from thaw.worker import hooks
from thaw.worker.hooks import HookContext, HookFailed


@pytest.fixture(autouse=True)
def no_hooks() -> Iterator[None]:
    hooks.clear()
    yield
    hooks.clear()


@pytest.fixture
def calls() -> list[tuple[str, str]]:
    return []


def register(calls: list[tuple[str, str]], *names: str, fail: str | None = None) -> None:
    for name in names:
        def freeze(ctx: HookContext, name: str = name) -> dict:
            calls.append((f"freeze:{name}", ctx.reason))
            if fail == f"freeze:{name}":
                raise RuntimeError(f"no {name} today")
            return {"released": name}

        def thaw(ctx: HookContext, name: str = name) -> None:
            calls.append((f"thaw:{name}", ctx.reason))
            if fail == f"thaw:{name}":
                raise RuntimeError(f"cannot thaw {name}")

        hooks.on_freeze(freeze, name=name)
        hooks.on_thaw(thaw, name=name)


def test_freeze_hooks_run_in_order_and_thaw_hooks_in_reverse(calls: list) -> None:
    register(calls, "a", "b", "c")

    hooks.run_freeze(HookContext("snapshot"))
    hooks.run_thaw(HookContext("thaw"))

    assert calls == [("freeze:a", "snapshot"), ("freeze:b", "snapshot"), ("freeze:c", "snapshot"),
                     ("thaw:c", "thaw"), ("thaw:b", "thaw"), ("thaw:a", "thaw")]


def test_hooks_report_what_they_return_and_how_long_they_took(calls: list) -> None:
    register(calls, "kv")

    report = hooks.run_freeze(HookContext("snapshot"))

    assert report["kv"]["released"] == "kv"
    assert report["kv"]["seconds"] >= 0
    assert hooks.run_thaw(HookContext("thaw"))["kv"]["seconds"] >= 0


def test_a_failed_freeze_hook_undoes_the_ones_that_completed(calls: list) -> None:
    register(calls, "a", "b", "c", fail="freeze:b")

    with pytest.raises(HookFailed, match="hook 'b' failed: RuntimeError: no b today") as failed:
        hooks.run_freeze(HookContext("snapshot", {"artifact": "x"}))

    assert failed.value.name == "b"
    # a completed and is undone (reason "abort"); b failed halfway and c never ran: neither is undone
    assert calls == [("freeze:a", "snapshot"), ("freeze:b", "snapshot"), ("thaw:a", "abort")]


def test_a_failing_undo_does_not_hide_the_freeze_failure(calls: list) -> None:
    register(calls, "a", "b", fail="freeze:b")
    hooks.on_thaw(lambda ctx: 1 / 0, name="a")

    with pytest.raises(HookFailed, match="hook 'b' failed"):
        hooks.run_freeze(HookContext("snapshot"))


def test_the_first_failing_thaw_hook_stops_the_thaw(calls: list) -> None:
    register(calls, "a", "b", "c", fail="thaw:b")

    with pytest.raises(HookFailed, match="hook 'b' failed: RuntimeError: cannot thaw b"):
        hooks.run_thaw(HookContext("thaw"))

    assert calls == [("thaw:c", "thaw"), ("thaw:b", "thaw")]


def test_registering_a_name_again_replaces_the_hook(calls: list) -> None:
    register(calls, "a", "b")
    hooks.on_freeze(lambda ctx: calls.append(("freeze:a2", ctx.reason)), name="a")

    hooks.run_freeze(HookContext("snapshot"))

    assert hooks.registered() == {"freeze": ["b", "a"], "thaw": ["a", "b"]}
    assert calls == [("freeze:b", "snapshot"), ("freeze:a2", "snapshot")]


def test_decorators_register_under_the_function_name() -> None:
    @hooks.on_freeze
    def drop_caches(ctx: HookContext) -> None:
        return None

    @hooks.on_thaw(name="caches")
    def refill(ctx: HookContext) -> None:
        return None

    assert drop_caches.__name__ == "drop_caches"  # the decorator returns the function itself
    assert hooks.registered() == {
        "freeze": ["test_decorators_register_under_the_function_name.<locals>.drop_caches"],
        "thaw": ["caches"],
    }
