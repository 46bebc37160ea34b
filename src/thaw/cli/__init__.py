"""The ``thaw`` command line (typer + rich)."""
