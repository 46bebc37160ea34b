"""Fixtures of the engine's tests: a tiny checkpoint written once, engines built on it.

Tests marked ``gpu`` are skipped where torch sees no CUDA device.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from thaw.engine.config import ModelConfig, get_config
from thaw.engine.engine import Engine
from thaw.engine.kv_cache import KVCache
from thaw.engine.model import Qwen3
from thaw.engine.tokenizer import ByteTokenizer
from thaw.engine.weights import make_weights, read_config


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``tiny`` config's checkpoint (seed 0), shared by the whole session; never modify it."""
    path = tmp_path_factory.mktemp("weights") / "tiny"
    make_weights(get_config("tiny"), path, seed=0, device="cpu")
    return path


def build_engine(weights: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32, num_blocks: int = 256,
                 block_size: int = 16, max_batch: int = 8, max_model_len: int = 512) -> Engine:
    config: ModelConfig = read_config(weights)
    dev = torch.device(device)
    model = Qwen3.load(weights, config, device=dev, dtype=dtype, max_len=max_model_len)
    kv = KVCache(config, num_blocks=num_blocks, block_size=block_size, dtype=dtype, device=dev)
    return Engine(model, kv, ByteTokenizer(config.vocab_size), max_batch=max_batch, max_model_len=max_model_len)


@pytest.fixture
def make_engine(tiny_weights: Path):  # type: ignore[no-untyped-def]
    """``make_engine(**overrides)``: a fresh CPU engine on the tiny checkpoint (see build_engine)."""
    return lambda **kw: build_engine(kw.pop("weights", tiny_weights), **kw)


@pytest.fixture
def engine(tiny_weights: Path) -> Engine:
    return build_engine(tiny_weights)
