"""Training images: check HR/LR pairs up front, decode them once (pairing: `folders`).

Every pair is checked before training starts (BasicSR users meet "Scale mismatches" hours in,
Real-ESRGAN#409): an LR image must be exactly the HR image modcropped to the scale and divided
by it, otherwise the error names both files and their sizes. HR-only folders get their LR from
MATLAB bicubic (`slimsr.imaging.imresize`) of the whole modcropped image, made once when the
image is cached, so a patch is identical to a patch of an LR file made offline.

8-bit images are cached as uint8 (a quarter of float32), generated float LR as float32.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from slimsr.data.folders import DataError, ImagePair
from slimsr.fileio import file_sha256
from slimsr.imaging import imresize, modcrop, read_image

LRMode = Literal["float", "uint8"]


def file_identity(path: Path | None) -> list[Any] | None:
    """[size, sha256] of an image file's bytes (None: no file, LR made from HR)."""
    return None if path is None else [path.stat().st_size, file_sha256(path)]


@dataclass
class LoadedPair:
    """Decoded pixels: HR modcropped to exactly scale x LR; uint8 or float32 (C,H,W)."""

    hr: Tensor
    lr: Tensor

    def float_pair(self) -> tuple[Tensor, Tensor]:
        return _to_float(self.hr), _to_float(self.lr)

    @property
    def nbytes(self) -> int:
        return self.hr.numel() * self.hr.element_size() + self.lr.numel() * self.lr.element_size()


def _to_float(t: Tensor) -> Tensor:
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t


def _compact(t: Tensor, bit_depth: int) -> Tensor:
    """uint8 storage for 8-bit pixels (exactly k/255), float32 otherwise."""
    if bit_depth == 8:
        return (t * 255.0).round_().to(torch.uint8)
    return t.contiguous()


def load_pair(pair: ImagePair, scale: int, lr_mode: LRMode = "float") -> LoadedPair:
    """Decode and check one pair; make the LR when the pair has none."""
    hr_img = read_image(pair.hr)
    hr = hr_img.rgb
    h, w = hr.shape[-2] // scale, hr.shape[-1] // scale
    if h == 0 or w == 0:
        raise DataError(
            f"{pair.hr}: {hr.shape[-1]}x{hr.shape[-2]} is smaller than the scale {scale}"
        )
    hr = modcrop(hr, scale)
    if pair.lr is None:
        lr = imresize(hr, size=(h, w), mode=lr_mode)
        lr_stored = _compact(lr, 8) if lr_mode == "uint8" else lr.contiguous()
        return LoadedPair(_compact(hr, hr_img.bit_depth), lr_stored)
    lr_img = read_image(pair.lr)
    lr = lr_img.rgb
    if (lr.shape[-2], lr.shape[-1]) != (h, w):
        raise DataError(
            f"bad pair {pair.hr.name} / {pair.lr.name}: LR is {lr.shape[-1]}x{lr.shape[-2]} but HR "
            f"{hr_img.width}x{hr_img.height} at x{scale} needs LR {w}x{h} ({pair.hr.parent} / "
            f"{pair.lr.parent})"
        )
    return LoadedPair(_compact(hr, hr_img.bit_depth), _compact(lr, lr_img.bit_depth))


class PairStore:
    """The training pairs, decoded once into RAM (`cache=True`) or on every access.

    Every pair is decoded and checked at construction either way, so a bad file fails before
    the run starts; without the cache the pixels are then dropped and decoded again per patch.
    """

    def __init__(
        self,
        pairs: list[ImagePair],
        scale: int,
        lr_mode: LRMode = "float",
        *,
        cache: bool = True,
        min_lr_size: int = 1,
        small_images: Literal["skip", "error"] = "skip",
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.scale = scale
        self.lr_mode: LRMode = lr_mode
        self.cache = cache
        self.pairs: list[ImagePair] = []
        self.skipped: list[ImagePair] = []
        self._loaded: list[LoadedPair] = []
        self.nbytes = 0
        start = time.perf_counter()
        for i, pair in enumerate(pairs):
            loaded = load_pair(pair, scale, lr_mode)
            lh, lw = loaded.lr.shape[-2:]
            if min(lh, lw) < min_lr_size:
                if small_images == "error":
                    raise DataError(
                        f"{pair.hr}: LR {lw}x{lh} is smaller than the {min_lr_size}-pixel patch "
                        "(set data.train.small_images: skip to leave such images out)"
                    )
                self.skipped.append(pair)
                continue
            self.pairs.append(pair)
            if cache:
                self._loaded.append(loaded)
                self.nbytes += loaded.nbytes
            if progress is not None:
                progress(i + 1, len(pairs))
        self.seconds = time.perf_counter() - start
        if not self.pairs:
            raise DataError(
                f"no training image is at least {min_lr_size} px (LR) on each side: "
                "lower data.train.patch_size"
            )

    def __len__(self) -> int:
        return len(self.pairs)

    @cached_property
    def identities(self) -> list[list[list[Any] | None]]:
        """[HR, LR] identity (`file_identity`) of every pair, in stream order: what the
        teacher cache's outputs and a resumed run's data stream depend on, not where the
        folders are."""
        return [[file_identity(p.hr), file_identity(p.lr)] for p in self.pairs]

    @cached_property
    def images_sha256(self) -> str:
        """One sha256 of `identities`: tells a run restored on another machine (its folders
        elsewhere) that it trains on the same images, which the folders' paths cannot."""
        return hashlib.sha256(json.dumps(self.identities).encode()).hexdigest()

    def __getitem__(self, index: int) -> LoadedPair:
        if self.cache:
            return self._loaded[index]
        return load_pair(self.pairs[index], self.scale, self.lr_mode)
