"""Checks of command-line values and output paths, made before any work starts.

A bad value must fail in the first second with one line naming it, not after a model has
loaded or half the images are written; and an output must never land outside the folder the
user named. The tiling limits live here, not in `slimsr.upscale`, because they are about
what a user may ask for, while the library keeps accepting any tile for experiments.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from slimsr.errors import SlimsrError, UnsupportedDtypeError

MAX_OUTSCALE = 16.0
"""Largest `--outscale`: beyond it an 8-bit photo only gets blurrier while memory explodes."""

MIN_TILE = 32
"""Smallest `--tile` (LR px). Measured with the bundled x4 model on Set5 against whole-image
output: 16 px tiles move 0.5-0.9% of pixels by more than 1/255 (visible seams), 24 px at most
0.96/255, 32 px at most 0.22/255."""


def check_outscale(outscale: float | None) -> None:
    if outscale is None:
        return
    if not math.isfinite(outscale) or not 0 < outscale <= MAX_OUTSCALE:
        raise SlimsrError(f"--outscale must be a number in (0, {MAX_OUTSCALE:g}], not {outscale:g}")


def min_tile(model: object, overlap: int) -> int:
    """Smallest tile that gives seam-free output with `model` and `overlap` (LR px).

    At least `MIN_TILE`, twice the overlap (the blend needs both neighbours' ramps inside
    one tile), four times the model's input size multiple (SwinIR windows) and twice its
    minimum input size (ESA pooling).
    """
    info = getattr(model, "info", None)
    multiple = getattr(info, "size_multiple", 1)
    smallest = getattr(info, "min_size", 1)
    return max(MIN_TILE, 2 * overlap, 4 * multiple, 2 * smallest)


def check_tile(tile: int | None, overlap: int, model: object) -> None:
    """`--tile` is None (auto), 0 (never) or at least `min_tile`; `--tile-overlap` >= 0."""
    if overlap < 0:
        raise SlimsrError(f"--tile-overlap must be 0 or more, not {overlap}")
    if tile is None or tile == 0:
        return
    least = min_tile(model, overlap)
    if tile < least:
        name = getattr(model, "name", None)
        what = f" for {name}" if name else ""
        raise SlimsrError(
            f"--tile {tile} is too small{what} with --tile-overlap {overlap}: use 0 "
            f"(no tiling) or at least {least} (smaller tiles leave visible seams)"
        )


def check_file_name_part(value: str, option: str) -> None:
    """A piece of a file name (`--suffix`): no folders, so outputs stay in the output folder."""
    seps = {os.sep, "/", "\\"} | ({os.altsep} if os.altsep else set())
    if any(s in value for s in seps) or ".." in value or "\0" in value:
        raise SlimsrError(
            f"{option} {value!r}: must be part of a file name (no '/', '\\' or '..'), so "
            "outputs stay inside the output folder"
        )


def check_output_folder(out: Path, option: str = "-o") -> None:
    """`out` is a folder, or can be created as one (no file in the way)."""
    if out.exists():
        if not out.is_dir():
            raise SlimsrError(
                f"{out}: exists and is not a folder ({option} names the output folder)"
            )
        return
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise SlimsrError(f"{out}: cannot create this folder, {parent} is a file")


def inside(path: Path, folder: Path) -> bool:
    """True when `path` resolves to a place inside `folder` (symlinks followed)."""
    return path.resolve().is_relative_to(folder.resolve())


def resolve_device(device: str) -> torch.device:
    """`--device` of every command: auto (CUDA if available, else the CPU), cpu, cuda, cuda:N."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SlimsrError("--device cuda asked for, but no CUDA device is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise SlimsrError(f"unknown device {device!r} (use auto, cpu or cuda)") from None


def resolve_dtype(fp16: bool, bf16: bool) -> torch.dtype:
    """`--fp16` / `--bf16` -> the dtype (whether the model and device allow it is checked by
    `slimsr.inference_form.check_inference_dtype`, the library's one refusal)."""
    if fp16 and bf16:
        raise SlimsrError("choose one of --fp16 and --bf16")
    return torch.float16 if fp16 else torch.bfloat16 if bf16 else torch.float32


def check_precision(model: object, dtype: torch.dtype, device: torch.device) -> None:
    """`--fp16` / `--bf16` for this model on this device, refused before any work.

    The rule is the library's (`slimsr.inference_form.check_inference_dtype`: float16 needs CUDA,
    architectures refuse unsafe precisions); the CLI only names the option in the message.
    """
    from slimsr.inference_form import check_inference_dtype

    try:
        check_inference_dtype(model, dtype, device)  # type: ignore[arg-type]
    except UnsupportedDtypeError as exc:
        option = "--fp16" if dtype == torch.float16 else "--bf16"
        raise SlimsrError(f"{option}: {exc}") from None
