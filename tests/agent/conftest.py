"""Fixtures for the agent tests: agent nodes (agent_nodes.py) and a real S3-compatible server."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agent_nodes import Node
from workers import kill_all, processes_of

from thaw.store.testing import s3_server


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """``make_node(name, store=URL, args=[...])`` starts an agent node; all are stopped at teardown.

    Nodes share the artifact store (``<tmp>/shared`` unless ``store`` is given) and, in
    their own mount namespaces, the home path; ``namespaced=False`` starts a plain agent
    process (no root needed) whose home is its own directory.
    """
    home = tmp_path / "home"
    home.mkdir()
    nodes: list[Node] = []

    def make(name: str, *, store: str | None = None, args: list[str] | None = None, start: bool = True,
             namespaced: bool = True) -> Node:
        root = tmp_path / f"node-{name}"
        root.mkdir()
        node = Node(name=name, home=home if namespaced else root, root=root, staging=tmp_path / f"staging-{name}",
                    socket=tmp_path / f"agent-{name}.sock", store=store or str(tmp_path / "shared"),
                    log=tmp_path / f"agent-{name}.log", args=args or [], namespaced=namespaced)
        nodes.append(node)
        return node.start() if start else node

    yield make
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)  # lets a job still running finish, within reason
            try:
                node.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                node.kill()
    kill_all(processes_of(home) + [p for n in nodes if not n.namespaced for p in processes_of(n.home)])


@pytest.fixture(scope="session")
def s3_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with s3_server("thaw-agent-tests", log=tmp_path_factory.mktemp("s3") / "moto.log") as url:
        yield url
