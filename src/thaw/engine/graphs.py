"""Decode steps captured as CUDA graphs, one per (batch size, context width).

A decode step launches ~15 kernels per layer; replaying a captured graph launches them
all at once, which is what makes small-batch decode fast — and what makes a server's
cold start slow (capture happens at start-up), so a snapshot keeps the graphs.

Each graph reads its inputs from static device buffers and writes its logits to a
static output. A batch of ``n`` sequences runs on the smallest captured batch size
``b >= n``, the rows ``n..b`` padded with a harmless sequence (token 0 at position 0,
writing to and reading from the null block). The context width ``w`` — how many blocks
of each block table the step gathers — is bucketed too (powers of two up to the
longest table), so that short contexts do not pay for the longest one.
"""

from __future__ import annotations

import torch

from thaw.engine.kv_cache import NULL_BLOCK, KVCache
from thaw.engine.model import DecodeInputs, Qwen3

MIN_WIDTH = 16  # blocks; the smallest context bucket (256 tokens at block_size 16)


class DecodeGraphs:
    def __init__(self, model: Qwen3, kv: KVCache, *, batch_sizes: list[int], max_blocks: int,
                 pool: object | None = None) -> None:
        self.model = model
        self.kv = kv
        self.batch_sizes = sorted(set(batch_sizes))
        self.widths = _widths(max_blocks)
        device = model.device
        bmax = self.batch_sizes[-1]
        # rows: token, position, slot, context length — one buffer, so a step needs one host-to-device copy
        self.rows = torch.zeros(4, bmax, dtype=torch.int64, device=device)
        self.tables = torch.full((bmax, max_blocks), NULL_BLOCK, dtype=torch.int64, device=device)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        # ``pool``: a MemPool id whose memory thaw releases before a snapshot (activations are scratch: every
        # replay rewrites them from the static inputs, the KV cache and the weights); else torch's own pool
        self.pool = pool if pool is not None else torch.cuda.graph_pool_handle()
        # a thaw.memory pool maps new segments with driver calls, which strict capture mode forbids
        self.capture_mode = "relaxed" if pool is not None else "global"

    @property
    def max_batch(self) -> int:
        return self.batch_sizes[-1]

    def capture(self) -> int:
        """Capture every shape, largest first (so that smaller ones reuse its pool memory). Returns how many."""
        self._pad(0, self.max_batch)
        shapes = sorted(((b, w) for b in self.batch_sizes for w in self.widths), key=lambda s: s[0] * s[1],
                        reverse=True)
        # One side stream for every warm-up: cuBLAS keeps a workspace (32 MiB by default) per stream it
        # ever ran on, for the life of the process — a stream per shape left 20 of them in each snapshot.
        side = torch.cuda.Stream()
        for b, w in shapes:
            # run once outside capture so that lazy initialisation (cuBLAS handles, kernel choice) is not captured
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._forward(b, w)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode=self.capture_mode):
                logits = self._forward(b, w)
            self.graphs[(b, w)] = (graph, logits)
        torch.cuda.synchronize()
        return len(shapes)

    def shape_for(self, n: int, width: int) -> tuple[int, int] | None:
        """The captured (batch, width) that fits ``n`` sequences needing ``width`` blocks, or None."""
        b = next((b for b in self.batch_sizes if b >= n), None)
        w = next((w for w in self.widths if w >= width), None)
        return None if b is None or w is None else (b, w)

    def run(self, shape: tuple[int, int], rows: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
        """Replay the graph of ``shape`` on ``rows`` [4, n] and ``tables`` [n, <=w] (host tensors); logits [n, V]."""
        b, w = shape
        n = rows.shape[1]
        self.rows[:, :n].copy_(rows)
        self.tables[:n, : tables.shape[1]].copy_(tables)
        self.tables[:n, tables.shape[1]: w].fill_(NULL_BLOCK)
        self._pad(n, b)
        graph, logits = self.graphs[shape]
        graph.replay()
        return logits[:n]

    def _pad(self, start: int, stop: int) -> None:
        if start >= stop:
            return
        self.rows[:3, start:stop] = 0  # token 0 at position 0, written to slot 0 of the null block
        self.rows[3, start:stop] = 1  # attending to that one slot
        self.tables[start:stop] = NULL_BLOCK

    def _forward(self, b: int, w: int) -> torch.Tensor:
        tokens, positions, slots, context_lens = self.rows[:, :b]
        inputs = DecodeInputs(block_tables=self.tables[:b, :w], context_lens=context_lens)
        return self.model.decode(tokens, positions, slots, self.kv, inputs)


def _widths(max_blocks: int) -> list[int]:
    widths = []
    w = min(MIN_WIDTH, max_blocks)
    while w < max_blocks:
        widths.append(w)
        w *= 2
    return [*widths, max_blocks]
