"""FMEN / FMEN-S: parameter counts, official keys and weights, detection, train-time forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slimsr.archs.fmen import FMEN, TrainFMEN, detect_fmen
from slimsr.registry import build_network, count_parameters, get_model_info
from tests.conftest import official_weight

# ARCHITECTURES.md §0 (official TEST_FMEN / TRAIN_FMEN, counted by running them).
PARAMS = {
    "fmen_s": (324_830, 331_595, 341_066),
    "fmen": (748_656, 757_311, 769_428),
    "fmen_s_train": (1_029_630, 1_036_395, 1_045_866),
    "fmen_train": (2_424_552, 2_433_207, 2_445_324),
}


def _load(filename: str) -> dict[str, torch.Tensor]:
    sd = torch.load(official_weight(filename), map_location="cpu", weights_only=True)
    return dict(sd.get("params", sd))


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_param_counts(name: str) -> None:
    for scale, expected in zip((2, 3, 4), PARAMS[name], strict=True):
        assert count_parameters(build_network(name, scale)) == expected, (name, scale)


def test_registry_facts() -> None:
    for name in PARAMS:
        info = get_model_info(name)
        assert info.family == "fmen" and info.input_range == 255.0 and info.scales == (2, 3, 4)
        assert info.default_scale == 4
    assert get_model_info("fmen_s_train").deploy_form == "fmen_s"
    assert get_model_info("fmen_train").deploy_form == "fmen"
    assert get_model_info("fmen_s").deploy_form is None


def test_train_keys_are_official() -> None:
    sd = build_network("fmen_s_train", 4).state_dict()
    for key in (
        "ERBs.0.conv1.expand_conv.weight",
        "ERBs.0.conv2.fea_conv.bias",
        "warmup.1.convs.1.conv2.reduce_conv.weight",
        "HFABs.0.bn1.num_batches_tracked",
        "HFABs.3.bn3.running_var",
        "tail.0.weight",
    ):
        assert key in sd, key
    assert sd["ERBs.0.conv1.expand_conv.weight"].shape == (100, 50, 1, 1)
    assert sd["ERBs.0.conv1.fea_conv.weight"].shape == (100, 100, 3, 3)
    assert sd["warmup.1.squeeze.weight"].shape == (12, 50, 3, 3)  # mid_feats - 4
    assert sd["HFABs.0.bn2.weight"].shape == (16,)


def test_deploy_keys_equal_official_and_strict_load() -> None:
    official = _load("fmen_s_x4_deploy.pt")
    net = build_network("fmen_s", 4)
    ours = net.state_dict()
    assert len(official) == 68
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in official.items()
    }
    net.load_state_dict(official, strict=True)


def _gradient_image() -> torch.Tensor:
    """A smooth 64x64 RGB image in [0,255]: any sane x4 SR model restores it almost exactly."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    return torch.stack([60 + 150 * xx, 60 + 150 * yy, 200 - 120 * xx * yy])[None]


def _psnr(a: torch.Tensor, b: torch.Tensor, border: int = 8) -> float:
    mse = ((a - b)[..., border:-border, border:-border] ** 2).mean()
    return float(10 * torch.log10(255.0**2 / mse))


@pytest.mark.parametrize("filename", ["fmen_s_x4_deploy.pt", "fmen_s_x4_deploy_ntire2022.pth"])
def test_official_weights_detect_load_and_work_on_0_255(filename: str) -> None:
    sd = _load(filename)
    found = detect_fmen(sd)
    assert found is not None
    assert (found.name, found.scale, found.kwargs) == ("fmen_s", 4, {})
    if "ntire" in filename:
        assert any(k.startswith("basic_blocks.") for k in sd)
        assert not any(k.startswith(("basic_blocks.", "hfabs.")) for k in found.state_dict)
    net = build_network(found.name, found.scale, **found.kwargs).eval()
    net.load_state_dict(found.state_dict, strict=True)
    hr = _gradient_image()
    lr = F.avg_pool2d(hr, 4)
    with torch.no_grad():
        sr = net(lr)
        wrong_range = net(lr / 255.0) * 255.0
    bicubic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    # measured: ~65 / ~64 dB (bicubic 58.5); fed [0,1] instead: 36 / 27 dB
    assert _psnr(sr, hr) > _psnr(bicubic, hr) + 3.0
    assert _psnr(wrong_range, hr) < 45.0


def test_detector_renames_ntire_keys_of_any_config() -> None:
    kwargs = {"n_feats": 16, "mid_feats": 8, "down_blocks": 1, "up_blocks": [1, 1]}
    sd = build_network("fmen_s", 2, **kwargs).state_dict()
    ntire = {
        k.replace("ERBs.", "basic_blocks.").replace("HFABs.", "hfabs."): v for k, v in sd.items()
    }
    found = detect_fmen(ntire)
    assert found is not None and found.name == "fmen_s" and found.kwargs == kwargs
    assert set(found.state_dict) == set(sd)


def test_detector_declines_foreign_and_broken_state_dicts() -> None:
    assert detect_fmen({"conv_first.weight": torch.zeros(64, 3, 3, 3)}) is None
    sd = build_network("fmen_s", 4).state_dict()
    assert detect_fmen({k: v for k, v in sd.items() if not k.startswith("tail.")}) is None
    bad_tail = {**sd, "tail.0.weight": torch.zeros(47, 50, 3, 3)}
    assert detect_fmen(bad_tail) is None
    bad_warmup = {**sd, "warmup.1.squeeze.weight": torch.zeros(16, 50, 3, 3)}
    assert detect_fmen(bad_warmup) is None


def test_forms_and_shapes() -> None:
    assert isinstance(build_network("fmen_s", 2), FMEN)
    assert isinstance(build_network("fmen_train", 2), TrainFMEN)
    net = build_network("fmen_s", 3).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 7, 9) * 255).shape == (1, 3, 21, 27)
    with pytest.raises(ValueError, match="up_blocks"):
        build_network("fmen_s", 4, down_blocks=2)


def test_train_mode_forward_and_backward() -> None:
    net = build_network("fmen_s_train", 2, n_feats=16, mid_feats=8).train()
    x = torch.rand(2, 3, 12, 10) * 255
    out = net(x)
    assert out.shape == (2, 3, 24, 20) and torch.isfinite(out).all()
    out.mean().backward()
    assert net.ERBs[0].conv1.expand_conv.weight.grad is not None
    assert net.HFABs[0].bn1.weight.grad is not None
    assert int(net.HFABs[0].bn1.num_batches_tracked) == 1
    assert not torch.equal(net.HFABs[0].bn1.running_mean, torch.zeros(16))


@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
def test_pad_with_is_exact_keeps_the_layout_and_backpropagates(fmt: torch.memory_format) -> None:
    """The per-channel border of the train-time graph: exactly x inside and value on the
    one-pixel ring, in x's memory format (so the conv after it does not reorder), with the
    gradients of a slice and a border sum."""
    from slimsr.archs.fmen import pad_with

    x = torch.randn(2, 5, 7, 9, dtype=torch.float64).contiguous(memory_format=fmt)
    value = torch.randn(5, dtype=torch.float64)
    out = pad_with(x, value)
    ref = value.view(1, 5, 1, 1).expand(2, 5, 9, 11).clone()
    ref[:, :, 1:-1, 1:-1] = x
    assert torch.equal(out, ref)
    assert out.is_contiguous(memory_format=fmt)
    x.requires_grad_(True)
    value.requires_grad_(True)
    assert torch.autograd.gradcheck(pad_with, (x, value))
