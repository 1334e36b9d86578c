"""Upscaling images as people have them: any size, alpha, gray, 16-bit, ICC, EXIF.

The network sees RGB in [0,1] with `BORDER` LR pixels of mirrored context on every side (see
`slimsr.model`); alpha is upscaled separately with bicubic (a network trained on photographs
has no business inventing transparency) and reattached; gray inputs come back gray and 16-bit
PNGs stay 16-bit.

Memory: `upscale_samples` (what `slimsr upscale` runs) writes straight into one preallocated
uint8/uint16 (H', W', C) array. Tiles are blended in a float32 strip one row of tiles high
(`tiling.tiled_strips`); each finished strip is resized (`--outscale`, bicubic, exact strip
by strip), clamped, turned gray if the source was, quantised into the array and dropped, and
alpha goes the same way. No full-size float image exists, and the tile size is derived from
`--max-memory` after the output array and the strip are paid for.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from slimsr.fileio import atomic_path
from slimsr.imaging import SUFFIXES, Image, imresize, read_image
from slimsr.imaging.io import (
    ImageError,
    PngStream,
    check_output,
    from_rgb_tensor,
    output_bit_depth,
    quantize,
    write_samples_like,
)
from slimsr.imaging.resize import _device_weights, _resize_dim
from slimsr.inference_form import prepare_for_inference
from slimsr.model import BORDER, MirrorPadded, SRModel, pad_border
from slimsr.tiling import count_tiles, tiled_strips

DEFAULT_MEMORY_BUDGET_MB = 2048
"""Memory one `upscale` of an image may use (output array, strips, forward pass)."""

MIN_RETRY_TILE = 16
"""After a CUDA out-of-memory error the tile is halved down to this side, then the error stands."""

MIN_TILE = 64
"""Smallest automatic tile: below it the overlap dominates the work."""

AUTO_TILE_MAX = 768
"""Largest automatic tile side (LR px, border included). Bigger tiles are no faster on a CPU
and would make the forward pass, the largest buffer, grow with the image up to the whole
budget: capped, peak memory stays nearly flat in the image size (benchmarks/bench_upscale.py
--command: 512 px input vs 4096x2160 output)."""

RUNNER_BYTES_PER_PIXEL = 4096.0
"""Working memory assumed per LR pixel for ONNX / TFLite files, which cannot be probed with
hooks: 4 KiB is 8 float32 feature maps of 64 channels alive at once plus the x4 output, more
than any network the project exports needs (EDSR-mini x4 measures ~0.6 KiB)."""

ROW_CHUNK = 64
"""Output rows quantised at a time (bounds the float64 temporaries of `quantize`)."""

_PROBE = 32


def _raw(model: object) -> Callable[[Tensor], Tensor]:
    """The model without its border handling (the pipeline pads the whole image once)."""
    return getattr(model, "raw", model)  # type: ignore[return-value]


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
            y = _raw(model)(x)
    finally:
        for h in hooks:
            h.remove()
    top = sorted(sizes, reverse=True)[:2]
    elems = sum(top) + y.numel() + x.numel()
    return elems * torch.finfo(dtype).bits / 8 / (_PROBE * _PROBE)


def auto_tile_for_budget(
    bytes_per_pixel: float, budget_mb: float, multiple: int = 8, strip_bytes_per_row: float = 0.0
) -> int:
    """Largest square LR tile t with t*t*bytes_per_pixel + t*strip_bytes_per_row <= budget.

    `strip_bytes_per_row` is what one LR row of tiles costs in the blending strip (it spans the
    output width). At least `MIN_TILE` px, even when the budget is smaller than that needs.
    """
    a, b, c = max(bytes_per_pixel, 1.0), strip_bytes_per_row, budget_mb * 2**20
    side = int((-b + (b * b + 4 * a * max(c, 0.0)) ** 0.5) / (2 * a))
    return max(MIN_TILE, side // multiple * multiple)


@dataclass
class UpscaleOptions:
    tile: int | None = None
    """LR tile size; None: automatic (tile only when the image would exceed the budget); 0:
    never tile."""
    overlap: int = 16
    outscale: float | None = None
    """Final scale relative to the input; the network's output is resized to it (bicubic)."""
    device: torch.device | str = "cpu"
    dtype: torch.dtype = torch.float32
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB
    """The whole upscale's budget: output array, blending strip and forward pass together."""
    bytes_per_pixel: float | None = None
    """The model's working memory per LR pixel (`activation_bytes_per_pixel`); None: measured
    on first use (for ONNX / TFLite runners their `bytes_per_pixel`, set where the runner was
    built from a PyTorch model, else `RUNNER_BYTES_PER_PIXEL`)."""


def output_size(h: int, w: int, scale: int, outscale: float | None) -> tuple[int, int]:
    if outscale is None or outscale == scale:
        return h * scale, w * scale
    return round(h * outscale), round(w * outscale)


def fixed_bytes(
    h: int, w: int, scale: int, opts: UpscaleOptions, output_in_memory: bool = True
) -> float:
    """Memory an upscale needs whatever the tile: the float32 LR input (up to 4 channels;
    tiles gather their mirrored border themselves, `MirrorPadded`) and, unless the result is
    streamed to a PNG, the output array (up to 4 uint8 channels) and the encoder's copy of it
    (Pillow holds 4 bytes a pixel)."""
    oh, ow = output_size(h, w, scale, opts.outscale)
    lr = 4 * 4 * h * w
    return (oh * ow * 8 if output_in_memory else 0) + lr


def choose_tile(
    h: int,
    w: int,
    opts: UpscaleOptions,
    model: object | None = None,
    output_in_memory: bool = True,
) -> int:
    """The tile to use: the user's, or automatic from the memory budget (0: whole image).

    The budget left after `fixed_bytes` pays for the forward pass of one tile and the float32
    blending strip (one row of tiles by the output width, 3 channels, plus the strip being
    handed on: counted twice).
    """
    if opts.tile is not None:
        return opts.tile
    if opts.bytes_per_pixel is None:
        if isinstance(model, nn.Module):
            opts.bytes_per_pixel = activation_bytes_per_pixel(model, opts.dtype)
        else:  # a runtime: what its builder measured, else a conservative constant
            known = getattr(model, "bytes_per_pixel", None)
            opts.bytes_per_pixel = float(known) if known else RUNNER_BYTES_PER_PIXEL
    scale = int(getattr(model, "scale", 4))
    ph, pw = h + 2 * BORDER, w + 2 * BORDER
    left = opts.memory_budget_mb * 2**20 - fixed_bytes(h, w, scale, opts, output_in_memory)
    if max(ph, pw) <= AUTO_TILE_MAX and ph * pw * opts.bytes_per_pixel <= left:
        return 0
    strip_row = 2 * 3 * 4 * scale * scale * pw
    return min(
        AUTO_TILE_MAX, auto_tile_for_budget(opts.bytes_per_pixel, left / 2**20, 8, strip_row)
    )


def planned_tiles(
    h: int,
    w: int,
    opts: UpscaleOptions,
    model: object | None = None,
    output_in_memory: bool = True,
) -> int:
    tile = choose_tile(h, w, opts, model, output_in_memory)
    ph, pw = h + 2 * BORDER, w + 2 * BORDER
    return 1 if tile <= 0 else count_tiles(ph, pw, tile, opts.overlap)


def network_strips(
    model: Any,
    rgb: Tensor,
    opts: UpscaleOptions,
    tile: int,
    on_tile: Callable[[], None] | None = None,
) -> Iterator[tuple[int, Tensor]]:
    """The network's output of (3,H,W) `rgb` as `(first_row, (3,rows,W*s) float32 CPU)` strips.

    The image is padded by `BORDER` once and tiled (or not) as a whole; every strip is cropped
    back to the image. Values are unclamped, as the network gave them. Run it under
    `torch.inference_mode()` (a context entered inside a generator would leak to its caller).
    """
    scale = int(model.scale)
    h, w = rgb.shape[-2:]
    m = BORDER * scale
    lo, hi = m, m + h * scale
    if tile <= 0 or (tile >= h + 2 * BORDER and tile >= w + 2 * BORDER):
        x = pad_border(rgb[None].to(device=opts.device, dtype=opts.dtype), BORDER)
        y = _raw(model)(x)
        del x
        if on_tile is not None:
            on_tile()
        for r in range(lo, hi, ROW_CHUNK):
            e = min(r + ROW_CHUNK, hi)
            yield r - lo, y[0, :, r:e, m : m + w * scale].float().cpu()
        return
    x = MirrorPadded(rgb[None], BORDER, opts.device, opts.dtype)
    for r0, strip in tiled_strips(_raw(model), x, scale, tile, opts.overlap, on_tile):
        a, b = max(r0, lo), min(r0 + strip.shape[-2], hi)
        if a < b:
            rows = strip[0, :, a - r0 : b - r0, m : m + w * scale].float().cpu()
            del strip  # a generator keeps its locals across `yield`: drop the strip's buffer
            yield a - lo, rows
            del rows


class RowResizer:
    """MATLAB bicubic `imresize` of an image that arrives as strips of rows, exactly.

    Each output row is a weighted sum of a few input rows (`resize_weights`), so it is produced
    as soon as those rows have arrived, and input rows no later output row needs are dropped.
    The passes run in `imresize`'s order with its weights and operation order, so the result
    is bit-identical to resizing the whole image at once (tests/test_upscale.py checks).
    """

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        (self.in_h, self.in_w), (self.out_h, self.out_w) = in_hw, out_hw
        self.sh, self.sw = self.out_h / self.in_h, self.out_w / self.in_w
        self.w_first = self.sw < self.sh  # imresize resizes the smaller scale first, H on ties
        self.wts, self.idx = _device_weights(
            self.in_h, self.out_h, self.sh, "symmetric", torch.device("cpu"), torch.float32
        )
        self.need = self.idx.max(dim=1).values  # last input row each output row needs
        low = self.idx.min(dim=1).values.flip(0).cummin(0).values.flip(0)
        self.keep_from = torch.cat([low, torch.tensor([self.in_h])])  # first row still needed
        self.buf: Tensor | None = None
        self.buf_start = 0
        self.next_out = 0

    def push(self, strip: Tensor) -> Iterator[tuple[int, Tensor]]:
        """Feed the next input rows (C,rows,in_w); yields finished `(first_row, rows)` of output."""
        if self.w_first:
            strip = _resize_dim(strip, -1, self.out_w, self.sw, "symmetric")
        self.buf = strip if self.buf is None else torch.cat([self.buf, strip], dim=-2)
        received = self.buf_start + self.buf.shape[-2]
        end = self.next_out
        while end < self.out_h and int(self.need[end]) < received:
            end += 1
        if end == self.next_out:
            return
        r0, self.next_out = self.next_out, end
        idx, wts = self.idx[r0:end] - self.buf_start, self.wts[r0:end]
        out = self.buf.index_select(-2, idx[:, 0]).mul_(wts[:, 0, None])
        for p in range(1, wts.shape[1]):
            out.add_(self.buf.index_select(-2, idx[:, p]).mul_(wts[:, p, None]))
        if not self.w_first:
            out = _resize_dim(out, -1, self.out_w, self.sw, "symmetric")
        drop = int(self.keep_from[end]) - self.buf_start
        if drop > 0:
            self.buf = self.buf[..., drop:, :]
            self.buf_start += drop
        yield r0, out


def _resized(
    strips: Iterator[tuple[int, Tensor]], in_hw: tuple[int, int], out_hw: tuple[int, int]
) -> Iterator[tuple[int, Tensor]]:
    if in_hw == out_hw:
        yield from strips
        return
    resizer = RowResizer(in_hw, out_hw)
    for _, strip in strips:
        yield from resizer.push(strip)


def _alpha_strips(alpha: Tensor, out_hw: tuple[int, int]) -> Iterator[tuple[int, Tensor]]:
    """The source alpha (1,H,W) resized to `out_hw` strip by strip, clamped to [0,1]."""
    h, w = alpha.shape[-2:]
    chunks = ((r, alpha[:, r : r + ROW_CHUNK].float()) for r in range(0, h, ROW_CHUNK))
    for r0, a in _resized(chunks, (h, w), out_hw):
        yield r0, a.clamp(0, 1)


class _RowQueue:
    """Rows of an in-order strip iterator handed out by range (aligns alpha with RGB strips)."""

    def __init__(self, strips: Iterator[tuple[int, np.ndarray]]) -> None:
        self.strips, self.buf, self.start = strips, None, 0

    def take(self, a: int, b: int) -> np.ndarray:
        while self.buf is None or self.start + len(self.buf) < b:
            _, rows = next(self.strips)
            self.buf = rows if self.buf is None else np.concatenate([self.buf, rows])
        out = self.buf[a - self.start : b - self.start]
        self.buf, self.start = self.buf[b - self.start :], b
        return out


def upscale_rows(
    model: Any,
    image: Image,
    opts: UpscaleOptions,
    tile: int,
    on_tile: Callable[[], None] | None = None,
    bit_depth: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """The upscaled image as `(first_row, (rows, W', C) uint8/uint16)` strips, top to bottom,
    in the source's layout (gray, alpha). Run it under `torch.inference_mode()`.

    Every strip is final: resized (`--outscale`), clamped, turned gray if the source was and
    quantised, then dropped by the caller; no full-size float image exists (module docstring).
    """
    bits = bit_depth or image.bit_depth
    scale = int(model.scale)
    h, w = image.height, image.width
    out_hw = output_size(h, w, scale, opts.outscale)
    alpha = None
    if image.alpha is not None:
        alpha = _RowQueue((r, quantize(a, bits)) for r, a in _alpha_strips(image.alpha, out_hw))
    strips = network_strips(model, image.rgb, opts, tile, on_tile)
    for r0, y in _resized(strips, (h * scale, w * scale), out_hw):
        y = from_rgb_tensor(y.clamp_(0, 1), gray=image.was_gray)
        for r in range(0, y.shape[-2], ROW_CHUNK):
            rows = quantize(y[:, r : r + ROW_CHUNK], bits)
            a = r0 + r
            if alpha is not None:
                rows = np.concatenate([rows, alpha.take(a, a + rows.shape[0])], axis=-1)
            yield a, rows
        del y  # lets the strip's buffer go before the next row of tiles runs


def _retrying(h: int, w: int, tile: int, attempt: Callable[[int], Any]) -> Any:
    """`attempt(tile)`, halving the tile after each CUDA out-of-memory error."""
    while True:
        try:
            return attempt(tile)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            tile = (max(h, w) + 2 * BORDER if tile <= 0 else tile) // 2
            if tile < MIN_RETRY_TILE:
                raise


def upscale_samples(
    model: Any,
    image: Image,
    opts: UpscaleOptions,
    on_tile: Callable[[], None] | None = None,
    bit_depth: int | None = None,
) -> np.ndarray:
    """The upscaled image as one HWC uint8/uint16 array in the source's layout (gray, alpha).

    Equal to quantising `upscale_loaded`'s float result with `write_like` (same values, bit for
    bit) without a full-size float copy. `bit_depth` defaults to the source's.
    """
    bits = bit_depth or image.bit_depth
    out_hw = output_size(image.height, image.width, int(model.scale), opts.outscale)
    channels = (1 if image.was_gray else 3) + (1 if image.had_alpha else 0)
    out = np.empty((*out_hw, channels), np.uint8 if bits == 8 else np.uint16)

    def attempt(tile: int) -> np.ndarray:
        with torch.inference_mode():
            for r0, rows in upscale_rows(model, image, opts, tile, on_tile, bits):
                out[r0 : r0 + rows.shape[0]] = rows
        return out

    return _retrying(
        image.height, image.width, choose_tile(image.height, image.width, opts, model), attempt
    )


def streams_to_png(dst: str | os.PathLike[str]) -> bool:
    """True when `upscale_to_file` streams the result (PNG): no output array in memory."""
    return SUFFIXES.get(Path(dst).suffix.lower()) == "PNG"


def upscale_to_file(
    model: Any,
    image: Image,
    dst: str | os.PathLike[str],
    opts: UpscaleOptions,
    on_tile: Callable[[], None] | None = None,
    quality: int = 95,
) -> Path:
    """Upscale `image` into `dst` atomically, in the source's form; never touches the source.

    PNG results are streamed (`PngStream`): each strip is written as it is finished, so memory
    does not grow with the output. JPEG and WebP encoders need the whole image: one uint8
    array, plus Pillow's copy of it.
    """
    dst = Path(dst)
    bits = output_bit_depth(dst, image)
    channels = (1 if image.was_gray else 3) + (1 if image.had_alpha else 0)
    check_output(dst, channels, bits == 16, image.path)
    if not streams_to_png(dst):
        samples = upscale_samples(model, image, opts, on_tile, bits)
        return write_samples_like(samples, dst, image, quality=quality)
    out_h, out_w = output_size(image.height, image.width, int(model.scale), opts.outscale)

    def attempt(tile: int) -> Path:
        try:
            with atomic_path(dst) as tmp, open(tmp, "wb") as fh, torch.inference_mode():
                png = PngStream(fh, out_w, out_h, channels, bits, image.icc_profile)
                for _, rows in upscale_rows(model, image, opts, tile, on_tile, bits):
                    png.write_rows(rows)
                png.close()
        except OSError as exc:  # disk full, permissions: nothing was written
            raise ImageError(f"{dst}: cannot write image ({exc})") from exc
        return dst

    tile = choose_tile(image.height, image.width, opts, model, output_in_memory=False)
    return _retrying(image.height, image.width, tile, attempt)


def upscale_rgb(
    model: SRModel,
    rgb: Tensor,
    opts: UpscaleOptions,
    on_tile: Callable[[], None] | None = None,
) -> Tensor:
    """(3,H,W) or (1,3,H,W) in [0,1] -> upscaled (3,H',W') in [0,1], float32 on the CPU.

    The float result in one tensor, for the Python API; `upscale_samples` is the same
    computation quantised strip by strip (what the CLI runs).
    """
    x = rgb[0] if rgb.dim() == 4 else rgb
    h, w = x.shape[-2:]
    scale = int(model.scale)
    out_hw = output_size(h, w, scale, opts.outscale)
    out = torch.empty(3, *out_hw)

    def attempt(tile: int) -> Tensor:
        with torch.inference_mode():
            strips = network_strips(model, x, opts, tile, on_tile)
            for r0, y in _resized(strips, (h * scale, w * scale), out_hw):
                out[:, r0 : r0 + y.shape[-2]] = y.clamp_(0, 1)
        return out

    return _retrying(h, w, choose_tile(h, w, opts, model), attempt)


def upscale_alpha(alpha: Tensor, size: tuple[int, int]) -> Tensor:
    return imresize(alpha[None].float(), size=size)[0].clamp(0, 1)


def upscale_loaded(
    model: SRModel, image: Image, opts: UpscaleOptions, on_tile: Callable[[], None] | None = None
) -> tuple[Tensor, Tensor | None]:
    """RGB result and, when the image had one, its upscaled alpha (floats, for the API)."""
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
    return upscale_to_file(model, read_image(src), dst, opts or UpscaleOptions(), on_tile, quality)


def ready_for_upscale(
    model: Any, device: torch.device | str, dtype: torch.dtype, *, compile: bool = False
) -> Any:
    """The model in the form `slimsr upscale` runs it: an `SRModel` on the fast inference path
    (fused form, measured memory layout, `slimsr.inference_form`), a runtime (ONNX / TFLite) moved
    and in eval mode. Use the result, not the argument (which may be changed in place)."""
    if isinstance(model, SRModel):
        return prepare_for_inference(model, device, dtype, compile=compile)
    return model.to(device=device, dtype=dtype).eval()


def _pil_to_image(image: Any) -> Image:
    """A PIL image as an `Image`: RGB, or RGBA when it has transparency (8 bits)."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    arr = np.asarray(image.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / 255.0
    return Image(tensor=torch.from_numpy(arr).permute(2, 0, 1).contiguous(), had_alpha=has_alpha)


def upscale_image(
    model: Any,
    image: Any,
    *,
    tile: int | None = None,
    overlap: int = 16,
    outscale: float | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    engine: str | None = None,
) -> Any:
    """A picture (PIL image or a file path) in, an 8-bit PIL image out, made exactly as
    `slimsr upscale` makes it: the fast inference path (`ready_for_upscale`), the mirrored
    border, automatic tiles within `memory_budget_mb`, the same quantisation; a file keeps its
    gray / alpha layout as the command's output does.

    `device` / `dtype` default to the model's own. The model passed in is not changed (its
    inference form is built on a copy). `engine`: "torch", "onnxruntime", or "auto" (the
    command's default: the fastest measured, cached; `slimsr.engines`); None (the default) is
    "torch" for a PyTorch model, and a runner (`slimsr.load_runner`) always runs on its own
    runtime (naming another engine is an error).
    """
    from PIL import Image as PILImage

    img = read_image(image) if isinstance(image, str | os.PathLike) else _pil_to_image(image)
    ref = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    device = device if device is not None else (ref.device if ref is not None else "cpu")
    dtype = dtype if dtype is not None else (ref.dtype if ref is not None else torch.float32)
    if isinstance(model, nn.Module):
        model = copy.deepcopy(model)
    from slimsr.engines import choose_engine  # engines builds on this module

    if engine is None:
        engine = "torch" if isinstance(model, SRModel) else "auto"  # auto: a runner's own
    net = choose_engine(model, engine, device=device, dtype=dtype).net
    opts = UpscaleOptions(tile, overlap, outscale, device, dtype, memory_budget_mb)
    samples = upscale_samples(net, img, opts, bit_depth=8)
    return PILImage.fromarray(samples[..., 0] if samples.shape[-1] == 1 else samples)
