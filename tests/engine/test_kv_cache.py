"""The paged KV cache: block accounting."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from thaw.engine.graphs import _widths
from thaw.engine.kv_cache import NULL_BLOCK, BlockAllocator, KVCache, OutOfBlocks
from thaw.engine.weights import read_config


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

