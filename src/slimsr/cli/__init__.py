"""Command-line interface: `slimsr <command>`; one module per command, kept thin.

User errors (`SlimsrError`) print one line `error: ...` on stderr and exit with code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

from slimsr.cli import compress, eval, export, info, models, profile, reparam, train, upscale  # noqa: F401  (registers the commands)
from slimsr.cli.app import app
from slimsr.errors import SlimsrError


def main() -> None:
    try:
        app()
    except SlimsrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


__all__ = ["app", "main"]
