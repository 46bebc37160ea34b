"""From safetensors files to a placement: where each tensor's bytes go in the set's memory, and the copies that put them there.

A safetensors file is ``u64 header length (little endian) | JSON header | data``; the
header maps each tensor name to its dtype, shape and ``data_offsets`` (begin, end)
relative to the data section. The header is parsed here with every bound checked —
a weight file can come from anywhere, and the service reads it as root.

The placement puts the tensors named in ``WeightSpec.order`` first, in that order,
then every other tensor in file order, each at the next multiple of ``align``. A copy
plan lists (file, offset in file, length, offset in memory) segments; the loader reads
each file once in chunk-sized blocks and copies the parts of each block that the plan
names.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from thaw.errors import ConfigError
from thaw.gms.models import DTYPE_SIZES, TensorSlot, WeightFile, WeightSpec

#: safetensors refuses headers over 100 MB; so do we
MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class FileTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: int  # index into the spec's files
    start: int  # absolute offset in the file
    nbytes: int


@dataclass(frozen=True)
class Segment:
    """Copy ``length`` bytes at ``file_offset`` of file ``file`` to ``dest`` bytes into the set's memory."""

    file: int
    file_offset: int
    length: int
    dest: int


@dataclass(frozen=True)
class Placement:
    tensors: list[TensorSlot]
    segments: list[Segment]
    nbytes: int


def read_header(path: Path) -> tuple[int, dict[str, object]]:
    """(offset of the data section, header dict) of one safetensors file; ConfigError if it is not one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError("weights", f"cannot open {path}: {exc.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, 8, 0)
        if len(head) < 8:
            raise ConfigError("weights", f"{path} is not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER or 8 + length > size:
            raise ConfigError("weights", f"{path} is not a safetensors file (header length {length} of a "
                              f"{size}-byte file)")
        raw = os.pread(fd, length, 8)
    finally:
        os.close(fd)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError("weights", f"{path}: the safetensors header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ConfigError("weights", f"{path}: the safetensors header is not a JSON object")
    return 8 + length, header


def tensors_of(index: int, path: Path, size: int) -> list[FileTensor]:
    """The tensors of file ``index`` with absolute offsets, every entry checked against the file's size."""
    data_start, header = read_header(path)
    data_len = size - data_start
    out: list[FileTensor] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        where = f"{path}: tensor {name!r}"
        if not isinstance(entry, dict):
            raise ConfigError("weights", f"{where} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise ConfigError("weights", f"{where} has an unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise ConfigError("weights", f"{where} has an invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise ConfigError("weights", f"{where} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        numel = 1
        for d in shape:
            numel *= d
        if not 0 <= begin <= end <= data_len or end - begin != numel * DTYPE_SIZES[dtype]:
            raise ConfigError("weights", f"{where}: data_offsets {offsets} do not fit its shape {shape} and "
                              f"{dtype}, or run past the end of the file")
        out.append(FileTensor(name, dtype, tuple(shape), index, data_start + begin, end - begin))
    out.sort(key=lambda t: t.start)
    for a, b in zip(out, out[1:]):
        if b.start < a.start + a.nbytes:
            raise ConfigError("weights", f"{path}: tensors {a.name!r} and {b.name!r} overlap")
    return out


def describe(paths: list[str]) -> list[WeightFile]:
    """WeightFile entries (path, size) for ``paths``; digests come from the load."""
    files = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as exc:
            raise ConfigError("weights", f"cannot read {p}: {exc.strerror}") from None
        files.append(WeightFile(path=os.path.abspath(p), size=st.st_size))
    return files


def place(spec: WeightSpec, sizes: list[int] | None = None) -> Placement:
    """Parse every file's header and lay its tensors out as ``spec`` asks. ConfigError on any inconsistency."""
    found: dict[str, FileTensor] = {}
    for i, f in enumerate(spec.files):
        size = sizes[i] if sizes is not None else f.size
        for t in tensors_of(i, Path(f.path), size):
            if t.name in found:
                raise ConfigError("weights", f"tensor {t.name!r} is in two files "
                                  f"({spec.files[found[t.name].file].path} and {f.path})")
            found[t.name] = t
    missing = [n for n in spec.order if n not in found]
    if missing:
        raise ConfigError("weights", f"the placement names tensors the files lack: {missing[:5]}")
    if len(set(spec.order)) != len(spec.order):
        raise ConfigError("weights", "the placement names a tensor twice")
    first = [found[n] for n in spec.order]
    named = set(spec.order)
    rest = sorted((t for t in found.values() if t.name not in named), key=lambda t: (t.file, t.start))
    slots, segments, cursor = [], [], 0
    for t in first + rest:
        cursor = -(-cursor // spec.align) * spec.align
        slots.append(TensorSlot(name=t.name, dtype=t.dtype, shape=list(t.shape), offset=cursor, nbytes=t.nbytes))
        if t.nbytes:
            segments.append(Segment(t.file, t.start, t.nbytes, cursor))
        cursor += t.nbytes
    return Placement(slots, segments, cursor)


def chunk_sizes(nbytes: int, granularity: int, chunk: int) -> list[int]:
    """Physical chunks (each a multiple of ``granularity``, at most ``chunk``) covering ``nbytes``."""
    total = max(granularity, -(-nbytes // granularity) * granularity)
    step = max(granularity, chunk // granularity * granularity)
    return [min(step, total - off) for off in range(0, total, step)]
