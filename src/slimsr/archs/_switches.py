"""Validation of architecture switches (the paper-ablation kwargs of BSRN, FMEN, ABPN).

One rule for all of them: a switch takes one of a fixed set of string values, and anything
else is a user error that names the switch and the allowed values on one line.
"""

from __future__ import annotations

from collections.abc import Sequence

from slimsr.errors import ArchOptionError


def choose(arch: str, switch: str, value: object, allowed: Sequence[str]) -> str:
    """`value` if it is one of `allowed`, else an `ArchOptionError` naming them."""
    if not isinstance(value, str) or value not in allowed:
        raise ArchOptionError(f"{arch}: {switch}={value!r} is not one of {', '.join(allowed)}")
    return value


def flag(arch: str, switch: str, value: object) -> bool:
    """A boolean switch; strings such as "false" are refused rather than read as True."""
    if not isinstance(value, bool):
        raise ArchOptionError(f"{arch}: {switch}={value!r} is not one of true, false")
    return value
