"""Random crops (one origin for the LR, HR and teacher patches) and the eight flips/rotations,
driven by an explicit random generator.

Nothing here touches global random state: each patch gets its own generator (see
`datasets.PatchDataset`), which is what makes data loading reproducible with any number of
workers and resumable mid-run.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
from torch import Tensor

T = TypeVar("T")


def random_crop_origin(h: int, w: int, patch: int, rng: np.random.Generator) -> tuple[int, int]:
    """(top, left) of a random `patch` x `patch` window in an LR image of h x w (two draws)."""
    if h < patch or w < patch:
        raise ValueError(f"LR {w}x{h} is smaller than the patch {patch}")
    top = int(rng.integers(0, h - patch + 1))
    left = int(rng.integers(0, w - patch + 1))
    return top, left


def hr_crop(hr: T, top: int, left: int, patch: int, scale: int) -> T:
    """The HR-resolution window under the LR patch at (top, left): HR images and teacher
    outputs (a tensor or a memory-mapped array) are cut by this one rule."""
    hp = patch * scale
    return hr[..., top * scale : top * scale + hp, left * scale : left * scale + hp]


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
