"""The service's rules, in-process on the memfd stand-in: loading, digests, holds, eviction, what it refuses."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from gms_helpers import torch, write_model

from thaw.errors import ConfigError, GmsError
from thaw.gms import libc
from thaw.gms.device import MemfdBackend
from thaw.gms.models import WeightFile, WeightSpec
from thaw.gms.plan import describe
from thaw.gms.service import WeightService
from thaw.store.digest import describe_files

MIB = 1 << 20


def spec_of(*paths: Path, **kw: object) -> WeightSpec:
    return WeightSpec(files=describe([str(p) for p in paths]), **kw)  # type: ignore[arg-type]


@pytest.fixture
def svc(model_dir: Path):  # type: ignore[no-untyped-def]
    service = WeightService(MemfdBackend("t"), allow=[model_dir], threads=2)
    yield service
    service.close()


def read_tensor(fds: list[int], chunks: list[int], offset: int, nbytes: int) -> bytes:
    """Map the chunks back to back (as a worker does) and read ``nbytes`` at ``offset``."""
    total = sum(chunks)
    base = libc.reserve(total)
    try:
        at = 0
        for fd, size in zip(fds, chunks):
            libc.map_shared(base + at, size, fd, writable=False)
            at += size
        import ctypes

        return ctypes.string_at(base + offset, nbytes)
    finally:
        libc.munmap(base, total)


def test_a_loaded_set_holds_every_tensor_at_its_slot_and_the_store_digests(svc: WeightService, model_dir: Path) -> None:
    path = model_dir / "m.safetensors"
    tensors = write_model(path)
    layout, fds = svc.acquire(spec_of(path, order=["layers.0.q"]), holder=1)
    try:
        assert layout.tensors[0].name == "layers.0.q"
        for slot in layout.tensors:
            expected = tensors[slot.name].contiguous().view(torch.uint8).numpy().tobytes()
            assert read_tensor(fds, layout.chunks, slot.offset, slot.nbytes) == expected, slot.name
        # the file digest is the artifact store's digest of the same file: one definition of "same bytes"
        assert layout.files[0].digest == describe_files(model_dir, ["m.safetensors"])[0].digest
        assert layout.spec.digest == layout.digest and layout.device == "memfd:t"
    finally:
        for fd in fds:
            os.close(fd)


def test_a_held_set_is_never_evicted_and_a_released_one_is(svc: WeightService, model_dir: Path) -> None:
    layout, fds = svc.acquire(spec_of(model_dir / "m.safetensors"), holder=7)
    for fd in fds:
        os.close(fd)
    with pytest.raises(GmsError, match="mapped by 1 worker") as busy:
        svc.evict(layout.key)
    assert busy.value.code == "busy"
    svc.release(7)
    assert svc.evict(layout.key).key == layout.key
    assert svc.status().sets == []


def test_the_budget_evicts_the_least_recently_used_unheld_set(model_dir: Path) -> None:
    a, b, c = (model_dir / f"{n}.safetensors" for n in "abc")
    for i, p in enumerate((a, b, c)):
        write_model(p, seed=i + 1)
    svc = WeightService(MemfdBackend("t"), allow=[model_dir], threads=2, budget_bytes=4 * MIB)  # two 2-MiB sets
    try:
        svc.prefetch(spec_of(a), wait=True)
        svc.prefetch(spec_of(b), wait=True)
        svc.prefetch(spec_of(a), wait=True)  # a is now the most recently used
        svc.prefetch(spec_of(c), wait=True)  # needs room: b goes
        resident = {s.files[0] for s in svc.status().sets}
        assert resident == {str(a), str(c)}
        layout_a, fds = svc.acquire(spec_of(a), holder=1)
        layout_c, fds_c = svc.acquire(spec_of(c), holder=2)
        for fd in fds + fds_c:
            os.close(fd)
        with pytest.raises(GmsError, match="every resident set is mapped") as full:
            svc.prefetch(spec_of(b), wait=True)
        assert full.value.code == "out_of_memory"
        assert {s.files[0] for s in svc.status().sets} == {str(a), str(c)}  # nothing half-loaded stays
    finally:
        svc.close()


def test_a_digest_mismatch_is_refused_before_anything_is_handed_out(svc: WeightService, model_dir: Path) -> None:
    path = model_dir / "m.safetensors"
    with pytest.raises(GmsError, match="expects xxh3_128:00") as whole:
        svc.acquire(spec_of(path).model_copy(update={"digest": "xxh3_128:" + "0" * 32}), holder=1)
    assert whole.value.code == "integrity"
    wrong = WeightFile(path=str(path), size=path.stat().st_size, digest="xxh3_128:" + "1" * 32)
    with pytest.raises(GmsError, match=f"{path} does not match") as one:
        svc.acquire(WeightSpec(files=[wrong]), holder=1)
    assert one.value.code == "integrity"
    assert svc.status().sets == [] and svc.status().resident_bytes == 0


def test_files_outside_the_allowed_roots_are_refused_even_through_a_symlink(svc: WeightService, model_dir: Path,
                                                                           tmp_path: Path) -> None:
    outside = tmp_path / "secret.safetensors"
    write_model(outside)
    with pytest.raises(GmsError, match="outside the directories") as err:
        svc.prefetch(spec_of(outside))
    assert err.value.code == "forbidden"
    (model_dir / "link.safetensors").symlink_to(outside)
    with pytest.raises(GmsError, match="outside the directories"):
        svc.prefetch(spec_of(model_dir / "link.safetensors"))


def test_a_file_that_changed_since_it_was_described_is_refused(svc: WeightService, model_dir: Path) -> None:
    path = model_dir / "m.safetensors"
    spec = spec_of(path)
    with open(path, "ab") as f:
        f.write(b"\0" * 10)
    with pytest.raises(ConfigError, match="it changed"):
        svc.prefetch(spec, wait=True)


def test_the_same_bytes_under_another_path_share_one_copy(svc: WeightService, model_dir: Path) -> None:
    shutil.copy(model_dir / "m.safetensors", model_dir / "copy.safetensors")
    first, fds1 = svc.acquire(spec_of(model_dir / "m.safetensors"), holder=1)
    second, fds2 = svc.acquire(spec_of(model_dir / "copy.safetensors"), holder=2)
    try:
        assert first.key == second.key
        assert os.fstat(fds1[0]).st_ino == os.fstat(fds2[0]).st_ino  # the same memory, exported twice
        assert svc.status().resident_bytes == sum(first.chunks)
    finally:
        for fd in fds1 + fds2:
            os.close(fd)


def test_concurrent_requests_for_one_set_load_it_once(svc: WeightService, model_dir: Path) -> None:
    spec = spec_of(model_dir / "m.safetensors")
    keys: list[str] = []

    def ask(holder: int) -> None:
        layout, fds = svc.acquire(spec, holder=holder)
        for fd in fds:
            os.close(fd)
        keys.append(layout.key)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys) == 6
    assert len(svc.status().sets) == 1 and svc.status().sets[0].holders == 6


def test_a_digest_finds_the_set_under_other_paths(svc: WeightService, model_dir: Path) -> None:
    first = svc.prefetch(spec_of(model_dir / "m.safetensors"), wait=True)
    shutil.copy(model_dir / "m.safetensors", model_dir / "elsewhere.safetensors")
    again = svc.prefetch(spec_of(model_dir / "elsewhere.safetensors").model_copy(update={"digest": first.digest}))
    assert again.key == first.key and again.state == "ready"
