"""Seam-free tiled inference: overlapping tiles blended with a smooth window.

Crop-only tiling (Real-ESRGAN) leaves visible seams because every network sees a different
border context at a tile edge. Here neighbouring tiles overlap by `overlap` LR pixels; in
the overlap each tile's weight falls from 1 to 0 towards its own edge (zero over the outermost
quarter, where border effects live, then a raised-cosine ramp), so every output pixel is
dominated by the tile that saw it with the most context. Weights are normalised, so the blend
of identical predictions is exact.

Models with global statistics (BSRN's CCA averages over the whole image) cannot be tiled
exactly by any scheme; purely local networks (FMEN, ABPN, EDSR) match whole-image inference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch import Tensor

Upscaler = Callable[[Tensor], Tensor]


class TileSource(Protocol):
    """What tiling reads: a tensor, or a view that gathers tiles on demand (`MirrorPadded`)."""

    @property
    def shape(self) -> torch.Size: ...

    @property
    def device(self) -> torch.device: ...

    def __getitem__(self, key: Any) -> Tensor: ...


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of `tile` overlapping by >= `overlap`."""
    if tile >= length:
        return [0]
    step = max(1, tile - overlap)
    count = math.ceil((length - tile) / step) + 1
    # Spread the tiles evenly so every overlap is at least `overlap` (the last is not squeezed).
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def fitted_tile(length: int, tile: int, overlap: int) -> int:
    """The smallest tile side (<= `tile`) that covers `length` with as many tiles as `tile`
    needs, overlapping by >= `overlap`.

    Spreading fixed-size tiles evenly wastes work: a 512 px side in 256 px tiles with a 16 px
    overlap needs 3 tiles, and at 256 px each they overlap by 128 px (2.25x the pixels of the
    image in 2-D); 3 tiles of 182 px do the same job at 1.13x. Smaller tiles also lower the
    memory peak, so a budget-derived tile stays within its budget.
    """
    if tile >= length:
        return length
    step = max(1, tile - overlap)
    count = math.ceil((length - tile) / step) + 1
    return min(tile, math.ceil((length + (count - 1) * overlap) / count))


def edge_ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> Tensor:
    """1-D weights of one tile: 1 inside, fading to 0 towards sides shared with a neighbour."""
    w = torch.ones(length, dtype=torch.float64)
    if overlap <= 0:
        return w
    margin = overlap // 4
    ramp_len = max(1, overlap - 2 * margin)
    d = torch.arange(length, dtype=torch.float64)
    # distance -> weight: 0 below margin, raised cosine over ramp_len, then 1
    t = ((d - margin + 0.5) / ramp_len).clamp(0, 1)
    rise = 0.5 - 0.5 * torch.cos(math.pi * t)
    if at_start:
        w = w * rise
    if at_end:
        w = w * rise.flip(0)
    return w


def tiles(h: int, w: int, tile: int, overlap: int) -> Iterator[tuple[int, int, int, int]]:
    """(top, left, height, width) of every tile, row by row (sides fitted: `fitted_tile`)."""
    overlap = max(0, min(overlap, tile // 2))
    th, tw = fitted_tile(h, tile, overlap), fitted_tile(w, tile, overlap)
    for top in tile_starts(h, th, overlap):
        for left in tile_starts(w, tw, overlap):
            yield top, left, th, tw


def count_tiles(h: int, w: int, tile: int, overlap: int) -> int:
    return sum(1 for _ in tiles(h, w, tile, overlap))


def tiled_strips(
    upscale: Upscaler,
    x: TileSource,
    scale: int,
    tile: int,
    overlap: int = 16,
    on_tile: Callable[[], None] | None = None,
) -> Iterator[tuple[int, Tensor]]:
    """Blended tiles of `x` (N,C,H,W) as finished output strips `(first_row, (N,C,rows,W*s))`.

    Works one row of tiles at a time: the float32 accumulator spans only the output rows that
    the current tile row touches, and the rows no later tile row reaches are normalised and
    handed out, in order, before the next row of tiles runs. So the float memory is one strip
    of tiles (tile * s rows by the output width), never the whole output. Every value is
    computed by the same operations as one full-size accumulator would use (bit-identical).
    """
    n, c, h, w = x.shape
    overlap = max(0, min(overlap, tile // 2))
    grid = list(tiles(h, w, tile, overlap))
    tops = sorted({t for t, _, _, _ in grid})
    th, tw = grid[0][2], grid[0][3]
    ow = w * scale
    # The tiles are a grid (every row of tiles has the same lefts), so the summed window is
    # the outer product of a row profile and a column profile: two vectors, not a full map.
    row_sum = torch.zeros(h * scale, dtype=torch.float64)
    col_sum = torch.zeros(ow, dtype=torch.float64)
    for top in tops:
        row_sum[top * scale : (top + th) * scale] += edge_ramp(
            th * scale, overlap * scale, top > 0, top + th < h
        )
    for left in sorted({lf for _, lf, _, _ in grid}):
        col_sum[left * scale : (left + tw) * scale] += edge_ramp(
            tw * scale, overlap * scale, left > 0, left + tw < w
        )
    row_div = row_sum.clamp_min_(1e-12).to(x.device, torch.float32)
    col_div = col_sum.clamp_min_(1e-12).to(x.device, torch.float32)
    acc = torch.zeros(n, c, 0, ow, dtype=torch.float32, device=x.device)
    acc_start = 0  # output row of acc[..., 0, :]
    for k, top in enumerate(tops):
        ys, ye = top * scale, (top + th) * scale
        if ye > acc_start + acc.shape[-2]:  # grow the strip down to this tile row's end
            grown = torch.zeros(n, c, ye - acc_start, ow, device=x.device)
            grown[..., : acc.shape[-2], :] = acc
            acc = grown
            del grown
        wy = edge_ramp(th * scale, overlap * scale, top > 0, top + th < h)
        for _t, left, _h, _w in (g for g in grid if g[0] == top):
            y = upscale(x[..., top : top + th, left : left + tw]).float()
            wx = edge_ramp(tw * scale, overlap * scale, left > 0, left + tw < w)
            xs = left * scale
            win = (wy[:, None] * wx[None, :]).to(torch.float32).to(x.device)[None, None]
            acc[..., ys - acc_start : ye - acc_start, xs : xs + tw * scale].addcmul_(y, win)
            if on_tile is not None:
                on_tile()
        done = tops[k + 1] * scale if k + 1 < len(tops) else h * scale
        rows = done - acc_start
        if rows > 0:
            out = acc[..., :rows, :]
            out.div_(row_div[acc_start:done].view(-1, 1)).div_(col_div)
            rest = acc[..., rows:, :].clone()
            del acc  # `out` is the caller's now; the generator must not keep it alive
            yield acc_start, out
            del out
            acc, acc_start = rest, done
            del rest


def upscale_tiled(
    upscale: Upscaler,
    x: Tensor,
    scale: int,
    tile: int,
    overlap: int = 16,
    on_tile: Callable[[], None] | None = None,
) -> Tensor:
    """Run `upscale` on overlapping `tile` x `tile` LR tiles of `x` (N,C,H,W) and blend.

    The whole output in one tensor (float32, on the input's device); `tiled_strips` is the
    same computation handed out strip by strip, which is what keeps `slimsr upscale` flat in
    memory.
    """
    h, w = x.shape[-2:]
    if tile <= 0 or (tile >= h and tile >= w):
        return upscale(x)
    return torch.cat([s for _, s in tiled_strips(upscale, x, scale, tile, overlap, on_tile)], -2)
