"""``python -m thaw.bench.h2d NBYTES``: pinned host → device copy bandwidth, one JSON line.

Run in a child process by :func:`thaw.bench.host.h2d_bandwidth`: the CUDA context it needs
goes away with it. Prints ``{"bytes_per_s": null}`` where torch or a GPU is missing.
"""

from __future__ import annotations

import json
import sys


def measure(nbytes: int, repeats: int = 5) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst.copy_(src, non_blocking=True)  # the first copy pays for lazy set-up: not timed
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = 0.0
    for _ in range(repeats):
        start.record()
        dst.copy_(src, non_blocking=True)
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1000
        best = max(best, nbytes / seconds)
    return best  # the best of a few: the floor is what the link can do, not what a noisy neighbour left


if __name__ == "__main__":
    print(json.dumps({"bytes_per_s": measure(int(sys.argv[1]) if len(sys.argv) > 1 else 1 << 30)}))
