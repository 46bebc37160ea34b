"""The pool as freeze/thaw hooks: release before the GPU lock, reacquire after the unlock.

Registered with :mod:`thaw.worker` when the default pool is first used. The freeze hook
runs in the worker right before thaw locks its GPU state, so released memory is neither
checkpointed nor dumped (probe: the image shrank by exactly the 8 GiB released). The
thaw hook runs after the restore and unlock (and after a failed or --leave-running
snapshot), before the worker resumes, and maps fresh memory at the same addresses, so
tensors and captured CUDA graphs that point there stay valid.

What each hook returns is reported under the hook's name, ``thaw.memory``; the freeze
report goes into the manifest (``memory_released`` takes each entry of "released")::

    freeze: {"released": [{"tag": "kv", "policy": "discard", "bytes": 8589934592,
                           "chunks": 32, "seconds": 0.0056}], "bytes": 8589934592}
    thaw:   {"reacquired": [{..., "poisoned": false}], "bytes": 8589934592}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import thaw.worker
from thaw.memory.pool import Pool

#: one name for both hooks: when a later freeze hook fails, thaw.worker undoes the completed ones
#: by running the thaw hook *of the same name*
HOOK = "thaw.memory"


def install(get_pool: Callable[[], Pool]) -> None:
    """Register the hooks (re-registering replaces them); ``get_pool`` is asked at each run."""

    def release_before_lock(ctx: thaw.worker.HookContext) -> dict[str, Any]:
        return get_pool().release_all()

    def reacquire_after_unlock(ctx: thaw.worker.HookContext) -> dict[str, Any]:
        return get_pool().reacquire_all()

    thaw.worker.on_freeze(release_before_lock, name=HOOK)
    thaw.worker.on_thaw(reacquire_after_unlock, name=HOOK)
