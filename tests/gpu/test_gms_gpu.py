"""The GPU memory service on a real GPU: exportable VMM memory filled by the loader, imported read-only by a worker.

The engine's snapshot/restore with mapped weights runs in bench/gpu_restore.py (canary-exact
answers, image sizes, a restore onto the other GPU); this checks the mechanism itself:
every tensor bit-identical to safetensors' own load, mapped read-only, unmapped (keeping
the addresses) and mapped again at the same addresses from the service.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def test_mapped_weights_are_bit_identical_read_only_and_come_back_at_the_same_addresses(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    import thaw.memory.weights as weights
    from thaw.cuda import devices
    from thaw.gms import Client, socket_path

    models = tmp_path / "models"
    models.mkdir()
    g = torch.Generator(device="cuda").manual_seed(0)
    tensors = {f"w{i}": torch.randn(4096, 4096, generator=g, device="cuda").to(torch.bfloat16).cpu()
               for i in range(24)}  # 768 MiB in 2 files: several loader blocks and copies per tensor
    tensors["bias"] = torch.randn(4096, generator=g, device="cuda").cpu()
    files = [models / "a.safetensors", models / "b.safetensors"]
    names = sorted(tensors)
    save_file({k: tensors[k] for k in names[::2]}, str(files[0]))
    save_file({k: tensors[k] for k in names[1::2]}, str(files[1]))

    gms_dir = tmp_path / "gms"
    log = open(tmp_path / "gms.log", "w")
    service = subprocess.Popen([sys.executable, "-m", "thaw", "gms", "serve", "--gpu", "0", "--allow", str(models),
                                "--dir", str(gms_dir)], stdout=log, stderr=subprocess.STDOUT)
    sock = socket_path(gms_dir, devices()[0].uuid)
    try:
        deadline = time.monotonic() + 120
        while not sock.exists():
            assert service.poll() is None and time.monotonic() < deadline, (tmp_path / "gms.log").read_text()
            time.sleep(0.05)
        ws = weights.load(files, order=["w3", "w1", "w2"], device=0, gms_dir=gms_dir)
        assert ws.read_only_granted, "the service's memory should be mapped read-only into workers"
        assert [t.name for t in ws.layout.tensors[:3]] == ["w3", "w1", "w2"]
        reference = {**load_file(str(files[0]), device="cuda"), **load_file(str(files[1]), device="cuda")}
        for name, want in reference.items():
            assert torch.equal(ws.tensor(name), want), name
        address = ws.tensor("w0").data_ptr()
        with Client(sock) as c:
            assert c.status().sets[0].holders == 1
        weights.unmap_all()
        with Client(sock) as c:
            deadline = time.monotonic() + 10
            while c.status().sets[0].holders and time.monotonic() < deadline:
                time.sleep(0.02)
            st = c.status()
            assert st.sets[0].holders == 0 and st.sets[0].load.gbps > 0
        weights.remap_all()
        assert ws.tensor("w0").data_ptr() == address
        for name, want in reference.items():
            assert torch.equal(ws.tensor(name), want), name
        weights.unmap_all()
    finally:
        service.terminate()
        service.wait(30)
