"""Paired random crops and the eight flips/rotations, driven by an explicit random generator.

Nothing here touches global random state: each patch gets its own generator (see
`datasets.PatchDataset`), which is what makes data loading reproducible with any number of
workers and resumable mid-run.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor


def paired_random_crop(
    lr: Tensor, hr: Tensor, patch: int, scale: int, rng: np.random.Generator
) -> tuple[Tensor, Tensor]:
    """An LR patch of `patch` px and the HR patch at the same place (`patch * scale` px)."""
    h, w = lr.shape[-2:]
    if h < patch or w < patch:
        raise ValueError(f"LR {w}x{h} is smaller than the patch {patch}")
    top = int(rng.integers(0, h - patch + 1))
    left = int(rng.integers(0, w - patch + 1))
    hp = patch * scale
    return (
        lr[..., top : top + patch, left : left + patch],
        hr[..., top * scale : top * scale + hp, left * scale : left * scale + hp],
    )


def random_dihedral(
    images: tuple[Tensor, ...], rng: np.random.Generator, *, flip: bool, rot90: bool
) -> tuple[Tensor, ...]:
    """Same random horizontal flip / vertical flip / transpose for every image.

    Vertical flip plus transpose give the 90/180/270-degree rotations (BasicSR's `augment`).
    Three draws are always made so a recipe that turns one off keeps the others' stream.
    """
    hflip, vflip, transpose = (rng.random(3) < 0.5).tolist()
    out = []
    for t in images:
        if flip and hflip:
            t = t.flip(-1)
        if rot90 and vflip:
            t = t.flip(-2)
        if rot90 and transpose:
            t = t.transpose(-1, -2)
        out.append(t.contiguous())
    return tuple(out)
