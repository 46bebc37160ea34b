"""The worker SDK's public API, pinned: what workers import from ``thaw.worker`` changes only on purpose."""

from __future__ import annotations

import thaw.worker


def test_the_public_api_is_pinned() -> None:
    assert sorted(thaw.worker.__all__) == [
        "HookContext", "Kind", "Outcome", "control_dir", "managed", "on_freeze", "on_frozen", "on_thaw", "quiesce",
    ]
    for name in thaw.worker.__all__:
        assert getattr(thaw.worker, name) is not None, name
