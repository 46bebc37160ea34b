"""A store wrapper that tells a job what the pipeline does with the store.

The pipeline stages and fetches through the ``Store`` it is given. Wrapping the
agent's store per job lets the job record, durably and before anything is written,
which artifact it is staging (so that recovery after a crash can remove exactly its
debris and nobody else's), and keep the transfer figures the store measured
(throughput for metrics and job results), without the pipeline knowing about jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from thaw.store import Fetched, Manifest, Staged, Store


class JournaledStore(Store):
    def __init__(self, inner: Store, on_stage: Callable[[Staged], None]) -> None:
        self.inner = inner
        self.url = inner.url
        self.signer, self.trust = inner.signer, inner.trust
        self.on_stage = on_stage
        self.stage_stats: dict[str, float] = {}
        self.fetch_stats: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[Staged]:
        with self.inner.stage(name) as staged:
            self.on_stage(staged)
            yield staged
        self.stage_stats = dict(staged.stats)

    def fetch(self, name: str, staging_root: Path, *, expected_digest: str | None = None) -> Fetched:
        fetched = self.inner.fetch(name, staging_root, expected_digest=expected_digest)
        self.fetch_stats = dict(fetched.stats)
        return fetched

    def list(self) -> list[Manifest]:
        return self.inner.list()

    def manifest(self, name: str) -> Manifest:
        return self.inner.manifest(name)

    def verify(self, name: str, *, expected_digest: str | None = None) -> Manifest:
        return self.inner.verify(name, expected_digest=expected_digest)

    def check_complete(self, name: str) -> Manifest:
        return self.inner.check_complete(name)

    def delete(self, name: str) -> str:
        return self.inner.delete(name)

    def exists(self, name: str) -> bool:
        return self.inner.exists(name)

    def abandon(self, name: str, artifact_id: str, staged_dir: Path) -> None:
        self.inner.abandon(name, artifact_id, staged_dir)

    def _staging_dir(self, name: str, artifact_id: str) -> Path:  # never called: stage() is delegated whole
        raise NotImplementedError

    def _publish(self, staged: Staged) -> Manifest:  # never called: stage() is delegated whole
        raise NotImplementedError

    def _fetch(self, manifest: Manifest, staging_root: Path) -> Fetched:  # never called: fetch() is delegated whole
        raise NotImplementedError

    def _verify(self, manifest: Manifest) -> None:  # never called: verify() is delegated whole
        raise NotImplementedError

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)
