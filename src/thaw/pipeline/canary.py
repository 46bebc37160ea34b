"""Comparing a restored worker's canary with the one recorded at snapshot time: one definition of "the same"."""

from __future__ import annotations

import json
from typing import Any


def canonical(value: Any) -> str:
    """The canary as compared: JSON with sorted keys (the worker reports it through JSON files anyway)."""
    return json.dumps(value, sort_keys=True)


def matches(expected: Any, got: Any) -> bool:
    return canonical(expected) == canonical(got)


def short(value: Any, n: int = 200) -> str:
    text = canonical(value)
    return text if len(text) <= n else text[:n] + "..."


def differences(expected: Any, got: Any, where: str = "$", limit: int = 20) -> list[str]:
    """Where two canary outputs differ, as JSON-path lines: ``$.tokens[3]: expected 17, got 18``."""
    out: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                if k not in b:
                    out.append(f"{path}.{k}: missing in the restored output")
                elif k not in a:
                    out.append(f"{path}.{k}: not in the recorded output")
                else:
                    walk(a[k], b[k], f"{path}.{k}")
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                out.append(f"{path}: expected {len(a)} items, got {len(b)}")
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{path}[{i}]")
        elif a != b or type(a) is not type(b):
            out.append(f"{path}: expected {_repr(a)}, got {_repr(b)}")

    walk(expected, got, where)
    return out


def _repr(value: Any, n: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."
