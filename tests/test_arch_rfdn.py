"""E-RFDN: parameter counts, the official AIM 2020 checkpoint, detection, shapes, PSNR sanity.

Like BSRN, E-RFDN's ESA needs LR inputs of at least 15x15 (14 fails in the max-pool).
"""

from __future__ import annotations

import pytest
import torch

from slimsr.archs.bsrn import detect_bsrn
from slimsr.archs.rfdn import detect_rfdn
from slimsr.registry import build_network, count_parameters, get_model_info
from tests.conftest import official_weight
from tests.test_arch_bsrn import sr_and_bicubic_psnr

PARAMS = {2: 417_212, 3: 423_977, 4: 433_448}


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_parameter_counts(scale: int) -> None:
    assert count_parameters(build_network("e_rfdn", scale)) == PARAMS[scale]


def test_registry_facts_and_aliases() -> None:
    info = get_model_info("e_rfdn")
    assert (info.family, info.input_range, info.scales) == ("rfdn", 255.0, (2, 3, 4))
    assert "x4-only" in info.params_note
    assert get_model_info("rfdn") is info and get_model_info("E-RFDN") is info
    assert get_model_info("erfdn") is info


def test_official_checkpoint_detected_and_loads_strictly() -> None:
    # Flat legacy (non-zip) pickle; weights_only loading handles it.
    sd = torch.load(official_weight("e_rfdn_x4.pth"), map_location="cpu", weights_only=True)
    assert len(sd) == 128
    found = detect_rfdn(sd)
    assert found is not None
    assert (found.name, found.scale, found.kwargs) == ("e_rfdn", 4, {})
    assert detect_bsrn(sd) is None
    net = build_network(found.name, found.scale, **found.kwargs)
    net.load_state_dict(found.state_dict, strict=True)
    assert count_parameters(net) == PARAMS[4]


def test_detector_ignores_foreign_state_dicts() -> None:
    assert detect_rfdn({}) is None
    for name in ("bsrn", "bsrn_s"):
        assert detect_rfdn(build_network(name, 4).state_dict()) is None
    sd = build_network("e_rfdn", 4).state_dict()
    del sd["LR_conv.weight"]
    assert detect_rfdn(sd) is None


def test_scale_aware_tail() -> None:
    for scale in (2, 3, 4):
        assert build_network("e_rfdn", scale).upsampler[0].out_channels == 3 * scale * scale


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_forward_shape_odd_size(scale: int) -> None:
    net = build_network("e_rfdn", scale).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, 17, 23) * 255)
    assert out.shape == (1, 3, 17 * scale, 23 * scale)


def test_minimum_input_size_is_15() -> None:
    net = build_network("e_rfdn", 2, num_block=1).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 15, 15)).shape == (1, 3, 30, 30)
        with pytest.raises(RuntimeError):
            net(torch.rand(1, 3, 20, 14))


def test_official_e_rfdn_x4_beats_bicubic_on_255_range_input() -> None:
    # Measured: E-RFDN 35.23 dB vs bicubic 32.72 dB; the same LR fed in [0,1] gives ~22.8 dB.
    info = get_model_info("e_rfdn")
    sr, bicubic = sr_and_bicubic_psnr("e_rfdn", "e_rfdn_x4.pth", info.input_range)
    assert sr > bicubic + 0.5, (sr, bicubic)
