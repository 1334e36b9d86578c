"""SAFMN (paper form) and its NTIRE 2023 entry: parameter counts, the official NTIRE weights
(detection, strict load, Set5), detection round trips, input sizes, and the traceable pooling
that SAFMN and SMFANet share."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F

import slimsr
from slimsr.archs import blocks
from slimsr.archs.safmn import detect_safmn
from slimsr.archs.smfanet import detect_smfanet
from slimsr.data.folders import dataset_from_root
from slimsr.evaluate import evaluate_dataset
from slimsr.registry import build_network, count_parameters, get_model_info
from tests.conftest import official_weight, shared_file

PARAMS = {2: 227_820, 3: 232_695, 4: 239_520}  # paper: 228K / 233K / 240K
NTIRE_PARAMS = 237_000  # the challenge report's figure, exactly


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_parameter_counts(scale: int) -> None:
    assert count_parameters(build_network("safmn", scale)) == PARAMS[scale]


def test_registry_facts() -> None:
    paper, ntire = get_model_info("safmn"), get_model_info("safmn_ntire")
    assert (paper.family, paper.input_range, paper.scales, paper.min_size) == (
        "safmn",
        1.0,
        (2, 3, 4),
        8,
    )
    assert (ntire.family, ntire.input_range, ntire.scales, ntire.min_size) == (
        "safmn",
        1.0,
        (4,),
        16,
    )
    assert paper.tiling == ntire.tiling == "approximate"
    assert count_parameters(build_network("safmn_ntire", 4)) == NTIRE_PARAMS


def test_ntire_weights_are_detected_and_load_strictly() -> None:
    path = official_weight("safmn_ntire2023_x4.pth")
    sd = torch.load(path, map_location="cpu", weights_only=True)["params"]
    found = detect_safmn(sd)
    assert found is not None
    assert (found.name, found.scale, found.kwargs) == ("safmn_ntire", 4, {})
    assert detect_smfanet(sd) is None
    build_network("safmn_ntire", 4).load_state_dict(found.state_dict, strict=True)
    model = slimsr.load(path)
    assert (model.info.name, model.scale, count_parameters(model.net)) == (
        "safmn_ntire",
        4,
        NTIRE_PARAMS,
    )


@pytest.mark.parametrize(
    ("name", "scale", "kwargs"),
    [
        ("safmn", 2, {}),
        ("safmn", 3, {"dim": 16, "n_blocks": 2}),
        ("safmn", 4, {"ffn_scale": 1.5}),
        ("safmn_ntire", 4, {"dim": 24, "n_blocks": 3}),
    ],
)
def test_detector_round_trip(name: str, scale: int, kwargs: dict) -> None:
    sd = build_network(name, scale, **kwargs).state_dict()
    found = detect_safmn(sd)
    assert found is not None and (found.name, found.scale, found.kwargs) == (name, scale, kwargs)
    build_network(found.name, found.scale, **found.kwargs).load_state_dict(found.state_dict)
    assert detect_smfanet(sd) is None


def test_detector_ignores_foreign_state_dicts() -> None:
    assert detect_safmn({}) is None
    for name in ("smfanet", "bsrn_s", "e_rfdn"):
        assert detect_safmn(build_network(name, 4).state_dict()) is None
    sd = build_network("safmn", 4, n_blocks=2).state_dict()
    sd["norm.gamma"] = torch.zeros(1, 36, 1, 1)  # both forms' keys at once: neither
    assert detect_safmn(sd) is None


def test_the_two_forms_differ_where_the_ntire_entry_says() -> None:
    paper = dict(build_network("safmn", 4).named_parameters())
    ntire = dict(build_network("safmn_ntire", 4).named_parameters())
    assert "feats.0.norm1.weight" in paper and "feats.0.norm1.weight" not in ntire
    assert "feats.0.safm.aggr.bias" in paper and "feats.0.safm.aggr.bias" not in ntire
    assert "norm.gamma" in ntire and "norm.gamma" not in paper


@pytest.mark.parametrize(("name", "smallest"), [("safmn", 8), ("safmn_ntire", 16)])
def test_minimum_input_size(name: str, smallest: int) -> None:
    net = build_network(name, 4, n_blocks=1).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, smallest, 19)).shape == (1, 3, 4 * smallest, 76)
        with pytest.raises(RuntimeError):
            net(torch.rand(1, 3, smallest - 1, 19))
    with torch.inference_mode():
        assert slimsr.create_model(name, 4, n_blocks=1)(torch.rand(1, 3, 5, 6)).shape == (
            1,
            3,
            20,
            24,
        )


@pytest.mark.parametrize("divisor", [2, 4, 8, 16])
def test_traceable_pooling_and_resize_equal_torch(divisor: int) -> None:
    """The gather forms used while exporting give torch's numbers exactly, at sizes that do
    and do not divide (windows of uneven length, overlapping windows)."""
    for h, w in ((divisor, divisor + 5), (37, 53), (64, 41)):
        if min(h, w) < divisor:
            continue
        x = torch.randn(1, 3, h, w)
        with mock.patch.object(blocks, "_capturing_graph", lambda: True):
            pooled = blocks.pool_to_fraction(x, divisor)
            back = blocks.nearest_resize(pooled, h, w)
        expected = F.adaptive_max_pool2d(x, (h // divisor, w // divisor))
        assert torch.equal(pooled, expected)
        assert torch.equal(back, F.interpolate(expected, size=(h, w), mode="nearest"))


def test_ntire_entry_on_set5() -> None:
    """No paper row exists for the challenge entry on Set5 (Y, crop 4); measured 32.165 / 0.8943,
    BSRN-S class (32.16), as an NTIRE 2023 entry should be."""
    model = slimsr.load(official_weight("safmn_ntire2023_x4.pth"))
    result = evaluate_dataset(model, dataset_from_root(shared_file("datasets", "Set5"), 4), 4)
    assert not [r.error for r in result.rows if r.error]
    assert abs(result.mean("psnr") - 32.165) <= 0.002
    assert abs(result.mean("ssim") - 0.8943) <= 0.0002
