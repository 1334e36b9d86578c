"""Small helpers detectors share: key conditions and shape arithmetic.

Detectors must be cheap and must not raise on foreign state dicts: they return None when the
keys are not theirs, and read hyper-parameters from tensor shapes when they are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import torch


def has_all(state_dict: Mapping[str, torch.Tensor], keys: Iterable[str]) -> bool:
    return all(k in state_dict for k in keys)


def indices(state_dict: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    """Sorted distinct integers captured by `pattern` (one `(\\d+)` group) over the keys."""
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in state_dict if (m := rx.fullmatch(k))}
    return sorted(found)


def count_indices(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    """How many consecutive indices 0..n-1 (or 1..n) the keys matching `pattern` use."""
    return len(indices(state_dict, pattern))


def pixelshuffle_scale(out_channels: int, colors: int = 3) -> int | None:
    """The scale s of a conv producing `colors * s * s` channels for a PixelShuffle, or None."""
    if out_channels % colors:
        return None
    s = math.isqrt(out_channels // colors)
    return s if s * s * colors == out_channels else None


def differing(found: Mapping[str, object], defaults: Mapping[str, object]) -> dict[str, object]:
    """The hyper-parameters read from the shapes that differ from the builder's defaults: what
    a `Detection` carries as kwargs (the published configuration detects with none)."""
    return {k: v for k, v in found.items() if v != defaults[k]}
