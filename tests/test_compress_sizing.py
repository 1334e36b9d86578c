"""Stage 2 (eqs. 5-7): the published compact models, the rounding rule, every spec'd family."""

from __future__ import annotations

import math

import pytest
import torch

import slimsr
from slimsr.compress import (
    SPECS,
    CompressionError,
    Dims,
    compact_dims,
    density_report,
    size_model,
    spec_for,
)
from slimsr.model import SRModel
from slimsr.registry import count_parameters, get_model_info, list_models

pytestmark = pytest.mark.usefixtures("one_thread")


def meta_model(name: str, scale: int = 2, **kwargs) -> SRModel:
    """A registered model with shapes only (no memory): enough to size it."""
    info = get_model_info(name)
    with torch.device("meta"):
        net = info.build(scale, **kwargs)
    return SRModel(net, info, scale, kwargs)


def test_swinir_lightweight_at_0_089_gives_swinirmini() -> None:
    plan = size_model(slimsr.create_model("swinir_s", 2), 0.089)
    s = plan.sizing
    assert s.original == Dims(60, 6, 4)
    assert s.compact == Dims(24, 4, 3)
    # the documented subtlety: 4 * 0.089^(1/6) = 2.67 must round *up* to 3 RSTBs, and eq. 5's
    # square root (not eq. 7's printed cube root, 33) gives 24 channels
    assert s.blocks_exact == pytest.approx(2.673, abs=1e-3)
    assert s.channels_exact == pytest.approx(24.456, abs=1e-3)
    assert round(60 * (0.089 * 28 / 15) ** (1 / 3)) == 33  # eq. 7 as printed
    assert (plan.compact_name, plan.compact_kwargs) == ("swinirmini", {})
    compact = slimsr.create_model(plan.compact_name, 2, **plan.compact_kwargs)
    reference = slimsr.create_model("swinirmini", 2)
    assert compact.num_parameters() == reference.num_parameters() == 98_868
    assert plan.params["compact"] == 98_868
    shapes = {k: v.shape for k, v in compact.net.state_dict().items()}
    assert shapes == {k: v.shape for k, v in reference.net.state_dict().items()}


def test_edsr_baseline_at_0_03_gives_edsrmini() -> None:
    plan = size_model(slimsr.create_model("edsr_baseline", 2), 0.03)
    s = plan.sizing
    assert s.original == Dims(64, 1, 16)
    assert s.compact == Dims(16, 1, 8)
    # 16 * 0.03^(1/6) = 8.92 must round *down* to 8 blocks (rounding gives 9)
    assert s.blocks_exact == pytest.approx(8.918, abs=1e-3)
    assert s.channels_exact == pytest.approx(15.677, abs=1e-3)
    assert (plan.compact_name, plan.compact_kwargs) == ("edsrmini", {})
    compact = slimsr.create_model(plan.compact_name, 2, **plan.compact_kwargs)
    assert compact.num_parameters() == slimsr.create_model("edsrmini", 2).num_parameters()
    assert compact.num_parameters() == 49_603 == plan.params["compact"]


def test_rounding_rule_is_one_rule() -> None:
    # the same function, the same rule, no special cases: depth never below eq. 6's product
    for original, d, bounds, mult in (
        (Dims(60, 6, 4), 0.089, (1, None), 6),
        (Dims(64, 1, 16), 0.03, (1, 1), 1),
    ):
        s = compact_dims(original, d, layer_bounds=bounds, channel_multiple=mult)
        depth = s.compact.blocks * (s.compact.layers + 1)
        assert depth >= s.depth_target
        shallower = [
            c["N_b'"] * (c["N_l'"] + 1)
            for c in s.candidates
            if s.depth_target <= c["N_b'"] * (c["N_l'"] + 1) < depth
        ]
        assert not shallower
        assert abs(s.compact.channels - s.channels_exact) <= mult / 2
    # d = 1 keeps the model; tiny densities stay buildable (at least 1 block, 1 layer)
    assert compact_dims(Dims(60, 6, 4), 1.0, channel_multiple=6).compact == Dims(60, 6, 4)
    tiny = compact_dims(Dims(60, 6, 4), 1e-6, channel_multiple=6)
    assert tiny.compact.blocks >= 1 and tiny.compact.layers >= 1 and tiny.compact.channels >= 6


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, math.nan, math.inf])
def test_density_outside_0_1_is_refused(density: float) -> None:
    with pytest.raises(CompressionError, match="density"):
        compact_dims(Dims(64, 1, 16), density)


def test_models_without_a_spec_are_refused() -> None:
    for name in ("abpn", "e_rfdn"):
        with pytest.raises(CompressionError, match=r"declares no \(N_c, N_l, N_b\)"):
            spec_for(name)


@pytest.mark.parametrize("name", [n for n in list_models() if get_model_info(n).family in SPECS])
def test_every_declared_model_sizes_into_a_buildable_model(name: str) -> None:
    model = meta_model(name)
    spec = spec_for(name)
    assert size_model(model, 1.0).sizing.compact == spec.dims(model)
    for d in (0.5, 0.1, 0.02):
        plan = size_model(model, d)  # builds the compact model and re-reads its dims
        c = plan.sizing.compact
        assert c.channels % spec.channel_multiple(model) == 0
        assert c.channels >= spec.min_channels and c.blocks >= 1
        assert plan.params["compact"] < plan.params["original"]
        lo, hi = spec.layer_bounds(plan.sizing.original)
        assert c.layers >= lo and (hi is None or c.layers <= hi)


def test_bsrn_and_fmen_compact_models_run() -> None:
    for name, scale in (("bsrn", 2), ("fmen_s_train", 4)):
        plan = size_model(slimsr.create_model(name, scale), 0.1)
        compact = slimsr.create_model(plan.compact_name, scale, **plan.compact_kwargs)
        assert spec_for(name).dims(compact) == plan.sizing.compact
        out = compact(torch.rand(1, 3, 16, 16))
        assert out.shape == (1, 3, 16 * scale, 16 * scale)


def test_density_report_counts_the_deep_feature_module() -> None:
    model = slimsr.create_model("edsrmini", 2, num_feat=4, num_block=2)
    net = model.net
    with torch.no_grad():
        net.body[0].conv1.weight[:2] = 0.0  # 2 of 4 output filters: 72 of 144 weights
        net.conv_first.weight.zero_()  # shallow: not in d
    report = density_report(net, "edsrmini")
    names = [layer["name"] for layer in report["layers"]]
    assert names == [
        "body.0.conv1.weight",
        "body.0.conv2.weight",
        "body.1.conv1.weight",
        "body.1.conv2.weight",
        "conv_after_body.weight",
    ]
    assert report["total"] == 5 * 144
    assert report["nonzero"] == 5 * 144 - 72
    assert report["layers"][0]["density"] == 0.5
    assert report["density"] == pytest.approx((720 - 72) / 720)
    zeros = 72 + net.conv_first.weight.numel()
    assert report["whole_model_density"] == pytest.approx(1 - zeros / count_parameters(net))
