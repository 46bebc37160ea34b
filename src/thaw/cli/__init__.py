"""The ``thaw`` command line (typer + rich)."""

from typer.core import TyperOption

_display_type_rich = TyperOption.display_type_rich


def _no_type_for_flags(self: TyperOption, ctx: object) -> str | None:
    # typer 0.29's rich help labels every flag "<bool>", as if it took a value (its plain help
    # leaves the label out); a flag's help shows only its names
    return None if self.is_flag else _display_type_rich(self, ctx)


TyperOption.display_type_rich = _no_type_for_flags  # type: ignore[method-assign]
