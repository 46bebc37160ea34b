"""Helpers of the GPU memory service's tests: real safetensors files, a real service on memfds.

The memfd stand-in (thaw.gms.device.MemfdBackend) behaves like CUDA VMM memory for
everything the service and its clients do — create, export as an fd, map at a fixed
address, unmap keeping the reservation — so these tests run the real protocol with real
fds between real processes, without a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402


def write_model(path: Path, *, seed: int = 0, layers: int = 2, width: int = 64) -> dict[str, "torch.Tensor"]:
    """A small safetensors file with bf16 matrices, an fp32 vector and a large-ish embedding."""
    g = torch.Generator().manual_seed(seed)
    tensors = {"embed": torch.randn(1000, width, generator=g).to(torch.bfloat16),
               "norm": torch.randn(width, generator=g)}
    for i in range(layers):
        for part, rows in (("q", width), ("k", width // 2), ("v", width // 2)):
            tensors[f"layers.{i}.{part}"] = torch.randn(rows, width, generator=g).to(torch.bfloat16)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return tensors


class ServiceProcess:
    """``thaw gms serve`` on the memfd stand-in, as a real process."""

    def __init__(self, gms_dir: Path, allow: Path, device: str = "memfd:t", extra: tuple[str, ...] = ()) -> None:
        self.gms_dir, self.device = gms_dir, device
        gms_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log = gms_dir.parent / f"gms-{device.replace(':', '-')}.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "thaw", "gms", "serve", "--gpu", device, "--allow",
                                      str(allow), "--dir", str(gms_dir), "--threads", "2", *extra],
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        from thaw.gms import socket_path

        self.sock = socket_path(gms_dir, device)
        deadline = time.monotonic() + 60
        while not self._answers():  # a dead service's socket file may still be there: wait for a live one
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the service did not come up:\n" + self.log.read_text()
            time.sleep(0.02)

    def _answers(self) -> bool:
        import socket

        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(self.sock))
            return True
        except OSError:
            return False
        finally:
            s.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)



def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))
