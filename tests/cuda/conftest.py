"""Fixtures for thaw.cuda's tests: the fake driver installed behind native.cuda_call, and the GPU skip."""

from __future__ import annotations

from pathlib import Path

import pytest
from cuda_fakes import FakeCuda

from thaw.cuda import native

HERE = Path(__file__).parent


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    """A FakeCuda with one H200, in place of libcuda; NVML absent."""
    fake = FakeCuda()
    monkeypatch.setattr(native, "load_cuda", lambda: fake)
    monkeypatch.setattr(native, "load_nvml", lambda: None)
    monkeypatch.setattr(native, "_cuda_initialized", False)
    return fake
