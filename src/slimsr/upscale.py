"""Upscaling images as people have them: any size, alpha, gray, 16-bit, ICC, EXIF.

The network sees RGB in [0,1]; alpha is upscaled separately with bicubic (a network trained on
photographs has no business inventing transparency) and reattached; gray inputs come back gray
and 16-bit PNGs stay 16-bit. Large images are tiled automatically so memory stays bounded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from slimsr.imaging import Image, imresize, read_image, write_like
from slimsr.model import SRModel
from slimsr.tiling import count_tiles, upscale_tiled

DEFAULT_MAX_PIXELS = 512 * 512
"""LR pixels above which a CPU run is tiled automatically (keeps peak RSS roughly flat)."""

MIN_RETRY_TILE = 16
"""After a CUDA out-of-memory error the tile is halved down to this side, then the error stands."""


@dataclass
class UpscaleOptions:
    tile: int | None = None
    """LR tile size; None: automatic (tile only images above `max_pixels`); 0: never tile."""
    overlap: int = 16
    outscale: float | None = None
    """Final scale relative to the input; the network's output is resized to it (bicubic)."""
    device: torch.device | str = "cpu"
    dtype: torch.dtype = torch.float32
    max_pixels: int = DEFAULT_MAX_PIXELS
    auto_tile: int = 384


def choose_tile(h: int, w: int, opts: UpscaleOptions) -> int:
    if opts.tile is not None:
        return opts.tile
    return opts.auto_tile if h * w > opts.max_pixels else 0


def planned_tiles(h: int, w: int, opts: UpscaleOptions) -> int:
    tile = choose_tile(h, w, opts)
    return 1 if tile <= 0 else count_tiles(h, w, tile, opts.overlap)


def upscale_rgb(
    model: SRModel,
    rgb: Tensor,
    opts: UpscaleOptions,
    on_tile: Callable[[], None] | None = None,
) -> Tensor:
    """(3,H,W) or (1,3,H,W) in [0,1] -> upscaled (3,H',W') in [0,1], float32 on the CPU."""
    x = rgb[None] if rgb.dim() == 3 else rgb
    h, w = x.shape[-2:]
    tile = choose_tile(h, w, opts)
    x = x.to(device=opts.device, dtype=opts.dtype)
    while True:
        try:
            with torch.inference_mode():
                y = upscale_tiled(model, x, model.scale, tile, opts.overlap, on_tile)
            break
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            tile = (max(h, w) if tile <= 0 else tile) // 2
            if tile < MIN_RETRY_TILE:
                raise
    y = y.float().cpu()
    if opts.outscale is not None and opts.outscale != model.scale:
        size = (round(h * opts.outscale), round(w * opts.outscale))
        y = imresize(y, size=size)
    with torch.inference_mode(y.is_inference()):  # in place: y is the largest buffer we hold
        return y.clamp_(0, 1)[0]


def upscale_alpha(alpha: Tensor, size: tuple[int, int]) -> Tensor:
    return imresize(alpha[None].float(), size=size)[0].clamp(0, 1)


def upscale_loaded(
    model: SRModel, image: Image, opts: UpscaleOptions, on_tile: Callable[[], None] | None = None
) -> tuple[Tensor, Tensor | None]:
    """RGB result and, when the image had one, its upscaled alpha."""
    out = upscale_rgb(model, image.rgb, opts, on_tile)
    alpha = image.alpha
    if alpha is not None:
        alpha = upscale_alpha(alpha, (out.shape[-2], out.shape[-1]))
    return out, alpha


def upscale_file(
    model: SRModel,
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    opts: UpscaleOptions | None = None,
    on_tile: Callable[[], None] | None = None,
    quality: int = 95,
) -> Path:
    """Read `src`, upscale, write `dst` atomically in the source's form; never touches `src`."""
    image = read_image(src)
    out, alpha = upscale_loaded(model, image, opts or UpscaleOptions(), on_tile)
    return write_like(out, dst, image, alpha=alpha, quality=quality)


def upscale_image(image, model: SRModel, tile: int | None = None, overlap: int = 16):
    """PIL image (or a path) in, PIL image out: the one-liner for notebooks and scripts."""
    import numpy as np
    from PIL import Image as PILImage

    if isinstance(image, (str, os.PathLike)):
        rgb = read_image(image).rgb
    else:
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        rgb = torch.from_numpy(arr).permute(2, 0, 1)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    opts = UpscaleOptions(tile=tile, overlap=overlap, device=device, dtype=dtype)
    out = upscale_rgb(model, rgb, opts)
    arr = (out.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    return PILImage.fromarray(arr)
