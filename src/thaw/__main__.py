"""``python -m thaw`` is the ``thaw`` command."""

from thaw.cli.main import app

app()
