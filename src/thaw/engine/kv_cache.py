"""The paged KV cache: one tensor of fixed-size blocks, and the allocator that hands them out.

Layout: ``[layers, 2 (K, V), blocks, block_size, kv_heads, head_dim]``, one allocation.
A sequence owns a list of blocks (its block table); token ``p`` of a sequence lives at
slot ``table[p // block_size] * block_size + p % block_size``.

Block 0 is never handed out: it is the *null block* that padded rows of a CUDA-graph
batch write to and read from, so padding never touches a live sequence.

On the GPU the tensor is allocated inside ``thaw.memory.region("kv")``: thaw's VMM pool
backs it, so that thaw can release its physical memory before a snapshot (the
artifact does not carry tens of GB of cache) and map it again, at the same virtual
addresses — which the captured CUDA graphs point at — after a restore. The contents
do not survive that, so after a thaw every block is free again (``BlockAllocator.reset``)
and zeroed (``KVCache.clear``).
"""

from __future__ import annotations


import torch

from thaw.engine.config import ModelConfig

NULL_BLOCK = 0
KV_REGION = "kv"


class OutOfBlocks(Exception):
    """Not enough free blocks for the request (the scheduler waits for some to be freed)."""


class BlockAllocator:
    """Hands out block ids 1..num_blocks-1; block 0 is the null block."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 2:
            raise ValueError(f"a KV cache needs at least 2 blocks, got {num_blocks}")
        self.num_blocks = num_blocks
        self._free: list[int] = []
        self.reset()

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def used(self) -> int:
        return self.num_blocks - 1 - len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise OutOfBlocks(f"{n} blocks wanted, {len(self._free)} free")
        return [self._free.pop() for _ in range(n)]

    def release(self, blocks: list[int]) -> None:
        self._free.extend(reversed(blocks))

    def reset(self) -> None:
        """Every block free (after a thaw the cache's contents are gone)."""
        self._free = list(range(self.num_blocks - 1, NULL_BLOCK, -1))  # pop from the end: low ids first


class KVCache:
    """The cache tensor of one model on one device."""

    def __init__(self, config: ModelConfig, *, num_blocks: int, block_size: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        shape = (config.num_layers, 2, num_blocks, block_size, config.num_kv_heads, config.head_dim)
        if device.type == "cuda":
            import thaw.memory  # the GPU path only: a CPU engine never loads the VMM pool

            with thaw.memory.region(KV_REGION):
                self.data = torch.zeros(shape, dtype=dtype, device=device)
        else:
            self.data = torch.zeros(shape, dtype=dtype, device=device)

    def clear(self) -> None:
        """Zero every block.

        Needed after a thaw: the re-mapped memory holds whatever the driver gives us, and
        a decode step multiplies masked-out slots (the tail of a sequence's last block,
        the null block) by probability 0 — which yields NaN if the slot holds a NaN.
        """
        self.data.zero_()

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, V) of layer ``i``, each [blocks, block_size, kv_heads, head_dim]."""
        return self.data[i, 0], self.data[i, 1]

    @staticmethod
    def bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        return config.kv_bytes_per_token(itemsize) * block_size
