"""GPU values parsed once where they enter: ``--gpu``, UUIDs, records and pairs."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from thaw.errors import ConfigError
from thaw.model import GpuPair, GpuTarget, parse_gpu_target

UUID = "GPU-5f1e0c3a-9b7d-4e21-a0b1-c2d3e4f50617"


@pytest.mark.parametrize(("given", "parsed"), [
    ("0", 0), (" 3 ", 3), (2, 2), (UUID, UUID), ("5f1e0c3a-9b7d-4e21-a0b1-c2d3e4f50617", UUID),
    ("gpu-5F1E0C3A9B7D4E21A0B1C2D3E4F50617", UUID),
])
def test_a_gpu_target_is_an_index_or_a_normalized_uuid(given: object, parsed: object) -> None:
    assert parse_gpu_target(given) == parsed


@pytest.mark.parametrize("bad", ["-1", -1, "GPU-12", "first", True, 1.5])
def test_a_bad_gpu_target_names_the_option(bad: object) -> None:
    with pytest.raises(ConfigError, match="^gpu: "):
        parse_gpu_target(bad)


def test_a_request_field_of_type_gpu_target_parses_the_same_way() -> None:
    class Request(BaseModel):
        gpu: GpuTarget | None = None

    assert Request(gpu="1").gpu == 1 and Request(gpu=UUID.lower()).gpu == UUID and Request().gpu is None
    with pytest.raises(ValidationError, match="neither a GPU index nor a GPU UUID"):
        Request(gpu="GPU-12")


def test_pairs_normalize_both_sides_and_compare_by_value() -> None:
    assert GpuPair(UUID.lower(), UUID) == GpuPair(old=UUID, new=UUID)
    with pytest.raises(ValidationError):
        GpuPair("GPU-1", UUID)
