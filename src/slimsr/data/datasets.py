"""Torch datasets: random training patches, and whole validation images.

`PatchDataset` is indexed by `(image_index, stream_position)` items from `IterationSampler`;
the patch's crop and flips come from a generator seeded by (seed, position), so a given
iteration yields the same batch in any process, with any number of workers, before or after
a resume.

With `teacher` (a distillation run's cached teacher outputs, `slimsr.train.teacher_cache`) an
item is (LR, HR, teacher) patches: the teacher patch is cut from the teacher's output on the
whole LR image by the HR patch's coordinates (`transforms.hr_crop`) and given the same
flip/rotation, and stays float16 (the trainer widens it on the device).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from slimsr.data.folders import (
    DataError,
    ImagePair,
    dataset_from_root,
    find_pairs,
    pair_folders,
)
from slimsr.data.pairs import LRMode, PairStore, load_pair
from slimsr.data.transforms import hr_crop, random_crop_origin, random_dihedral


class PatchDataset(Dataset):
    """(LR patch, HR patch) float32 in [0,1] for `(image_index, stream_position)`; with
    `teacher` (one HR-sized (3, H*s, W*s) array per image) also the teacher patch."""

    def __init__(
        self,
        store: PairStore,
        patch_size: int,
        seed: int,
        *,
        flip: bool = True,
        rot90: bool = True,
        teacher: Sequence[np.ndarray] | None = None,
    ) -> None:
        self.store = store
        self.patch_size = patch_size
        self.scale = store.scale
        self.seed = seed
        self.flip = flip
        self.rot90 = rot90
        self.teacher = teacher

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, ...]:
        index, position = item
        rng = np.random.default_rng([self.seed, 1, position])
        pair = self.store[index]
        p, s = self.patch_size, self.scale
        top, left = random_crop_origin(pair.lr.shape[-2], pair.lr.shape[-1], p, rng)
        patches = [pair.lr[..., top : top + p, left : left + p], hr_crop(pair.hr, top, left, p, s)]
        if self.teacher is not None:
            patches.append(
                torch.from_numpy(np.array(hr_crop(self.teacher[index], top, left, p, s)))
            )
        out = random_dihedral(tuple(patches), rng, flip=self.flip, rot90=self.rot90)
        return (_as_float(out[0]), _as_float(out[1]), *out[2:])


def _as_float(t: Tensor) -> Tensor:
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()


def training_store(
    sources: list[tuple[Path, Path | None]],
    scale: int,
    patch_size: int,
    *,
    lr_mode: LRMode = "float",
    cache: bool = True,
    small_images: Literal["skip", "error"] = "skip",
    max_images: int | None = None,
) -> PairStore:
    """All training pairs of all folders (in the given order, files sorted by name), or the
    first `max_images` of them."""
    pairs: list[ImagePair] = []
    for hr_dir, lr_dir in sources:
        pairs += find_pairs(hr_dir, lr_dir, scale)
    pairs = pairs[:max_images]
    return PairStore(
        pairs, scale, lr_mode, cache=cache, min_lr_size=patch_size, small_images=small_images
    )


@dataclass
class ValImage:
    name: str
    lr: Tensor  # (3,h,w) float32 in [0,1]
    hr: Tensor  # (3,h*s,w*s), modcropped


def validation_images(
    scale: int,
    *,
    root: Path | None = None,
    hr: Path | None = None,
    lr: Path | None = None,
    lr_mode: LRMode = "uint8",
) -> tuple[str, list[ValImage]]:
    """(description, images) of a validation folder, every pair checked up front."""
    if root is not None:
        dataset = dataset_from_root(Path(root), scale)
    else:
        assert hr is not None
        dataset = pair_folders(Path(hr), None if lr is None else Path(lr), scale)
    images = []
    for pair in dataset.pairs:
        if pair.lr is not None and not pair.lr.exists():
            raise DataError(f"{pair.hr}: no LR partner (looked for {pair.lr})")
        loaded = load_pair(pair, scale, lr_mode)
        hr_t, lr_t = loaded.float_pair()
        images.append(ValImage(pair.name, lr_t, hr_t))
    if dataset.pairs[0].lr is not None:
        return f"{dataset.name} (LR {dataset.lr_source})", images
    return f"{dataset.name} (LR generated: MATLAB bicubic, {lr_mode})", images
