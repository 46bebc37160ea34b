"""The plan of the house is the house: every package has a place in the layers contract that
lint-imports checks, docs/architecture.md's table says the same, and settings are read in one place."""

from __future__ import annotations

import ast
import pkgutil
import re
import tomllib
from pathlib import Path

import thaw

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "thaw"


def layers() -> list[list[str]]:
    """The layers contract of pyproject.toml, top first: each a list of sibling module names."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [contract] = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    return [[m.strip() for m in re.split(r"[|:]", layer)] for layer in contract["layers"]]


def test_every_package_and_top_level_module_has_a_layer() -> None:
    placed = {m for layer in layers() for m in layer}
    found = {f"thaw.{m.name}" for m in pkgutil.iter_modules(thaw.__path__)}
    assert found == placed, f"not in the layers contract: {sorted(found - placed)}; gone: {sorted(placed - found)}"


def test_the_architecture_doc_table_is_the_layers_contract() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| (\d+) \| `thaw\.([a-z0-9_]+)` \|", doc, flags=re.M)
    in_doc = {f"thaw.{name}": int(layer) for layer, name in rows}
    in_contract = {m: i + 1 for i, layer in enumerate(layers()) for m in layer}
    assert in_doc == in_contract


def test_the_architecture_doc_table_names_what_each_package_imports() -> None:
    # the "uses" column is the imports as grimp (import-linter's graph) finds them: thaw.errors, which every
    # floor may use, may be left out; "everything below" (the CLI) is checked by the layers contract alone
    import grimp

    graph = grimp.build_graph("thaw", cache_dir=None)
    doc = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| \d+ \| `thaw\.([a-z0-9_]+)` \| [^|]*\| ([^|]*) \|$", doc, flags=re.M)
    wrong = {}
    for name, uses in rows:
        if uses.strip() == "everything below":
            continue
        said = {w for w in re.sub(r"\([^)]*\)", "", uses).replace("—", "").replace(",", " ").split()}
        package = f"thaw.{name}"
        modules = {m for m in graph.modules if m == package or m.startswith(package + ".")}
        imported = {i.split(".")[1] for m in modules for i in graph.find_modules_directly_imported_by(m)
                    if i.startswith("thaw.") and i not in modules}
        if said - {"errors"} != imported - {"errors"}:
            wrong[package] = {"not imported": sorted(said - imported - {"errors"}),
                              "not in the table": sorted(imported - said - {"errors"})}
    assert wrong == {}


#: reading the environment for a setting: only thaw.config (thaw's settings) and the worker SDK (what thaw
#: hands a worker) do. A copy handed to a child process (dict(os.environ)) is not a read.
ALLOWED = {
    "config.py": "thaw's settings",
    "worker/environment.py": "what thaw tells a worker, read on the worker's side",
    "engine/startup.py": "the engine's own process pins torch's CPU ISA before torch is imported",
    "demo/worker.py": "the demo's worker program reads its own knob",
    "store/testing.py": "a throwaway S3 server for tests gets credentials",
    "store/s3_calls.py": "boto3's region convention (AWS_REGION)",
    "doctor.py": "the compiler check looks where torch.compile will ($CXX), not at a setting of thaw's",
    "faults.py": "fault points the fault-matrix tests set in real thaw processes, where no setting is passed",
    "listen/hook.py": "the park-at-listen hook runs inside the worker's processes, before thaw's settings exist there",
}


def environment_reads(path: Path) -> list[int]:
    """Lines of ``path`` that read os.environ for a value (get, [], in, getenv)."""
    tree = ast.parse(path.read_text())
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("get", "getenv", "setdefault") and \
                ast.unparse(node.value) in ("os.environ", "os"):
            if node.attr != "getenv" or ast.unparse(node.value) == "os":
                lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ" and \
                isinstance(node.ctx, ast.Load):
            lines.append(node.lineno)
        elif isinstance(node, ast.Compare) and any(ast.unparse(c) == "os.environ" for c in node.comparators):
            lines.append(node.lineno)
    return sorted(set(lines))


def test_settings_are_read_from_the_environment_in_one_place() -> None:
    readers = {}
    for path in SRC.rglob("*.py"):
        rel = str(path.relative_to(SRC))
        if rel in ALLOWED:
            continue
        if found := environment_reads(path):
            readers[rel] = found
    assert readers == {}, "read the setting through thaw.config.Settings (or thaw.worker.environment in a worker)"


def test_no_typer_option_reads_the_environment_itself() -> None:
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if "envvar=" in p.read_text()]
    assert offenders == [], "options default to Settings, which reads THAW_* in one place"


def test_no_source_file_is_over_500_lines() -> None:
    # a file past 500 lines holds more than one thing (issue #12): split it where the things part
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}
