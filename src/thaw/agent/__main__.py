"""``python -m thaw.agent serve ...``: the agent CLI without the ``thaw`` entry point (tests, containers)."""

from thaw.cli.agent import app

app(prog_name="thaw agent")
