"""GPU UUIDs as nvidia-smi spells them ("GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"), from any spelling.

Standard library only: the torch hooks inside a worker (thaw.cuda.worker_hooks) use it, and
so does the typed floor (thaw.model.gpu), which validates every UUID with it.
"""

from __future__ import annotations

import re

from thaw.errors import ConfigError

_HEX_UUID = re.compile(r"[0-9a-fA-F]{32}")


def format_uuid(raw: bytes) -> str:
    """16 bytes → "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (nvidia-smi's spelling)."""
    if len(raw) != 16:
        raise ConfigError("uuid", f"a GPU UUID has 16 bytes, got {len(raw)}")
    h = raw.hex()
    return f"GPU-{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def parse_uuid(text: str) -> bytes:
    """A GPU UUID in nvidia-smi's, torch's or bare-hex spelling → its 16 bytes."""
    bare = str(text).strip()
    if bare.upper().startswith("GPU-"):
        bare = bare[4:]
    bare = bare.replace("-", "")
    if not _HEX_UUID.fullmatch(bare):
        raise ConfigError("uuid", f"not a GPU UUID: {text!r}", hint="expected GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")
    return bytes.fromhex(bare)


def normalize_uuid(text: str) -> str:
    return format_uuid(parse_uuid(text))
