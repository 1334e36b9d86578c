"""EDSR: both key sets (EDSR-PyTorch and BasicSR) load into the official layout, same outputs."""

from __future__ import annotations

import pytest
import torch

import slimsr
from slimsr.archs.edsr import EDSRBasicSR
from slimsr.registry import default_registry


def official_to_basicsr(sd: dict[str, torch.Tensor], num_block: int) -> dict[str, torch.Tensor]:
    """The conversion BasicSR's scripts apply to official EDSR files (written independently)."""
    out = {}
    for key, value in sd.items():
        if key.startswith(("sub_mean", "add_mean")):
            continue
        if key.startswith(f"body.{num_block}."):
            new = "conv_after_body." + key.split(".", 2)[2]
        elif key.startswith("body."):
            new = key.replace(".body.0.", ".conv1.").replace(".body.2.", ".conv2.")
        elif key.startswith("head.0."):
            new = "conv_first." + key[len("head.0.") :]
        elif key.startswith("tail.0."):
            new = "upsample." + key[len("tail.0.") :]
        else:
            new = "conv_last." + key[len("tail.1.") :]
        out[new] = value
    return out


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_basicsr_and_official_layouts_compute_the_same_function(scale: int) -> None:
    official = slimsr.create_model("edsr_baseline", scale, num_block=2)
    for p in official.net.parameters():
        if p.requires_grad:
            p.data.normal_(0, 0.05)
    basicsr = EDSRBasicSR(scale, num_feat=64, num_block=2)
    basicsr.load_state_dict(official_to_basicsr(official.net.state_dict(), 2), strict=True)
    x = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(official.raw(x), basicsr(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_basicsr_keyed_edsr_baseline_is_detected_and_translated(scale: int) -> None:
    official = slimsr.create_model("edsr_baseline", scale)
    basicsr_sd = official_to_basicsr(official.net.state_dict(), 16)
    found = default_registry().detect(basicsr_sd)
    assert found is not None
    assert (found.name, found.scale, found.kwargs) == ("edsr_baseline", scale, {})
    net = slimsr.build_network("edsr_baseline", scale)
    net.load_state_dict(found.state_dict, strict=True)
    for key, value in official.net.state_dict().items():
        torch.testing.assert_close(net.state_dict()[key], value)


def test_edsr_has_the_official_key_layout() -> None:
    """Detection of every size and width is in the registry sweep (tests/test_registry.py)."""
    with torch.device("meta"):
        big = slimsr.build_network("edsr", 3).state_dict()
    assert {k for k in big} >= {
        "sub_mean.weight",
        "body.32.weight",
        "tail.0.0.weight",
        "tail.1.weight",
    }


def test_mean_shift_is_frozen_and_counted() -> None:
    net = slimsr.build_network("edsr_baseline", 2)
    frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    assert frozen == 24
    assert net.sub_mean.bias.tolist() == pytest.approx([-255 * m for m in (0.4488, 0.4371, 0.4040)])


def test_edsrmini_res_scale_changes_the_output_but_not_the_keys() -> None:
    a = slimsr.build_network("edsrmini", 2)
    b = slimsr.build_network("edsrmini", 2, res_scale=2.0)
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))
