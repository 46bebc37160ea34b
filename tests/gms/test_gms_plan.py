"""Safetensors headers are hostile input: every bound is checked before memory is created for them."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from gms_helpers import write_model

from thaw.errors import ConfigError
from thaw.gms.models import WeightSpec
from thaw.gms.plan import chunk_sizes, describe, place


def _raw(path: Path, header: object, data: bytes = b"", *, length: int | None = None) -> Path:
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)
    return path


def spec_of(*paths: Path, order: tuple[str, ...] = (), align: int = 256) -> WeightSpec:
    return WeightSpec(files=describe([str(p) for p in paths]), order=list(order), align=align)


def test_placement_puts_the_named_tensors_first_back_to_back(tmp_path: Path) -> None:
    tensors = write_model(tmp_path / "m.safetensors")
    p = place(spec_of(tmp_path / "m.safetensors", order=("layers.1.q", "layers.1.k", "layers.1.v")))
    by_name = {t.name: t for t in p.tensors}
    q, k, v = by_name["layers.1.q"], by_name["layers.1.k"], by_name["layers.1.v"]
    assert q.offset == 0 and k.offset == q.nbytes and v.offset == k.offset + k.nbytes
    assert set(by_name) == set(tensors)
    assert all(t.offset % 256 == 0 for t in p.tensors)
    assert p.nbytes == max(t.offset + t.nbytes for t in p.tensors)
    # every byte of every tensor is copied exactly once
    assert sum(s.length for s in p.segments) == sum(t.nbytes for t in p.tensors)


def test_placement_refuses_unknown_or_repeated_names(tmp_path: Path) -> None:
    write_model(tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match="lack"):
        place(spec_of(tmp_path / "m.safetensors", order=("nope",)))
    with pytest.raises(ConfigError, match="twice"):
        place(spec_of(tmp_path / "m.safetensors", order=("norm", "norm")))


def test_a_tensor_in_two_files_is_refused(tmp_path: Path) -> None:
    write_model(tmp_path / "a.safetensors")
    write_model(tmp_path / "b.safetensors", seed=1)
    with pytest.raises(ConfigError, match="in two files"):
        place(spec_of(tmp_path / "a.safetensors", tmp_path / "b.safetensors"))


@pytest.mark.parametrize(("header", "data", "message"), [
    ({"t": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 4, "past the end"),
    ({"t": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 6]}}, b"\0" * 8, "do not fit"),
    ({"t": {"dtype": "BF16", "shape": [-1], "data_offsets": [0, 8]}}, b"\0" * 8, "invalid shape"),
    ({"t": {"dtype": "XX", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown dtype"),
    ({"t": {"dtype": "BF16", "shape": [4], "data_offsets": [8]}}, b"\0" * 8, "invalid data_offsets"),
    ({"t": {"dtype": "BF16", "shape": [4], "data_offsets": [True, 8]}}, b"\0" * 8, "invalid data_offsets"),
    ({"t": "x"}, b"", "not an object"),
    ([1, 2], b"", "not a JSON object"),
    ({"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
      "b": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]}}, b"\0" * 12, "overlap"),
])
def test_hostile_headers_are_refused_with_a_clear_error(tmp_path: Path, header: object, data: bytes,
                                                       message: str) -> None:
    path = _raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(ConfigError, match=message):
        place(spec_of(path))


def test_a_header_length_beyond_the_file_is_refused(tmp_path: Path) -> None:
    path = _raw(tmp_path / "bad.safetensors", {}, length=10**12)
    with pytest.raises(ConfigError, match="not a safetensors file"):
        place(spec_of(path))
    (tmp_path / "short").write_bytes(b"abc")
    with pytest.raises(ConfigError, match="shorter than 8 bytes"):
        place(spec_of(tmp_path / "short"))


def test_chunks_cover_the_set_in_granularity_steps() -> None:
    assert chunk_sizes(1, 2 << 20, 1 << 30) == [2 << 20]
    assert chunk_sizes(5 << 30, 2 << 20, 2 << 30) == [2 << 30, 2 << 30, 1 << 30]
    assert sum(chunk_sizes(3 * (2 << 20) + 1, 2 << 20, 4 << 20)) == 4 * (2 << 20)


def test_weight_files_are_named_by_absolute_paths() -> None:
    from pydantic import ValidationError

    from thaw.gms.models import WeightFile

    with pytest.raises(ValidationError):
        WeightFile(path="relative/x.safetensors", size=1)
    with pytest.raises(ValidationError):
        WeightFile(path="/a\nb", size=1)
    assert WeightFile(path="/a/../b/x", size=1).path == "/b/x"
