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
from torch import Tensor, nn

from slimsr.imaging import Image, imresize, read_image, write_like
from slimsr.model import SRModel
from slimsr.tiling import count_tiles, upscale_tiled

DEFAULT_MEMORY_BUDGET_MB = 2048
"""Working memory one forward pass may use before the image is tiled automatically."""

MIN_RETRY_TILE = 16
"""After a CUDA out-of-memory error the tile is halved down to this side, then the error stands."""

_PROBE = 32


def activation_bytes_per_pixel(model: nn.Module, dtype: torch.dtype = torch.float32) -> float:
    """Estimated peak working memory of one forward pass, in bytes per LR input pixel.

    Measured, not guessed: a 32x32 probe runs with forward hooks that record every leaf
    module's output size; the peak is taken as the two largest outputs alive together plus
    the network's output (a conv reads one big tensor while writing the next). Exact for plain
    conv stacks, within ~2x for attention models, which is what an auto-tiling threshold needs.
    """
    sizes: list[int] = []

    def record(_m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, Tensor):
            sizes.append(out.numel())

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(record) for m in leaves]
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x = torch.rand(
            1, 3, _PROBE, _PROBE, device=device, dtype=param.dtype if param is not None else dtype
        )
        with torch.inference_mode():
            y = model(x)
    finally:
        for h in hooks:
            h.remove()
    top = sorted(sizes, reverse=True)[:2]
    elems = sum(top) + y.numel() + x.numel()
    return elems * torch.finfo(dtype).bits / 8 / (_PROBE * _PROBE)


def auto_tile_for_budget(bytes_per_pixel: float, budget_mb: float, multiple: int = 8) -> int:
    """Largest square LR tile whose forward fits the budget (at least 64 px)."""
    side = int((budget_mb * 2**20 / max(bytes_per_pixel, 1.0)) ** 0.5)
    return max(64, side // multiple * multiple)


@dataclass
class UpscaleOptions:
    tile: int | None = None
    """LR tile size; None: automatic (tile only when the forward would exceed the budget); 0:
    never tile."""
    overlap: int = 16
    outscale: float | None = None
    """Final scale relative to the input; the network's output is resized to it (bicubic)."""
    device: torch.device | str = "cpu"
    dtype: torch.dtype = torch.float32
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB
    bytes_per_pixel: float | None = None
    """The model's working memory per LR pixel (`activation_bytes_per_pixel`); None: measured
    on first use."""


def choose_tile(h: int, w: int, opts: UpscaleOptions, model: nn.Module | None = None) -> int:
    """The tile to use: the user's, or automatic from the memory budget."""
    if opts.tile is not None:
        return opts.tile
    if opts.bytes_per_pixel is None:
        if model is None or not isinstance(model, nn.Module):
            return 0  # a runtime we cannot probe (ONNX/TFLite): whole image
        opts.bytes_per_pixel = activation_bytes_per_pixel(model, opts.dtype)
    if h * w * opts.bytes_per_pixel <= opts.memory_budget_mb * 2**20:
        return 0
    return auto_tile_for_budget(opts.bytes_per_pixel, opts.memory_budget_mb)


def planned_tiles(h: int, w: int, opts: UpscaleOptions, model: nn.Module | None = None) -> int:
    tile = choose_tile(h, w, opts, model)
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
    tile = choose_tile(h, w, opts, model)
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
