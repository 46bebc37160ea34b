"""The paged KV cache: block accounting, and its dependency on thaw.memory on the GPU."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from thaw.engine.graphs import _widths
from thaw.engine.kv_cache import NULL_BLOCK, BlockAllocator, KVCache, OutOfBlocks
from thaw.engine.weights import read_config
from thaw.errors import HostError


def test_the_null_block_is_never_handed_out_and_reset_frees_everything() -> None:
    alloc = BlockAllocator(6)
    got = alloc.allocate(5)
    assert sorted(got) == [1, 2, 3, 4, 5] and NULL_BLOCK not in got
    assert alloc.free == 0 and alloc.used == 5
    with pytest.raises(OutOfBlocks):
        alloc.allocate(1)
    alloc.release(got[:2])
    assert alloc.free == 2
    alloc.reset()
    assert alloc.free == 5 and alloc.used == 0


def test_cache_layout_and_clear(tiny_weights: Path) -> None:
    config = read_config(tiny_weights)
    kv = KVCache(config, num_blocks=8, block_size=4, dtype=torch.float32, device=torch.device("cpu"))
    k, v = kv.layer(1)
    assert k.shape == v.shape == (8, 4, config.num_kv_heads, config.head_dim)
    assert kv.nbytes == KVCache.bytes_per_block(config, 4, torch.float32) * 8
    kv.data.fill_(float("nan"))
    kv.clear()
    assert torch.count_nonzero(kv.data) == 0


def test_context_buckets_cover_every_width_up_to_the_longest_table() -> None:
    assert _widths(256) == [16, 32, 64, 128, 256]
    assert _widths(100) == [16, 32, 64, 100]
    assert _widths(8) == [8]


def test_a_gpu_cache_without_thaw_memory_fails_with_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                                   tiny_weights: Path) -> None:
    real = importlib.import_module

    def without_thaw_memory(name: str, *a, **k):  # type: ignore[no-untyped-def]
        if name == "thaw.memory":
            raise ImportError("No module named 'thaw.memory'")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", without_thaw_memory)
    # fails before any CUDA call, so this runs on machines without a GPU too
    with pytest.raises(HostError, match="thaw.memory is not importable"):
        KVCache(read_config(tiny_weights), num_blocks=8, block_size=16, dtype=torch.bfloat16,
                device=torch.device("cuda"))
