"""The typer application object every command module attaches to, and its help conventions.

Help shows plain placeholders (`INPUT...`, `-o DIR`, `--tile INT`) rather than typer's
`{inputs}` / `<list[str]>`: every command is built with `cls=Command`, which names arguments
in upper case and gives options without an explicit `metavar` one derived from their type.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperOption

_TYPE_METAVARS = {"Path": "PATH", "str": "TEXT", "int": "INT", "float": "FLOAT"}


class _PlainArgument(TyperArgument):
    """An argument shown as `NAME`, `[NAME]` or `NAME...`, without a `<type>` label."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def _rich_display_name(self) -> str:
        return self.display_name_raw + ("..." if self.nargs != 1 else "")

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")


def _type_metavar(param: TyperOption | TyperArgument) -> str:
    bare = param.bare_type() if hasattr(param, "bare_type") else ""
    if bare.startswith("list[") and bare.endswith("]"):
        bare = bare[5:-1]
    return _TYPE_METAVARS.get(bare, "VALUE")


class Command(TyperCommand):
    """A typer command whose help uses plain placeholders (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument):
                param.__class__ = _PlainArgument
                if param.metavar is None:
                    param.metavar = (param.name or "arg").upper()
            elif isinstance(param, TyperOption) and not param.is_flag and param.metavar is None:
                param.metavar = _type_metavar(param)


def one_line(message: str) -> str:
    """`message` with its line breaks folded: an error is always a single line on stderr."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def package_version() -> str:
    """The installed distribution's version (the source tree's when run from a checkout)."""
    try:
        return metadata.version("slimsr")
    except metadata.PackageNotFoundError:
        from slimsr import __version__

        return __version__


app = typer.Typer(
    name="slimsr",
    help="Efficient single-image super-resolution: models, evaluation, profiling, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"slimsr {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_show_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Efficient single-image super-resolution: models, evaluation, profiling, export."""
