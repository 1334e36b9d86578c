"""The upscale pipeline's two promises: exact results without full-size float copies, and
borders that keep a flat colour flat."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slimsr
from slimsr.imaging import imresize
from slimsr.imaging.io import Image, from_rgb_tensor, quantize
from slimsr.model import BORDER, pad_border
from slimsr.upscale import (
    ROW_CHUNK,
    RowResizer,
    UpscaleOptions,
    choose_tile,
    network_strips,
    upscale_samples,
)
from slimsr.weights import bundled_scales, default_model


def small_model(scale: int = 2) -> slimsr.SRModel:
    torch.manual_seed(0)
    return slimsr.create_model("edsrmini", scale, num_feat=4, num_block=1).eval()


def reference_samples(model, image: Image, outscale: float | None, bits: int) -> np.ndarray:
    """The plain computation the strip pipeline must equal: pad, run, crop, resize, clamp,
    gray, quantise, all on full-size float tensors."""
    s, (h, w) = model.scale, (image.height, image.width)
    with torch.inference_mode():
        y = model.raw(pad_border(image.rgb[None], BORDER))
    m = BORDER * s
    y = y[..., m : m + h * s, m : m + w * s]
    if outscale is not None:
        y = imresize(y, size=(round(h * outscale), round(w * outscale)))
    out = from_rgb_tensor(y[0].clamp(0, 1), gray=image.was_gray)
    if image.had_alpha:
        a = imresize(image.alpha[None], size=tuple(y.shape[-2:]))[0].clamp(0, 1)
        out = torch.cat([out, a])
    return quantize(out, bits)


@pytest.mark.parametrize(
    ("channels", "bits", "outscale"),
    [(3, 8, None), (4, 8, 2.5), (1, 16, 3.0), (2, 8, None), (3, 16, 5.0)],
)
def test_strip_pipeline_equals_the_full_size_computation(channels, bits, outscale) -> None:
    gen = torch.Generator().manual_seed(channels)
    tensor = torch.rand(channels, 150, 37, generator=gen)  # taller than ROW_CHUNK strips
    image = Image(tensor, had_alpha=channels in (2, 4), was_gray=channels in (1, 2), bit_depth=bits)
    model = small_model()
    got = upscale_samples(model, image, UpscaleOptions(tile=0, outscale=outscale))
    want = reference_samples(model, image, outscale, bits)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want)


def test_row_resizer_is_bit_exact_for_any_strip_heights() -> None:
    x = torch.rand(3, 131, 45, generator=torch.Generator().manual_seed(1))
    for out_hw in [(327, 112), (50, 90), (131, 200)]:
        resizer, parts, r = RowResizer((131, 45), out_hw), [], 0
        for step in (7, 1, 64, 13, 50):
            for r0, rows in resizer.push(x[:, r : r + step]):
                assert r0 == sum(p.shape[-2] for p in parts)
                parts.append(rows)
            r += step
        assert r >= 131
        assert torch.equal(torch.cat(parts, dim=-2), imresize(x[None], size=out_hw)[0])


def test_tiled_strips_match_the_untiled_pass_for_a_local_model() -> None:
    model = small_model()
    rgb = torch.rand(3, 90, 70, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        whole = torch.cat([y for _, y in network_strips(model, rgb, UpscaleOptions(), 0)], 1)
        tiled = torch.cat(
            [y for _, y in network_strips(model, rgb, UpscaleOptions(overlap=32), 64)], 1
        )
    assert whole.shape == tiled.shape == (3, 180, 140)
    assert (whole - tiled).abs().max() < 1e-5


def test_no_strip_is_as_large_as_the_image() -> None:
    """The float buffers the pipeline hands on are strips: one row of tiles or ROW_CHUNK rows,
    never the full-size output (the memory promise of `--max-memory`)."""
    model = small_model()
    rgb = torch.rand(3, 300, 40)
    for tile in (0, 48):
        with torch.inference_mode():
            heights = [y.shape[-2] for _, y in network_strips(model, rgb, UpscaleOptions(), tile)]
        assert sum(heights) == 600
        assert max(heights) <= max(ROW_CHUNK, 2 * (48 + 2 * BORDER))


@pytest.mark.parametrize("scale", bundled_scales())
@pytest.mark.parametrize("size", [(1, 1), (3, 17), (8, 8)])
def test_bundled_model_keeps_flat_colours_flat(scale, size) -> None:
    """Zero padding inside the network used to tint edges (a 1x1 image came out 95 levels
    off); the mirrored border keeps every output pixel within 2 levels of the colour."""
    model = default_model(scale).eval()
    for colour in [(0.9, 0.2, 0.1), (0.5, 0.5, 0.5), (0.05, 0.6, 0.95)]:
        tensor = torch.tensor(colour).view(3, 1, 1).expand(3, *size).contiguous()
        out = upscale_samples(model, Image(tensor), UpscaleOptions())
        expected = np.round(np.array(colour) * 255)
        assert np.abs(out.astype(float) - expected).max() <= 2, (colour, size)


def test_model_output_is_clamped_in_eval_and_raw_in_training() -> None:
    model = small_model()
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(4)) * 4 - 2
    raw = model.raw(x)
    assert raw.min() < 0 and raw.max() > 1  # the clamp has something to do
    model.eval()
    assert torch.equal(model(x), raw.clamp(0, 1))
    model.train()
    assert torch.equal(model(x), raw)


def test_runtime_files_are_tiled_under_the_budget(tmp_path) -> None:
    pytest.importorskip("onnxruntime", reason="needs the onnx extra")
    from slimsr.export import OnnxUpscaler, export_onnx

    model = small_model()
    export_onnx(model, tmp_path / "m.onnx", verify=False)
    runner = OnnxUpscaler(tmp_path / "m.onnx")
    opts = UpscaleOptions(memory_budget_mb=2.0, overlap=8)
    assert 0 < choose_tile(120, 100, opts, runner) < 120  # tiled like a PyTorch model
    image = Image(torch.rand(3, 120, 100, generator=torch.Generator().manual_seed(3)))
    got = upscale_samples(runner, image, opts)
    want = upscale_samples(model, image, UpscaleOptions(tile=0))
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


@pytest.mark.parametrize(("channels", "bits"), [(3, 8), (4, 8), (1, 16), (2, 16)])
def test_streamed_png_holds_the_same_samples(tmp_path, channels, bits) -> None:
    """PNG results are written strip by strip (`PngStream`); the file decodes to exactly the
    array the in-memory path computes, for every layout and bit depth."""
    from slimsr.imaging import read_image
    from slimsr.upscale import upscale_to_file

    gen = torch.Generator().manual_seed(10 + channels)
    image = Image(
        torch.rand(channels, 140, 33, generator=gen),
        had_alpha=channels in (2, 4),
        was_gray=channels in (1, 2),
        bit_depth=bits,
        icc_profile=None,
    )
    model = small_model()
    opts = UpscaleOptions(tile=48, overlap=16)
    upscale_to_file(model, image, tmp_path / "out.png", opts)
    want = upscale_samples(model, image, opts)
    back = read_image(tmp_path / "out.png")
    assert back.bit_depth == bits and back.tensor.shape[0] == channels
    assert np.array_equal(quantize(back.tensor, bits), want)
