"""GPU identity: devices(), available(), UUIDs, NVML memory — on a fake driver, and on this GPU-less host."""

from __future__ import annotations

import pytest
from cuda_fakes import H200, H200_B, FakeCuda, FakeNvml, uuid_of

import thaw.cuda
import thaw.model
from thaw import proc
from thaw.cuda import gpus, native
from thaw.errors import ConfigError, CudaError


def test_available_is_false_without_a_driver_and_nothing_raises(monkeypatch) -> None:
    monkeypatch.setattr(native, "load_cuda", lambda: None)
    monkeypatch.setattr(native, "load_nvml", lambda: None)
    assert thaw.cuda.available() is False
    assert thaw.cuda.devices() == []
    assert thaw.cuda.cuda_version() == 0


def test_available_on_this_host_does_not_raise() -> None:
    assert thaw.cuda.available() in (True, False)  # False here (no GPU); on the GPU machine True


def test_available_is_false_when_cuinit_finds_no_device(fake_cuda) -> None:
    fake_cuda.cu_init_code = 100  # CUDA_ERROR_NO_DEVICE
    assert thaw.cuda.available() is False
    assert thaw.cuda.devices() == []


def test_a_broken_driver_is_an_error_not_no_gpus(fake_cuda) -> None:
    fake_cuda.cu_init_code = 999  # CUDA_ERROR_UNKNOWN: e.g. the library does not match the kernel module
    with pytest.raises(CudaError, match="cuInit failed: CUDA_ERROR_UNKNOWN"):
        thaw.cuda.available()
    with pytest.raises(CudaError):
        thaw.cuda.devices()


def test_devices_describe_each_gpu(fake_cuda) -> None:
    fake_cuda.gpus = [H200, H200_B]
    gpus = thaw.cuda.devices()
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[0].uuid == "GPU-5f1e0c3a-9b7d-4e21-a0b1-c2d3e4f50617"
    assert gpus[0].name == "NVIDIA H200"
    assert gpus[0].memory_total == 150_000_000_000
    assert gpus[0].compute_capability == "9.0"
    assert gpus[0].memory_free is None, "no NVML: free memory unknown, not invented"
    assert thaw.cuda.cuda_version() == 13000
    assert gpus[1].model_dump()["uuid"] == uuid_of(H200_B[1])


def test_free_memory_and_process_usage_come_from_nvml(monkeypatch) -> None:
    fake = FakeCuda([H200])
    uuid = uuid_of(H200[1])
    nvml = FakeNvml({uuid: 42 << 30}, {uuid: [(100, 5 << 30), (101, 1 << 30), (999, 7 << 30)]})
    monkeypatch.setattr(native, "load_cuda", lambda: fake)
    monkeypatch.setattr(native, "load_nvml", lambda: nvml)
    monkeypatch.setattr(native, "_cuda_initialized", False)
    [gpu] = thaw.cuda.devices()
    assert gpu.memory_free == 42 << 30
    assert gpu.driver_version == "580.159.04"
    assert gpus.process_memory(uuid, {100, 101}) == 6 << 30
    assert gpus.process_memory(uuid, {12345}) == 0
    assert gpus.process_memory("GPU-ffffffff-ffff-ffff-ffff-ffffffffffff", {100}) is None


@pytest.mark.parametrize("spelling", [
    "GPU-5f1e0c3a-9b7d-4e21-a0b1-c2d3e4f50617",
    "5f1e0c3a-9b7d-4e21-a0b1-c2d3e4f50617",  # torch's str(props.uuid)
    "5F1E0C3A9B7D4E21A0B1C2D3E4F50617",
    " gpu-5f1e0c3a-9b7d-4e21-a0b1-c2d3e4f50617 ",
])
def test_uuid_spellings_normalise_to_nvidia_smis(spelling: str) -> None:
    assert thaw.model.normalize_uuid(spelling) == "GPU-5f1e0c3a-9b7d-4e21-a0b1-c2d3e4f50617"
    assert thaw.model.parse_uuid(spelling) == H200[1]


@pytest.mark.parametrize("bad", ["", "GPU-1234", "MIG-5f1e0c3a-9b7d-4e21-a0b1-c2d3e4f50617", "zz" * 16])
def test_a_bad_uuid_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="uuid"):
        thaw.model.normalize_uuid(bad)


def test_driver_version_without_nvml_or_proc_is_empty(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(native, "load_nvml", lambda: None)
    monkeypatch.setattr(proc, "NVIDIA_VERSION", tmp_path / "absent")
    assert thaw.cuda.driver_version() == ""


def test_driver_version_falls_back_to_proc(monkeypatch, tmp_path) -> None:
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (x)\n")
    monkeypatch.setattr(native, "load_nvml", lambda: None)
    monkeypatch.setattr(proc, "NVIDIA_VERSION", version)
    assert thaw.cuda.driver_version() == "580.159.04"
