"""The worker SDK: what an inference worker calls to be snapshotted and restored by thaw.

Light by design: it imports only the standard library (no torch, no thaw agent), so
that importing it costs nothing in a worker's start-up::

    import thaw.worker

    @thaw.worker.on_freeze
    def drop_caches(ctx): ...

    outcome = thaw.worker.quiesce(name="llm", canary=run_canary)
    if outcome.thawed:
        print("restored from", outcome.info["artifact"])
"""

from thaw.worker.hooks import HookContext, on_freeze, on_frozen, on_thaw
from thaw.worker.quiesce import Kind, Outcome, control_dir, managed, quiesce

__all__ = ["HookContext", "Kind", "Outcome", "control_dir", "managed", "on_freeze", "on_frozen", "on_thaw", "quiesce"]
