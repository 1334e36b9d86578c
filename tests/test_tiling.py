"""Blended tiling: exact for identical predictions, seam-free for local networks."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import slimsr
from slimsr.registry import default_registry
from slimsr.tiling import count_tiles, edge_ramp, fitted_tile, tile_starts, tiles, upscale_tiled


@pytest.mark.parametrize(
    ("length", "tile", "overlap"),
    [(100, 32, 8), (33, 32, 8), (64, 64, 8), (7, 32, 4), (97, 30, 15)],
)
def test_tiles_cover_everything_with_at_least_the_overlap(length, tile, overlap) -> None:
    starts = tile_starts(length, tile, overlap)
    covered = torch.zeros(length, dtype=torch.bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all() and starts[0] == 0 and starts[-1] + min(tile, length) == length
    for a, b in itertools.pairwise(starts):
        assert a + tile - b >= overlap


def test_fitted_tiles_need_no_more_tiles_and_far_less_work() -> None:
    assert fitted_tile(512, 256, 16) == 182  # 3 tiles per side either way
    assert fitted_tile(100, 200, 8) == 100 and fitted_tile(100, 100, 8) == 100
    for length, tile, overlap in itertools.product(
        (17, 64, 100, 257, 512), (16, 33, 64), (0, 4, 8)
    ):
        fitted = fitted_tile(length, tile, overlap)
        assert fitted <= tile
        starts = tile_starts(length, fitted, overlap)
        assert len(starts) == len(tile_starts(length, tile, overlap))
        covered = torch.zeros(length, dtype=torch.bool)
        for s in starts:
            covered[s : s + fitted] = True
        assert covered.all()
        for a, b in itertools.pairwise(starts):
            assert a + fitted - b >= overlap - 1  # rounding of the even spread: at most 1 px
    work = sum(th * tw for _, _, th, tw in tiles(512, 512, 256, 16))
    assert work / 512**2 < 1.2  # fixed 256-px tiles would be 2.25x


def test_window_weights_sum_to_one_in_overlaps_and_are_one_inside() -> None:
    w = edge_ramp(40, 16, at_start=True, at_end=True)
    assert w[:4].eq(0).all() and w[-4:].eq(0).all() and w[16:24].eq(1).all()
    left_tile_end, right_tile_start = edge_ramp(40, 16, False, True), edge_ramp(40, 16, True, False)
    # neighbours overlapping by 16: the two weights over the overlap add up to a positive value
    assert (left_tile_end[-16:] + right_tile_start[:16]).min() > 0.99


def test_identical_predictions_blend_exactly() -> None:
    x = torch.rand(1, 3, 50, 37)
    up = lambda t: F.interpolate(t, scale_factor=3, mode="nearest")  # noqa: E731 (pointwise)
    torch.testing.assert_close(upscale_tiled(up, x, 3, 16, 6), up(x))
    assert count_tiles(50, 37, 16, 6) > 4


LOCAL = [("fmen_s", 4), ("abpn", 3), ("edsrmini", 2), ("span_train", 2)]
"""One variant of every family that declares `tiling="exact"` (checked below)."""


def test_the_tiled_families_are_those_declared_exact() -> None:
    registry = default_registry()
    exact = {f.name for f in registry.families() if f.tiling == "exact"}
    assert {registry.get(name).family for name, _ in LOCAL} == exact


@pytest.mark.parametrize(("name", "scale"), LOCAL)
def test_local_networks_tile_within_1_over_255(name: str, scale: int) -> None:
    torch.manual_seed(0)
    model = slimsr.create_model(name, scale)
    x = torch.rand(1, 3, 70, 61)
    with torch.inference_mode():
        whole = model(x).clamp(0, 1)
        tiled = upscale_tiled(model, x, scale, 32, 16).clamp(0, 1)
    close = ((whole - tiled).abs() <= 1 / 255).float().mean().item()
    assert close >= 0.999, close


def test_out_of_memory_retries_with_smaller_tiles() -> None:
    """A CUDA OOM on a large input is answered by halving the tile, with the same result."""
    from slimsr.model import BORDER
    from slimsr.upscale import UpscaleOptions, upscale_rgb

    torch.manual_seed(0)
    model = slimsr.create_model("edsrmini", 2, num_feat=4, num_block=1).eval()
    seen: list[int] = []

    class SmallMemory(torch.nn.Module):
        scale = 2

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(max(x.shape[-2:]))
            if x.shape[-2] * x.shape[-1] > 40 * 40:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return model(x)

    x = torch.rand(3, 96, 80)
    y = upscale_rgb(SmallMemory(), x, UpscaleOptions(tile=0, overlap=8))
    # the image padded by BORDER (112 x 96) and 56-px tiles (fitted to 43 x 52) fail, 28 fit
    assert seen[0] == 96 + 2 * BORDER and seen[1] == 52 and max(seen[2:]) <= 28
    whole = upscale_rgb(model, x, UpscaleOptions(tile=0, overlap=8))  # no OOM, one pass
    close = (y - whole).abs() <= 1 / 255
    assert close.float().mean() >= 0.999


def test_memory_budget_decides_automatic_tiling() -> None:
    from slimsr.model import BORDER
    from slimsr.upscale import (
        AUTO_TILE_MAX,
        MIN_TILE,
        UpscaleOptions,
        activation_bytes_per_pixel,
        choose_tile,
        fixed_bytes,
    )

    # conv 3->8 -> relu -> conv 8->12 -> x2 pixel shuffle: the two largest outputs are the
    # 12-channel conv map and the shuffled image (12 values per LR pixel), plus input and output
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 12, 3, padding=1),
        torch.nn.PixelShuffle(2),
    )
    assert activation_bytes_per_pixel(net) == (12 + 12 + 12 + 3) * 4
    # The budget is the whole command's: output array + encoder copy + input (fixed_bytes), then
    # one tile's forward pass and the float32 blending strip (a row of tiles x output width).
    net.scale = 2
    assert choose_tile(80, 80, UpscaleOptions(memory_budget_mb=4.0), net) == 0
    opts = UpscaleOptions(memory_budget_mb=8.0)
    left = 8 * 2**20 - fixed_bytes(200, 200, 2, opts)
    strip_row = 2 * 3 * 4 * 2 * 2 * (200 + 2 * BORDER)
    tile = choose_tile(200, 200, opts, net)
    assert MIN_TILE < tile < 200 and tile % 8 == 0 and tile * tile * 156 + tile * strip_row <= left
    grown = tile + 8
    assert grown * grown * 156 + grown * strip_row > left  # the largest that fits
    # large images: the tile is capped, and everything planned fits the budget
    big = UpscaleOptions(memory_budget_mb=2048)
    tile = choose_tile(4000, 6000, big, net)
    assert 0 < tile <= AUTO_TILE_MAX
    planned = fixed_bytes(4000, 6000, 2, big) + tile * tile * 156 + tile * 2 * 3 * 4 * 4 * 6016
    assert planned <= 2048 * 2**20
    assert choose_tile(90, 90, UpscaleOptions(tile=0, memory_budget_mb=1.0), net) == 0
