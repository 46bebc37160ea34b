"""Phase trees: the pipeline's timings arranged as the phases nest, with a real ``unaccounted``.

The pipeline reports an operation's timings as it measures them: top-level phases
(``fetch``, ``criu_restore``, ``gpu_restore``, ...), phases timed *inside* one of them
(``cuda_restore`` and ``cuda_unlock`` run within ``gpu_restore``; a store's ``fetch_*_s``
statistics are parts of ``fetch``), ``total``, and its own ``unaccounted``. Summing all of
them counts the nested ones twice. Here each phase goes under its parent, and every node
with children gets an ``unaccounted`` child: the node's duration minus its children's —
what no sub-phase explains. The pipeline's own ``unaccounted`` is ignored and recomputed.

Dotted names (``gpu_restore.cuda_unlock``) nest too, so a pipeline that reports its tree
that way needs no entry in :data:`NESTED_IN`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from thaw.bench.schema import Distribution, Phase
from thaw.bench.stats import distribution

UNACCOUNTED = "unaccounted"

#: phases the pipeline times inside another phase (thaw.cuda.steps, inside the pipeline's GPU steps)
NESTED_IN = {
    "cuda_lock": "gpu_checkpoint",
    "cuda_checkpoint": "gpu_checkpoint",
    "cuda_restore": "gpu_restore",
    "cuda_unlock": "gpu_restore",
}
#: prefix of the store's statistics of a fetch, reported among the restore's timings (pipeline/restore.py)
FETCH_STAT = "fetch_"
#: the pipeline's own summary entries, not phases
SUMMARY_KEYS = ("total", UNACCOUNTED)


def node(name: str, seconds: float, children: Iterable[Phase] = ()) -> Phase:
    """A phase with its children and, where it has any, its ``unaccounted`` remainder."""
    kids = [c for c in children if c.name != UNACCOUNTED]
    if kids:
        kids.append(Phase(name=UNACCOUNTED, seconds=round(seconds - sum(c.seconds for c in kids), 6)))
    return Phase(name=name, seconds=round(seconds, 6), children=kids)


def from_timings(name: str, timings: Mapping[str, float], seconds: float | None = None) -> Phase:
    """The tree of one operation's timings; its duration is ``seconds``, else the timings' ``total``."""
    total = seconds if seconds is not None else timings.get("total")
    if total is None:
        raise ValueError(f"{name}: the timings have no total and none was given")
    values: dict[tuple[str, ...], float] = {}
    for key, value in timings.items():
        if key not in SUMMARY_KEYS:
            values[_path(key)] = float(value)
    paths = set(values)
    for path in list(paths):  # a parent named only by its children still gets a node
        paths.update(path[:depth] for depth in range(1, len(path)))
    order = {path: i for i, path in enumerate(values)}

    def build(path: tuple[str, ...]) -> Phase:
        kids = sorted((p for p in paths if p[:-1] == path), key=lambda p: order.get(p, len(order)))
        children = [build(k) for k in kids]
        own = values.get(path)
        if own is None:  # as long as its children, then
            own = sum(c.seconds for c in children)
        return node(path[-1], own, children)

    roots = sorted((p for p in paths if len(p) == 1), key=lambda p: order.get(p, len(order)))
    return node(name, float(total), [build(p) for p in roots])


def _path(key: str) -> tuple[str, ...]:
    if "." in key:
        return tuple(key.split("."))
    if key in NESTED_IN:
        return (NESTED_IN[key], key)
    if key.startswith(FETCH_STAT) and key.endswith("_s"):
        return ("fetch", key.removeprefix(FETCH_STAT).removesuffix("_s"))
    return (key,)


def walk(tree: Phase, prefix: str = "") -> Iterable[tuple[str, float]]:
    """(path, seconds) of every phase below the root: ``restore/gpu_restore/cuda_unlock``."""
    for child in tree.children:
        path = f"{prefix}{child.name}"
        yield path, child.seconds
        yield from walk(child, path + "/")


def aggregate(trees: Iterable[Phase]) -> dict[str, Distribution]:
    """The distribution of each phase over many runs, by its path (a phase absent from a run is not 0)."""
    samples: dict[str, list[float]] = {}
    for tree in trees:
        for path, seconds in walk(tree):
            samples.setdefault(path, []).append(seconds)
    return {path: distribution(values) for path, values in samples.items()}


def top_level(tree: Phase) -> dict[str, float]:
    """The phases right below the root, by name (the bars of the phase plot)."""
    return {c.name: c.seconds for c in tree.children}
