"""User-facing errors.

Everything a user can cause (a missing file, a checkpoint that fits no architecture, a wrong
scale, an unknown model name) raises a `SlimsrError` subclass. The CLI turns these into one
line `error: ...` and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SlimsrError(Exception):
    """Base class of every error a user can cause and fix."""


class UnknownModelError(SlimsrError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnsupportedScaleError(SlimsrError, ValueError):
    """A scale the architecture does not provide."""


class CheckpointError(SlimsrError):
    """A weights file that is missing, unreadable or does not fit the requested model."""


class UnsupportedDtypeError(SlimsrError, ValueError):
    """fp16 / bf16 asked of a model that is not safe in that precision."""


class CompressionError(SlimsrError, ValueError):
    """A model, density or artifact the compression workflow cannot use."""


class ArchOptionError(SlimsrError, ValueError):
    """An architecture switch (e.g. a paper-ablation kwarg) given a value it does not have."""
