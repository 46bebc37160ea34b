"""The pool's policy and rollback, against the fake driver (issue #4's CPU acceptance)."""

from __future__ import annotations

import threading

import pytest

from thaw.errors import ConfigError, CudaError
from thaw.memory.pool import POISON_PATTERN, Policy, Pool
from thaw.memory.testing import FRESH_BYTE, FakeDriver

MIB = 1 << 20


def fill(driver: FakeDriver, va: int, size: int, seed: int = 1) -> bytes:
    pattern = bytes(range(seed % 251, 251)) + bytes(range(seed % 251))
    data = (pattern * (size // 251 + 1))[:size]
    driver.write(va, data)
    return data


def clean(driver: FakeDriver) -> bool:
    """Nothing physical is left and nothing is mapped."""
    return driver.physical_bytes() == 0 and not driver.mappings


# --- allocation ---------------------------------------------------------------------------------------


def test_an_allocation_is_rounded_up_and_split_into_chunks(pool: Pool, driver: FakeDriver) -> None:
    va = pool.allocate("kv", 30 * MIB + 1, device=0)
    stats = pool.stats()["kv"]
    assert stats["bytes"] == 32 * MIB and stats["held_bytes"] == 32 * MIB
    assert stats["chunks"] == 4 and stats["state"] == "held" and stats["policy"] == "discard"
    assert driver.physical_bytes() == 32 * MIB
    assert set(driver.mappings) == {va + i * 8 * MIB for i in range(4)}
    assert driver.accessible == set(driver.mappings)
    driver.write(va + 32 * MIB - 4, b"last")  # the whole rounded range is usable


def test_a_failed_allocation_leaves_nothing_behind(pool: Pool, driver: FakeDriver) -> None:
    driver.fail("cuMemCreate", after=2)
    with pytest.raises(CudaError) as err:
        pool.allocate("kv", 32 * MIB, device=0)
    assert "allocating 32.0 MiB in tag 'kv': chunk 2 of 4" in str(err.value)
    assert "chunks 0..1 released again" in str(err.value)
    assert clean(driver) and not driver.reservations
    assert pool.stats()["kv"]["allocations"] == 0


def test_free_gives_everything_back(pool: Pool, driver: FakeDriver) -> None:
    va = pool.allocate("kv", 16 * MIB, device=0)
    pool.free(va)
    assert clean(driver) and not driver.reservations
    with pytest.raises(ConfigError, match="not allocated by thaw.memory"):
        pool.free(va)


def test_free_of_a_released_allocation_only_drops_the_range(pool: Pool, driver: FakeDriver) -> None:
    va = pool.allocate("kv", 16 * MIB, device=0)
    pool.release("kv")
    pool.free(va)  # torch's empty_cache() may free a released segment
    assert clean(driver) and not driver.reservations


def test_no_allocation_in_a_released_tag(pool: Pool) -> None:
    pool.allocate("kv", 2 * MIB, device=0)
    pool.release("kv")
    with pytest.raises(ConfigError, match="'kv' is released"):
        pool.allocate("kv", 2 * MIB, device=0)


# --- release and reacquire -------------------------------------------------------------------------------


def test_release_drops_memory_keeps_the_address_and_reacquire_maps_there_again(pool: Pool, driver: FakeDriver) -> None:
    va = pool.allocate("kv", 32 * MIB, device=0)
    report = pool.release("kv")
    assert report["tag"] == "kv" and report["bytes"] == 32 * MIB and report["chunks"] == 4
    assert report["policy"] == "discard" and report["seconds"] >= 0
    assert clean(driver)
    assert va in driver.reservations, "the virtual range stays reserved"
    assert pool.stats()["kv"]["state"] == "released"
    with pytest.raises(CudaError, match="not mapped"):
        driver.read(va, 1)
    again = pool.reacquire("kv")
    assert again["bytes"] == 32 * MIB and again["poisoned"] is False
    assert set(driver.mappings) == {va + i * 8 * MIB for i in range(4)}
    assert driver.read(va, 4) == bytes([FRESH_BYTE]) * 4, "discard: fresh memory, old contents gone"


def test_release_waits_for_the_gpu_before_unmapping(pool: Pool, driver: FakeDriver) -> None:
    pool.allocate("kv", 8 * MIB, device=0)
    driver.calls.clear()
    pool.release("kv")
    assert driver.calls.index("cuCtxSynchronize") < driver.calls.index("cuMemUnmap")


def test_release_and_reacquire_are_idempotent(pool: Pool, driver: FakeDriver) -> None:
    pool.allocate("kv", 8 * MIB, device=0)
    assert pool.reacquire("kv")["bytes"] == 0
    pool.release("kv")
    assert pool.release("kv")["bytes"] == 0
    pool.reacquire("kv")
    assert pool.reacquire("kv")["bytes"] == 0


def test_backup_policy_keeps_the_contents(pool: Pool, driver: FakeDriver) -> None:
    pool.set_policy("state", "backup")
    va = pool.allocate("state", 20 * MIB, device=0)
    data = fill(driver, va, 20 * MIB)
    pool.release("state")
    assert clean(driver)
    assert pool.stats()["state"]["backup_bytes"] == 20 * MIB
    pool.reacquire("state")
    assert driver.read(va, 20 * MIB) == data
    assert pool.stats()["state"]["backup_bytes"] == 0, "the host copy is dropped once restored"


def test_poison_fills_reacquired_discard_memory_with_nans(driver: FakeDriver) -> None:
    pool = Pool(driver, chunk_bytes=8 * MIB, poison=POISON_PATTERN)
    va = pool.allocate("kv", 16 * MIB, device=0)
    pool.release("kv")
    assert pool.reacquire("kv")["poisoned"] is True
    import struct

    (as_f32,) = struct.unpack("<f", driver.read(va + 12 * MIB, 4))
    bf16_bits = int.from_bytes(driver.read(va, 2), "little")
    assert as_f32 != as_f32, "fp32 NaN"
    assert (bf16_bits >> 7) & 0xFF == 0xFF and bf16_bits & 0x7F, "bf16 NaN"


def test_poison_never_touches_backup_contents(driver: FakeDriver) -> None:
    pool = Pool(driver, poison=POISON_PATTERN)
    pool.set_policy("state", Policy.BACKUP)
    va = pool.allocate("state", 2 * MIB, device=0)
    data = fill(driver, va, 2 * MIB)
    pool.release("state")
    pool.reacquire("state")
    assert driver.read(va, 2 * MIB) == data


# --- partial failures roll back ------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["cuMemCreate", "cuMemMap", "cuMemSetAccess"])
def test_reacquire_failing_at_chunk_k_releases_chunks_before_it_again(pool: Pool, driver: FakeDriver, call: str) -> None:
    va = pool.allocate("kv", 32 * MIB, device=0)
    pool.release("kv")
    driver.fail(call, after=2, code=2)
    with pytest.raises(CudaError) as err:
        pool.reacquire("kv")
    text = str(err.value)
    assert err.value.call == call and err.value.name == "CUDA_ERROR_OUT_OF_MEMORY"
    assert f"reacquiring tag 'kv': chunk 2 of 4 (0x{va + 16 * MIB:x}, 8.0 MiB) failed" in text
    assert "chunks 0..1 released again" in text
    assert clean(driver), "no chunk stays mapped, no handle leaks (chunk 2's own included)"
    assert pool.stats()["kv"]["state"] == "released"
    pool.reacquire("kv")  # the next attempt succeeds
    assert pool.stats()["kv"]["state"] == "held" and driver.physical_bytes() == 32 * MIB


def test_reacquire_failing_at_the_first_chunk_says_nothing_was_mapped(pool: Pool, driver: FakeDriver) -> None:
    pool.allocate("kv", 16 * MIB, device=0)
    pool.release("kv")
    driver.fail("cuMemCreate")
    with pytest.raises(CudaError, match="chunk 0 of 2.*no chunk was mapped by this call"):
        pool.reacquire("kv")


def test_a_failed_backup_restore_leaves_the_tag_released_with_its_backup(pool: Pool, driver: FakeDriver) -> None:
    pool.set_policy("state", "backup")
    va = pool.allocate("state", 16 * MIB, device=0)
    data = fill(driver, va, 16 * MIB)
    pool.release("state")
    driver.fail("cuMemcpyHtoD_v2", after=1)
    with pytest.raises(CudaError, match="restoring the contents of tag 'state' failed; the tag was released again"):
        pool.reacquire("state")
    assert clean(driver) and pool.stats()["state"]["backup_bytes"] == 16 * MIB
    pool.reacquire("state")
    assert driver.read(va, 16 * MIB) == data


def test_a_failed_backup_copy_releases_nothing(pool: Pool, driver: FakeDriver) -> None:
    pool.set_policy("state", "backup")
    pool.allocate("state", 16 * MIB, device=0)
    driver.fail("cuMemcpyDtoH_v2", after=1)
    with pytest.raises(CudaError, match="backing up tag 'state': chunk 1 of 2.*nothing was released"):
        pool.release("state")
    assert driver.physical_bytes() == 16 * MIB and pool.stats()["state"]["state"] == "held"
    assert pool.stats()["state"]["backup_bytes"] == 0


@pytest.mark.parametrize("policy", ["discard", "backup"])
def test_release_failing_at_chunk_k_maps_the_tag_back(pool: Pool, driver: FakeDriver, policy: str) -> None:
    pool.set_policy("kv", policy)
    va = pool.allocate("kv", 32 * MIB, device=0)
    data = fill(driver, va, 32 * MIB)
    driver.fail("cuMemUnmap", after=2)
    with pytest.raises(CudaError) as err:
        pool.release("kv")
    text = str(err.value)
    assert "releasing tag 'kv': chunk 2 of 4" in text and "chunks 0..1 mapped again" in text
    assert pool.stats()["kv"]["state"] == "held" and driver.physical_bytes() == 32 * MIB
    if policy == "backup":
        assert "restored from the host backup" in text
        assert driver.read(va, 32 * MIB) == data
    else:
        assert "contents lost (discard)" in text
        assert driver.read(va + 16 * MIB, 8 * MIB) == data[16 * MIB:24 * MIB], "chunk 2 was never released"
    assert pool.stats()["kv"]["backup_bytes"] == 0


def test_a_failed_cumemrelease_keeps_that_chunks_memory_and_maps_it_back(pool: Pool, driver: FakeDriver) -> None:
    va = pool.allocate("kv", 16 * MIB, device=0)
    data = fill(driver, va, 16 * MIB)
    driver.fail("cuMemRelease", after=1)  # chunk 1 is unmapped, its handle survives
    with pytest.raises(CudaError, match="chunk 1 of 2.*chunk 0 mapped again"):
        pool.release("kv")
    assert driver.read(va + 8 * MIB, 8 * MIB) == data[8 * MIB:], "the same handle, mapped again: contents kept"
    assert driver.physical_bytes() == 16 * MIB


def test_release_all_is_all_or_nothing(pool: Pool, driver: FakeDriver) -> None:
    pool.allocate("a", 8 * MIB, device=0)
    pool.allocate("b", 8 * MIB, device=0)
    driver.fail("cuMemUnmap", after=1)  # a's chunk unmaps, b's fails
    with pytest.raises(CudaError, match="tag 'b'"):
        pool.release_all()
    assert {t: s["state"] for t, s in pool.stats().items()} == {"a": "held", "b": "held"}
    report = pool.release_all()
    assert [r["tag"] for r in report["released"]] == ["a", "b"] and report["bytes"] == 16 * MIB


def test_reacquire_all_is_all_or_nothing(pool: Pool, driver: FakeDriver) -> None:
    pool.allocate("a", 8 * MIB, device=0)
    pool.allocate("b", 8 * MIB, device=0)
    pool.release_all()
    driver.fail("cuMemCreate", after=1)
    with pytest.raises(CudaError, match="tag 'b'"):
        pool.reacquire_all()
    assert {t: s["state"] for t, s in pool.stats().items()} == {"a": "released", "b": "released"}
    assert clean(driver)
    assert pool.reacquire_all()["bytes"] == 16 * MIB


def test_out_of_memory_on_reacquire_is_a_clean_error(driver: FakeDriver) -> None:
    pool = Pool(driver, chunk_bytes=8 * MIB)
    pool.allocate("kv", 32 * MIB, device=0)
    pool.release("kv")
    driver.capacity = 20 * MIB  # someone else took the GPU meanwhile
    with pytest.raises(CudaError, match="CUDA_ERROR_OUT_OF_MEMORY.*chunk 2 of 4.*chunks 0..1 released again"):
        pool.reacquire("kv")
    assert clean(driver)


# --- policy and bookkeeping ---------------------------------------------------------------------------


def test_policies_are_validated(pool: Pool) -> None:
    with pytest.raises(ConfigError, match="'keep' is not one of"):
        pool.set_policy("kv", "keep")
    with pytest.raises(ConfigError, match="chunk_bytes"):
        pool.set_policy("kv", chunk_bytes=0)
    with pytest.raises(ConfigError, match="tag"):
        pool.tag("")
    with pytest.raises(ConfigError, match="no tag 'nope'"):
        pool.release("nope")


def test_policy_cannot_change_while_released(pool: Pool) -> None:
    pool.allocate("kv", 2 * MIB, device=0)
    pool.release("kv")
    with pytest.raises(ConfigError, match="reacquire it before changing its policy"):
        pool.set_policy("kv", "backup")
    pool.set_policy("kv", "discard")  # no change is fine


def test_chunk_size_is_per_tag(pool: Pool) -> None:
    pool.set_policy("big", chunk_bytes=16 * MIB)
    pool.allocate("big", 32 * MIB, device=0)
    pool.allocate("small", 32 * MIB, device=0)
    assert pool.stats()["big"]["chunks"] == 2 and pool.stats()["small"]["chunks"] == 4


def test_chunks_never_go_below_the_granularity(driver: FakeDriver) -> None:
    pool = Pool(driver, chunk_bytes=1)
    pool.allocate("kv", 6 * MIB, device=0)
    assert pool.stats()["kv"]["chunks"] == 3


def test_tags_and_stats(pool: Pool) -> None:
    pool.allocate("kv", 2 * MIB, device=0)
    pool.set_policy("state", "backup")
    assert pool.tags() == ["kv", "state"]
    assert pool.stats()["state"] == {"policy": "backup", "state": "empty", "bytes": 0, "held_bytes": 0,
                                     "allocations": 0, "chunks": 0, "backup_bytes": 0, "devices": []}


def test_allocations_from_many_threads_are_all_recorded(pool: Pool, driver: FakeDriver) -> None:
    vas: list[int] = []

    def work() -> None:
        for _ in range(10):
            vas.append(pool.allocate("kv", 2 * MIB, device=0))

    threads = [threading.Thread(target=work) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(set(vas)) == 80 and pool.stats()["kv"]["allocations"] == 80
    pool.release("kv")
    assert clean(driver)


def test_a_failed_reservation_names_the_tag(pool: Pool, driver: FakeDriver) -> None:
    driver.fail("cuMemAddressReserve")
    with pytest.raises(CudaError, match="cuMemAddressReserve failed.*reserving 4.0 MiB of addresses for tag 'kv'"):
        pool.allocate("kv", 4 * MIB, device=0)
    assert clean(driver) and not driver.reservations
