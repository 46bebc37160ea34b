"""The engine's weights from the GPU memory service: placed so that fused matrices are plain views.

The engine multiplies by one q/k/v matrix and one gate/up matrix per layer (one matmul
instead of three or two). Loading itself, it fuses by copying; with the GMS nothing is
copied, so the service is asked to place each layer's q, k, v — and gate, up — back to
back (``WeightSpec.order``), and the fused parameter is a view over the three (or two)
consecutive tensors. Every parameter is then a view into memory the service owns, and
the worker's snapshot carries none of it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from thaw.engine import weights
from thaw.engine.config import ModelConfig
from thaw.engine.model import Placement, Qwen3
from thaw.errors import ConfigError

_FUSED = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj")))
ALIGN = 256


def placement_order(config: ModelConfig) -> list[str]:
    """The tensors to place first, in order: each layer's q, k, v, then gate, up."""
    order = []
    for i in range(config.num_layers):
        for block, parts in _FUSED:
            order += [f"model.layers.{i}.{block}.{p}.weight" for p in parts]
    return order


def load(path: Path, config: ModelConfig, *, device: torch.device, dtype: torch.dtype, max_len: int,
         gms_device: str | None = None) -> tuple[Qwen3, dict[str, object]]:
    """The model over GMS-mapped weights, and what to report about the load."""
    import thaw.memory.weights as gms

    files = weights.checkpoint_files(path)
    where: int | str = gms_device if gms_device else (device.index if device.index is not None
                                                      else torch.cuda.current_device())
    ws = gms.load(files, order=placement_order(config), align=ALIGN, device=where)
    probe = Qwen3(config, Placement(torch.device("meta"), dtype))  # only for the name mapping
    groups: dict[str, list[tuple[int, str]]] = {}
    params: dict[str, torch.Tensor] = {}
    for slot in ws.layout.tensors:
        target, rows = probe.destination(slot.name)
        if rows is None:
            params[target] = _on(ws.tensor(slot.name), device)
        else:
            groups.setdefault(target, []).append((rows[0], slot.name))
    for target, parts in groups.items():
        names = [n for _, n in sorted(parts)]
        params[target] = _on(_fused(ws, names), device)
    model = Qwen3.over(params, config, device=device, dtype=dtype, max_len=max_len)
    report = {"source": "gms", "key": ws.layout.key, "bytes": ws.nbytes, "read_only": ws.read_only_granted,
              "seconds": round(getattr(ws, "load_seconds", 0.0), 6)}
    return model, report


def _fused(ws: object, names: list[str]) -> torch.Tensor:
    """One tensor over consecutive slots ``names`` (same dtype and row width), stacked along rows."""
    from thaw.memory.weights import WeightSet

    assert isinstance(ws, WeightSet)
    slots = [ws.layout.tensor(n) for n in names]
    for a, b in zip(slots, slots[1:]):
        if b.offset != a.offset + a.nbytes or b.dtype != a.dtype or b.shape[1:] != a.shape[1:]:
            raise ConfigError("weights", f"{a.name} and {b.name} are not back to back in the mapped set; "
                              "the engine cannot fuse them without a copy")
    rows = sum(s.shape[0] for s in slots)
    return ws.view(slots[0].offset, slots[0].dtype, [rows, *slots[0].shape[1:]])


def _on(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if t.device.type != device.type:
        raise ConfigError("weights", f"the mapped weights are on {t.device}, the engine runs on {device}")
    return t

