"""``thaw operator run`` reads its settings the way the Deployment gives them: THAW_* variables from the ConfigMap."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from thaw.cli.operator import app


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list:
    import thaw.k8s.runner

    calls: list = []
    monkeypatch.setattr(thaw.k8s.runner, "run", lambda config, **kw: calls.append((config, kw)))
    return calls


@pytest.mark.parametrize("value, namespaces", [("", ()), ("ml", ("ml",)), ("ml,prod", ("ml", "prod"))])
def test_namespaces_from_the_configmap(started: list, value: str, namespaces: tuple) -> None:
    result = CliRunner().invoke(app, ["run"], env={"THAW_NAMESPACES": value})
    assert result.exit_code == 0, result.output
    (config, _), = started
    assert config.namespaces == namespaces


def test_agent_settings_and_token(started: list, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# comment\noperator:s3cr3t-token-of-some-length\n")
    env = {"THAW_AGENT_PORT": "7171", "THAW_AGENT_NAMESPACE": "infra", "THAW_POLL_SECONDS": "0.5",
           "THAW_AGENT_TOKEN_FILE": str(tokens)}
    result = CliRunner().invoke(app, ["run"], env=env)
    assert result.exit_code == 0, result.output
    (config, _), = started
    assert (config.agents.port, config.agents.namespace, config.poll) == (7171, "infra", 0.5)
    assert config.token() == "s3cr3t-token-of-some-length"


def test_a_missing_token_file_is_a_clear_error_not_a_traceback(started: list, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--agent-token-file", str(tmp_path / "nope")])
    assert result.exit_code == 1 and not started
    text = " ".join(result.output.split())  # rich wraps long lines
    assert text.startswith("error: token_file:") and "nope does not exist" in text and "Traceback" not in text
