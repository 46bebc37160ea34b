"""What a crash leaves on this node and in the store, removed: staging debris, stale uploads, old instances.

Every ``thaw`` command that opens a store and every agent start call :func:`sweep`
without an age: it removes exactly the entries whose owner died (store/owner.py),
once no process (CRIU) uses them. ``thaw gc`` adds an age: staging of other nodes or
earlier boots, multipart uploads nobody finished, and the directories of instances gone
for longer than that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from thaw.config import Settings
from thaw.pipeline import instances
from thaw.store import Store
from thaw.store import owner


@dataclass
class Swept:
    staging: list[str] = field(default_factory=list)  # node-local staging entries removed
    store_entries: int = 0  # store staging entries, uploads and stale objects removed
    instances: list[str] = field(default_factory=list)  # instance directories pruned

    @property
    def total(self) -> int:
        return len(self.staging) + self.store_entries + len(self.instances)


def sweep(settings: Settings, store: Store | None = None, *, older_than_s: float | None = None) -> Swept:
    """Remove debris of crashed operations (see the module docstring); with ``older_than_s`` what ``thaw gc`` does."""
    swept = Swept(staging=owner.sweep(settings.staging_dir, older_than_s))
    if store is not None:
        swept.store_entries = store.sweep(older_than_s)
    if older_than_s is not None:
        swept.instances = [i.id for i in instances.prune(settings, older_than_s)]
    return swept
