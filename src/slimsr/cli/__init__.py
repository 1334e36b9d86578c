"""Command-line interface: `slimsr <command>`; one module per command, kept thin.

Every error a user can cause prints exactly one line `error: ...` on stderr and exits with
code 2, whether stderr is a terminal or not: `SlimsrError`s from the commands, and click's
usage errors (a bad `--tile abc`, a missing argument, an unknown option), which typer would
otherwise print as a four-line block. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import typer

from slimsr.cli import compress, eval, export, info, models, profile, reparam, train, upscale  # noqa: F401  (registers the commands)
from slimsr.cli.app import app, one_line
from slimsr.errors import SlimsrError

try:  # typer >= 0.24 carries its own copy of click
    from typer._click import exceptions as _click_errors
except ImportError:  # pragma: no cover (older typer: click itself)
    from click import exceptions as _click_errors

ClickException = _click_errors.ClickException
UsageError = _click_errors.UsageError
NoArgsIsHelpError = getattr(_click_errors, "NoArgsIsHelpError", ())


def error_exit(message: str, code: int = 2) -> None:
    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI on `argv` (default: `sys.argv[1:]`); never returns normally."""
    try:
        code = app(args=argv, prog_name="slimsr", standalone_mode=False)
    except NoArgsIsHelpError as exc:  # `slimsr` / `slimsr export` alone: the help, as before
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        error_exit(exc.format_message() + where, exc.exit_code)
    except ClickException as exc:
        error_exit(exc.format_message(), exc.exit_code)
    except SlimsrError as exc:
        error_exit(str(exc))
    except (KeyboardInterrupt, typer.Abort):
        error_exit("interrupted", 130)
    raise SystemExit(code if isinstance(code, int) else 0)


__all__ = ["app", "main"]
