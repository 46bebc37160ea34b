"""Checkpoints on disk: writing seeded random ones, and reading them back like a real server.

The layout is Hugging Face's::

    <dir>/
        config.json                          ModelConfig.to_hf() (+ how the weights were made)
        model.safetensors                    one file when the model fits one shard, else
        model-00001-of-00017.safetensors     shards of at most ``shard_bytes`` ...
        model.safetensors.index.json         ... and {"metadata": {"total_size"}, "weight_map": {name: file}}

Restore cost depends on bytes, not values, so the weights are random — but each tensor
is drawn from its own seeded generator (seed, tensor name), so a checkpoint is
reproducible on the same kind of device. A checkpoint is generated one shard at a
time and published by renaming its staging directory: a directory either holds a
whole checkpoint or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from thaw.engine.config import ModelConfig
from thaw.errors import ConfigError

CONFIG_JSON = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_JSON = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 4 * 1024**3  # Qwen's own checkpoints use ~4 GB shards

_TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
INIT_STD = 0.02  # Qwen3's initializer_range


@dataclass(frozen=True)
class WrittenCheckpoint:
    path: Path
    files: int
    bytes: int
    seconds: float
    generator: str  # "cuda" or "cpu": where the random values were drawn


def make_weights(
    config: ModelConfig,
    dest: Path,
    *,
    seed: int = 0,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    device: str | None = None,
    force: bool = False,
) -> WrittenCheckpoint:
    """Write a checkpoint of ``config`` with seeded random weights into ``dest``.

    Values are drawn on the GPU when there is one (``device=None``): for the 65 GB
    config the CPU's generator would dominate; the GPU's leaves only the disk. Only one
    shard is held in host memory at a time.
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()) and not force:
        raise ConfigError("dir", f"{dest} exists and is not empty", hint="pass --force to replace it")
    gen_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    stage = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        shapes = config.tensor_shapes()
        dtype = _TORCH_DTYPES[config.dtype]
        shards = _plan_shards(config, shard_bytes)
        weight_map: dict[str, str] = {}
        total = 0
        for i, names in enumerate(shards):
            file = SINGLE_FILE if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            tensors = {name: _draw(name, shapes[name], dtype, seed, gen_device) for name in names}
            save_file(tensors, stage / file, metadata={"format": "pt"})
            total += sum(t.numel() * t.element_size() for t in tensors.values())
            weight_map |= {name: file for name in names}
            del tensors
        if len(shards) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (stage / INDEX_JSON).write_text(json.dumps(index, indent=2))
        hf = config.to_hf()
        hf["thaw"] |= {"seed": seed, "generator": gen_device.type}
        (stage / CONFIG_JSON).write_text(json.dumps(hf, indent=2))
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(stage, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return WrittenCheckpoint(dest, len(shards), total, time.perf_counter() - t0, gen_device.type)


def read_config(path: Path) -> ModelConfig:
    """The ModelConfig of the checkpoint in ``path``."""
    file = Path(path) / CONFIG_JSON
    try:
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError("weights", f"{file} does not exist",
                          hint="write one with `thaw engine make-weights`") from None
    except json.JSONDecodeError as exc:
        raise ConfigError("weights", f"{file} is not valid JSON: {exc}") from exc
    return ModelConfig.from_hf(raw)


def checkpoint_files(path: Path) -> list[Path]:
    """The safetensors files of the checkpoint in ``path``, in order."""
    path = Path(path)
    index = path / INDEX_JSON
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [path / f for f in sorted(set(weight_map.values()))]
    else:
        files = [path / SINGLE_FILE]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise ConfigError("weights", f"{path} lacks {', '.join(missing)}")
    return files


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the checkpoint, read through safetensors' memory map (on the CPU)."""
    for file in checkpoint_files(path):
        with safe_open(file, framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, f.get_tensor(name)


def checkpoint_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in checkpoint_files(path))


def _plan_shards(config: ModelConfig, shard_bytes: int) -> list[list[str]]:
    itemsize = torch.empty((), dtype=_TORCH_DTYPES[config.dtype]).element_size()
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in config.tensor_shapes().items():
        nbytes = itemsize * _numel(shape)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _draw(name: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int, device: torch.device) -> torch.Tensor:
    """One tensor: N(0, 0.02) for matrices, 1 + N(0, 0.1) for norm scales; returned on the CPU.

    Norm scales are not all ones so that a test can tell q_norm from k_norm.
    """
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1)
    values = torch.randn(shape, generator=g, device=device, dtype=torch.float32)
    if name.endswith("norm.weight"):
        values.mul_(0.1).add_(1.0)
    else:
        values.mul_(INIT_STD)
    return values.to(dtype).cpu()


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
