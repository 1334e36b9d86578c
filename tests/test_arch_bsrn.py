"""BSRN / BSRN-S: parameter counts, official checkpoints, detection, shapes, a PSNR sanity check.

Minimum input size (for the registry maintainer): the ESA branch runs a 3x3 stride-2 conv with no
padding and then a 7x7 max-pool with stride 3, so LR inputs need H, W >= 15; 14 raises inside
`max_pool2d`. The same holds for E-RFDN. The registry has no field for a minimum size yet.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimsr.archs.blocks import BSConvU, CCALayer, ChannelLinear
from slimsr.archs.bsrn import ESDB, detect_bsrn
from slimsr.archs.rfdn import detect_rfdn
from slimsr.registry import build_network, count_parameters, get_model_info
from tests.conftest import official_weight

PARAMS = {
    ("bsrn", 2): 331_628,
    ("bsrn", 3): 340_283,
    ("bsrn", 4): 352_400,
    ("bsrn_s", 2): 140_700,
    ("bsrn_s", 3): 147_195,
    ("bsrn_s", 4): 156_288,
}

OFFICIAL = [
    ("bsrn_x2.pth", "bsrn", 2),
    ("bsrn_x3.pth", "bsrn", 3),
    ("bsrn_x4.pth", "bsrn", 4),
    ("bsrn_s_x4.pth", "bsrn_s", 4),
    ("bsrn_s_x4_ntire2022.pth", "bsrn_s", 4),
]


def load_official(filename: str) -> dict[str, torch.Tensor]:
    state = torch.load(official_weight(filename), map_location="cpu", weights_only=True)
    return state.get("params", state)


@pytest.mark.parametrize(("name", "scale"), list(PARAMS))
def test_parameter_counts(name: str, scale: int) -> None:
    assert count_parameters(build_network(name, scale)) == PARAMS[(name, scale)]


def test_registry_facts() -> None:
    for name in ("bsrn", "bsrn_s"):
        info = get_model_info(name)
        assert (info.family, info.input_range, info.scales) == ("bsrn", 1.0, (2, 3, 4))


@pytest.mark.parametrize(("filename", "name", "scale"), OFFICIAL)
def test_official_checkpoint_detected_and_loads_strictly(
    filename: str, name: str, scale: int
) -> None:
    sd = load_official(filename)
    found = detect_bsrn(sd)
    assert found is not None
    assert (found.name, found.scale, found.kwargs) == (name, scale, {})
    assert detect_rfdn(sd) is None  # both families have B1.c1_d; only BSRN has fea_conv.pw
    net = build_network(found.name, found.scale, **found.kwargs)
    net.load_state_dict(found.state_dict, strict=True)
    assert count_parameters(net) == sum(t.numel() for t in sd.values())


def test_detector_ignores_foreign_state_dicts() -> None:
    assert detect_bsrn({}) is None
    assert detect_bsrn(build_network("e_rfdn", 4).state_dict()) is None
    sd = build_network("bsrn", 2).state_dict()
    sd["upsampler.upsampleOneStep.0.weight"] = torch.zeros(7, 64, 3, 3)  # not 3*s*s channels
    assert detect_bsrn(sd) is None


def test_nondefault_block_count_creates_named_blocks() -> None:
    net = build_network("bsrn", 2, num_block=3)
    assert [n for n, _ in net.named_children() if n.startswith("B")] == ["B1", "B2", "B3"]
    assert net.c1.weight.shape == (64, 3 * 64, 1, 1)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("name", ["bsrn", "bsrn_s"])
def test_forward_shape_odd_size(name: str, scale: int) -> None:
    net = build_network(name, scale).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, 17, 23))
    assert out.shape == (1, 3, 17 * scale, 23 * scale)


@pytest.mark.parametrize("name", ["bsrn", "bsrn_s"])
def test_minimum_input_size_is_15(name: str) -> None:
    net = build_network(name, 2, num_block=1).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 15, 15)).shape == (1, 3, 30, 30)
        with pytest.raises(RuntimeError):
            net(torch.rand(1, 3, 14, 20))


# -- building blocks -------------------------------------------------------------------------


def test_channel_linear_is_a_1x1_conv() -> None:
    lin = ChannelLinear(6, 5)
    conv = nn.Conv2d(6, 5, 1)
    conv.load_state_dict({"weight": lin.weight[:, :, None, None], "bias": lin.bias})
    x = torch.randn(2, 6, 7, 9)
    torch.testing.assert_close(lin(x), conv(x))


def test_bsconvu_is_pointwise_then_depthwise() -> None:
    conv = BSConvU(6, 4, stride=2, padding=0)
    assert conv.pw.weight.shape == (4, 6, 1, 1) and conv.pw.bias is None
    assert conv.dw.weight.shape == (4, 1, 3, 3) and conv.dw.bias.shape == (4,)
    x = torch.randn(1, 6, 11, 11)
    ref = F.conv2d(F.conv2d(x, conv.pw.weight), conv.dw.weight, conv.dw.bias, stride=2, groups=4)
    torch.testing.assert_close(conv(x), ref)
    # BSRN-S flavour: Linear pointwise with bias, same result once the weights agree.
    lin = BSConvU(6, 4, stride=2, padding=0, linear_pw=True)
    assert lin.pw.weight.shape == (4, 6) and lin.pw.bias.shape == (4,)
    with torch.no_grad():
        lin.pw.weight.copy_(conv.pw.weight[:, :, 0, 0])
        lin.pw.bias.zero_()
        lin.dw.load_state_dict(conv.dw.state_dict())
    torch.testing.assert_close(lin(x), ref)


def test_cca_uses_population_std_plus_mean() -> None:
    cca = CCALayer(32)
    x = torch.randn(2, 32, 5, 6) * 3 + 1
    stat = x.std(dim=(2, 3), unbiased=False, keepdim=True) + x.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(cca(x), x * cca.conv_du(stat))


def test_bsrn_s_channel_weights_start_near_one() -> None:
    block = ESDB(48, "bsrn_s")
    assert block.cw.shape == (1, 48)
    assert abs(block.cw.mean().item() - 1.0) < 0.15  # N(1, 0.2): mean of 48 draws, 5 sigma
    assert 0.1 < block.cw.std().item() < 0.3
    assert block.cca is None and not hasattr(ESDB(48, "bsrn"), "cw")


# -- numerical sanity with the official weights --------------------------------------------

# Sinusoids of 1-5 cycles per 64 px (periods of 3-16 LR pixels once downscaled 4x).
WAVES = (
    ((5.0, 1.0, 0.0), (-2.0, 4.0, 1.0), (3.0, 3.0, 2.0)),
    ((1.0, 5.0, 0.5), (4.0, -3.0, 1.5), (-5.0, 2.0, 2.5)),
    ((3.0, -4.0, 1.0), (5.0, 3.0, 0.3), (2.0, 2.0, 3.0)),
)


def smooth_image(size: int = 64) -> torch.Tensor:
    """A 1x3xHxW image in [0.14, 0.86] made of low-frequency sinusoids, one sum per channel."""
    grid = torch.arange(size, dtype=torch.float64) / size
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    chans = [
        0.5 + sum(0.12 * torch.sin(2 * math.pi * (fx * xx + fy * yy) + ph) for fx, fy, ph in w)
        for w in WAVES
    ]
    return torch.stack(chans)[None].float()


def psnr(a: torch.Tensor, b: torch.Tensor, crop: int) -> float:
    a, b = a[..., crop:-crop, crop:-crop], b[..., crop:-crop, crop:-crop]
    return 10 * math.log10(1.0 / F.mse_loss(a, b).item())


def sr_and_bicubic_psnr(name: str, filename: str, input_range: float) -> tuple[float, float]:
    """RGB PSNR (border 4) of the official x4 network and of bicubic, on `smooth_image`.

    The HR image is 64 px (not 48) because 48 / 4 = 12 is below the 15 px minimum LR size.
    """
    hr = smooth_image(64)
    lr = F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True)
    net = build_network(name, 4).eval()
    net.load_state_dict(load_official(filename), strict=True)
    with torch.no_grad():
        sr = (net(lr * input_range) / input_range).clamp(0, 1)
    bicubic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    return psnr(sr, hr, 4), psnr(bicubic, hr, 4)


def test_official_bsrn_x4_beats_bicubic_on_unit_range_input() -> None:
    # Measured: BSRN 36.64 dB vs bicubic 32.72 dB; [0,255] input would give ~5.7 dB.
    info = get_model_info("bsrn")
    sr, bicubic = sr_and_bicubic_psnr("bsrn", "bsrn_x4.pth", info.input_range)
    assert sr > bicubic + 0.5, (sr, bicubic)
