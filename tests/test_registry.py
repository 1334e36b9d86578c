"""The registry as a whole: exact parameter counts, a sweep over every variant, the API wrapper."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimsr
from slimsr.errors import CheckpointError
from slimsr.model import SRModel
from slimsr.registry import (
    Detection,
    ModelRegistry,
    count_parameters,
    default_registry,
    register_family,
    register_model,
)

# ARCHITECTURES.md §0, column P: sum(p.numel()) of the official modules (EDSR incl. MeanShift).
EXPECTED_PARAMS = {
    "edsr_baseline": (1_369_883, 1_554_523, 1_517_595),
    "edsr": (40_729_627, 43_680_027, 43_089_947),
    "edsrmini": (49_603, 61_203, 58_883),
    "swinir_m": (11_752_487, 11_937_127, 11_900_199),
    "swinir_s": (910_152, 918_267, 929_628),
    "swinirmini": (98_868, 102_123, 106_680),
    "fmen_s": (324_830, 331_595, 341_066),
    "fmen_s_train": (1_029_630, 1_036_395, 1_045_866),
    "fmen": (748_656, 757_311, 769_428),
    "bsrn": (331_628, 340_283, 352_400),
    "bsrn_s": (140_700, 147_195, 156_288),
    "e_rfdn": (417_212, 423_977, 433_448),
    "abpn": (33_464, 42_539, 62_048),
    "rlfn": (526_856, 533_891, 543_740),
    "rlfn_s": (454_620, 461_115, 470_208),
    "rlfn_ntire": (302_278, 308_503, 317_218),
    "safmn": (227_820, 232_695, 239_520),
    "smfanet": (185_628, 190_503, 197_328),
    # SPAN: hongyuanyu/SPAN span_arch.py; the train forms count their frozen eval_conv (an
    # nn.Parameter officially). span_ntire x4 = the NTIRE 2024 release file's tensor count.
    "span": (410_700, 417_195, 426_288),
    "span_train": (2_221_140, 2_227_635, 2_236_728),
    "span_ntire": (141_580, 145_375, 150_688),
    "span_ntire_train": (760_320, 764_115, 769_428),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_counts_match_the_official_modules(name: str) -> None:
    for scale, expected in zip((2, 3, 4), EXPECTED_PARAMS[name]):
        with torch.device("meta"):
            net = slimsr.build_network(name, scale)
        assert count_parameters(net) == expected, (name, scale)


def test_every_architecture_of_the_design_is_registered() -> None:
    names = set(slimsr.list_models())
    assert set(EXPECTED_PARAMS) <= names
    assert "fmen_train" in names
    assert slimsr.list_models("bsrn*") == ["bsrn", "bsrn_s"]
    assert slimsr.get_model_info("EDSR-baseline").name == "edsr_baseline"


@pytest.mark.parametrize("name", slimsr.list_models())
def test_every_variant_upscales_any_size_in_the_0_1_convention(name: str) -> None:
    """Sweep (timm / traiNNer style): a new variant is tested without new test code."""
    info = slimsr.get_model_info(name)
    if count_parameters_meta(name) > 5_000_000:
        pytest.skip("large model: parameter count and keys are tested, forward is slow on CPU")
    for scale in info.scales:
        model = slimsr.create_model(name, scale)
        x = torch.rand(1, 3, 19, 21)
        with torch.inference_mode():
            y = model(x)
        assert y.shape == (1, 3, 19 * scale, 21 * scale)
        assert torch.isfinite(y).all()
        # Random weights on a [0,1] input must stay within a sane band of [0,1] if the range
        # conversion is right (a [0,255] net fed [0,1] or vice versa is off by orders of magnitude).
        assert y.abs().mean() < 50


def count_parameters_meta(name: str) -> int:
    with torch.device("meta"):
        return count_parameters(slimsr.build_network(name))


class Doubler(nn.Module):
    """A [0,255] 'network' that must see [0,255] values and a multiple-of-4 size."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] % 4 == 0 and x.shape[-2] % 4 == 0
        assert x.max() > 2  # got the [0,255] range
        return nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest")


def test_wrapper_scales_range_pads_and_crops() -> None:
    registry = ModelRegistry()

    @register_model(family="toy", input_range=255.0, size_multiple=4, registry=registry)
    def toy(scale: int) -> nn.Module:
        """Toy."""
        return Doubler(scale)

    info = registry.get("toy")
    model = SRModel(info.build(2), info, 2)
    x = torch.rand(1, 3, 5, 7)
    y = model(x)
    assert y.shape == (1, 3, 10, 14)
    torch.testing.assert_close(y, nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
    with pytest.raises(ValueError, match="registered twice"):
        register_model(family="toy", input_range=1.0, registry=registry)(toy)


def test_unsupported_dtype_is_refused_clearly() -> None:
    registry = ModelRegistry()

    @register_model(family="toy", input_range=1.0, supports_fp16=False, registry=registry)
    def toy16(scale: int) -> nn.Module:
        """Toy."""
        return Doubler(scale)

    info = registry.get("toy16")
    model = SRModel(info.build(2), info, 2)
    with pytest.raises(slimsr.SlimsrError, match="does not support fp16"):
        model.half()
    with pytest.raises(slimsr.SlimsrError, match="does not support fp16"):
        model.to(dtype=torch.float16)
    model.to(torch.bfloat16)


@pytest.mark.parametrize("name", ["bsrn", "bsrn_s", "e_rfdn"])
def test_tiny_inputs_are_padded_up_to_the_minimum_size(name: str) -> None:
    model = slimsr.create_model(name, 2)
    assert model.info.min_size == 15
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 4, 9)).shape == (1, 3, 8, 18)
        with pytest.raises(RuntimeError):
            model.net(torch.rand(1, 3, 4, 9))  # the raw network really needs the padding


def test_family_facts_are_declared_once_and_inherited() -> None:
    """The measured CPU layouts (docs/efficiency.md) and the tiling claims (README), as each
    family declares them; its variants inherit them, FMEN's train forms override the layout."""
    registry = default_registry()
    facts = {f.name: (f.cpu_channels_last, f.tiling) for f in registry.families()}
    assert facts == {
        "abpn": (True, "exact"),
        "bsrn": (False, "approximate"),
        "edsr": (True, "exact"),
        "fmen": (True, "exact"),
        "rfdn": (True, "approximate"),
        "rlfn": (False, "approximate"),
        "safmn": (False, "approximate"),
        "smfanet": (False, "approximate"),
        "span": (False, "exact"),
        "swinir": (True, "approximate"),
    }
    overrides = {
        i.name
        for i in registry
        if i.cpu_channels_last != registry.family(i.family).cpu_channels_last
    }
    assert overrides == {"fmen_train", "fmen_s_train"}
    assert all(i.tiling == registry.family(i.family).tiling for i in registry)


def test_undeclared_families_get_the_cautious_defaults() -> None:
    registry = ModelRegistry()

    @register_model(family="toy", input_range=1.0, registry=registry)
    def plain(scale: int) -> nn.Module:
        """Toy."""
        return Doubler(scale)

    assert not registry.get("plain").cpu_channels_last
    assert registry.get("plain").tiling == "approximate"
    register_family("local", cpu_channels_last=True, tiling="exact", registry=registry)

    @register_model(family="local", input_range=1.0, registry=registry)
    def local(scale: int) -> nn.Module:
        """Toy."""
        return Doubler(scale)

    assert registry.get("local").cpu_channels_last and registry.get("local").tiling == "exact"
    with pytest.raises(ValueError, match="registered twice"):
        register_family("local", cpu_channels_last=False, tiling="exact", registry=registry)
    with pytest.raises(ValueError, match="exact"):
        register_family("odd", cpu_channels_last=False, tiling="nearly", registry=registry)  # type: ignore[arg-type]


# -- detection: every registered variant, at every scale, comes back from its weights ----------

# Non-default widths and depths: the detectors read them from tensor shapes. `expect` is what
# the registry names the result when it differs from the builder's name: SwinIR has no name
# in its keys, so a compact model is called after the nearest published width (36 is closer to
# 24 than to 60) and a pixelshuffle tail means SwinIR-M with every hyper-parameter spelled out.
SWINIR_TINY = {"embed_dim": 12, "depths": [2, 2], "num_heads": [3, 3]}
CUSTOM: list[tuple[str, int, dict, tuple[str, dict] | None]] = [
    ("bsrn", 3, {"num_feat": 32, "num_block": 3}, None),
    ("bsrn_s", 2, {"num_feat": 24, "num_block": 2}, None),
    # Paper-ablation switches that change keys / shapes (tests/test_ablations.py has the rest).
    ("bsrn", 4, {"conv": "dsconv"}, None),
    ("bsrn", 2, {"num_feat": 16, "num_block": 2, "conv": "bsconvs"}, None),
    ("bsrn", 3, {"esa": False, "cca": False}, None),
    ("bsrn_s", 4, {"esa": False}, None),
    ("fmen", 4, {"attn": "cca"}, None),
    ("fmen_s", 2, {"attn": "esa", "down_blocks": 2, "up_blocks": [1, 1, 1]}, None),
    ("fmen_s_train", 4, {"attn": "none"}, None),
    ("fmen_train", 2, {"block": "pb"}, None),
    ("e_rfdn", 3, {"num_feat": 20, "num_block": 2}, None),
    ("e_rfdn", 2, {"num_block": 6}, None),
    ("span", 3, {"feature_channels": 16}, None),
    ("span_train", 2, {"feature_channels": 12}, None),
    ("span_ntire", 4, {"feature_channels": 48}, ("span", {})),
    ("span_ntire_train", 3, {"feature_channels": 26}, ("span_train", {"feature_channels": 26})),
    ("edsr_baseline", 2, {"num_feat": 32, "num_block": 4}, None),
    ("edsrmini", 4, {"num_feat": 24}, None),
    ("fmen_s", 3, {"n_feats": 24, "mid_feats": 12, "down_blocks": 2, "up_blocks": [1, 0, 2]}, None),
    ("fmen", 4, {"up_blocks": [1, 2, 3, 2, 1]}, None),
    (
        "fmen_s_train",
        2,
        {
            "n_feats": 20,
            "mid_feats": 10,
            "down_blocks": 3,
            "up_blocks": [0, 2, 1, 1],
            "backbone_expand_ratio": 3,
            "attention_expand_ratio": 1,
        },
        None,
    ),
    ("swinirmini", 2, {"img_size": 48}, None),
    (
        "swinir_s",
        4,
        {"embed_dim": 36, "depths": [2, 2], "num_heads": [6, 6], "img_size": 32},
        ("swinirmini", {"embed_dim": 36, "depths": [2, 2], "num_heads": [6, 6], "img_size": 32}),
    ),
    (
        "swinirmini",
        3,
        {"upsampler": "pixelshuffle", "num_feat": 16, "mlp_ratio": 1.5, "window_size": 4},
        (
            "swinir_m",
            {
                "embed_dim": 24,
                "depths": [4, 4, 4],
                "num_heads": [6, 6, 6],
                "window_size": 4,
                "mlp_ratio": 1.5,
                "img_size": 64,
                "num_feat": 16,
            },
        ),
    ),
    (
        "swinir_m",
        4,
        {**SWINIR_TINY, "upsampler": "nearest+conv", "resi_connection": "3conv", "img_size": 32},
        None,
    ),
]
ROUND_TRIPS = [
    pytest.param(info.name, scale, {}, None, id=f"{info.name}-x{scale}")
    for info in default_registry()
    for scale in info.scales
] + [pytest.param(*case, id=f"{case[0]}-x{case[1]}-custom{i}") for i, case in enumerate(CUSTOM)]
FILE_CHECK_UP_TO = 2_000_000
"""Round trips run on the meta device (shapes are all detection reads); the custom cases and
each small variant at its default scale also go through a real file."""


@pytest.mark.parametrize(("name", "scale", "kwargs", "expect"), ROUND_TRIPS)
def test_detection_round_trip(
    name: str, scale: int, kwargs: dict, expect: tuple[str, dict] | None, tmp_path
) -> None:
    """Sweep: the state dict of any variant is recognised as that variant, scale and
    hyper-parameters by its own family's detector alone and loads strictly into the rebuilt
    network; a bare safetensors file of it comes back through `slimsr.load` bit for bit."""
    registry = default_registry()
    info = registry.get(name)
    expect_name, expect_kwargs = expect or (name, kwargs)
    with torch.device("meta"):
        net = info.build(scale, **kwargs)
    sd = net.state_dict()
    found = registry.detect(sd)
    assert found is not None
    assert (found.name, found.scale, found.kwargs) == (expect_name, scale, expect_kwargs)
    assert registry.get(found.name).family == info.family
    others = [f for f, detector in registry.detectors() if f != info.family and detector(sd)]
    assert not others, f"{name} is also claimed by {others}"
    if expect is not None:  # otherwise the rebuild is the same call that built `net`
        with torch.device("meta"):
            net = registry.get(found.name).build(found.scale, **found.kwargs)
    net.load_state_dict(found.state_dict, strict=True)
    if count_parameters(net) > FILE_CHECK_UP_TO or not (kwargs or scale == info.default_scale):
        return
    from safetensors.torch import save_file

    sd = info.build(scale, **kwargs).state_dict()
    path = tmp_path / "bare.safetensors"  # no description in the header: detection names it
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model = slimsr.load(path)
    assert (model.name, model.scale, model.kwargs) == (expect_name, scale, expect_kwargs)
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, sd[key]), key


def test_detection_asks_every_family_and_refuses_weights_two_families_claim() -> None:
    """Detection does not depend on the order families were imported in: when two detectors
    recognise the same weights, loading stops with one line naming both instead of guessing."""
    reg = ModelRegistry()
    sd = {"body.weight": torch.zeros(4, 3, 3, 3)}
    reg.add_detector("first", lambda s: None)
    reg.add_detector("second", lambda s: Detection("second_net", 2, {}, s))
    found = reg.detect(sd)
    assert found is not None and found.name == "second_net"  # not only the first detector
    reg.add_detector("third", lambda s: Detection("third_net", 4, {}, s))
    with pytest.raises(CheckpointError, match=r"second_net x2, third_net x4"):
        reg.detect(sd)
    assert ModelRegistry().detect(sd) is None
