"""SPAN family: the official key layout (train form of hongyuanyu/SPAN, deploy form of the NTIRE
2024 release), the Conv3XC fold (train == eval == deploy), stale `eval_conv` tensors, detection
through a bare .pth, FLOPs of the one conv that runs, exact tiling.

No official SPAN weights are in `shared/weights/official`: the layouts below are written out
from the official module definitions (`basicsr/archs/span_arch.py`; Amazingren/NTIRE2024_ESR
`models/team38_SPAN.py`), not read from our modules. Parameter counts of every variant and
scale are in `test_registry.EXPECTED_PARAMS`, whose sweeps also cover forward shapes, detection
round trips and ONNX export.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimsr
from slimsr.archs.span import SPAN, Conv3XC, detect_span, fold_conv3xc
from slimsr.model import SRModel
from slimsr.profile import complexity
from slimsr.registry import build_network, count_parameters, default_registry, get_model_info
from slimsr.reparam import (
    NotReparameterizableError,
    deploy_state_dict,
    reparameterize,
    reparameterize_model,
)
from slimsr.tiling import upscale_tiled

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ("span", "span_ntire", "span_ntire_train", "span_train")


# -- the official layout, written out ------------------------------------------------------


def official_keys(c: int, scale: int, train: bool) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official state dict, in module order. A Conv3XC(i, o) holds `sk`
    (1x1), `conv` = 1x1 to 2i, 3x3 to 2o, 1x1 to o (train form only) and `eval_conv` (3x3);
    SPAN: conv_1 (3 -> c), block_1..6 (c1_r, c2_r, c3_r), conv_cat (1x1, 4c -> c), conv_2,
    upsampler.0 (3x3 to 3 s^2). The RGB mean is a plain attribute: no key."""

    def conv3xc(prefix: str, i: int, o: int) -> dict[str, tuple[int, ...]]:
        parts: list[tuple[str, int, int, int]] = []
        if train:
            parts += [("sk", o, i, 1), ("conv.0", 2 * i, i, 1)]
            parts += [("conv.1", 2 * o, 2 * i, 3), ("conv.2", o, 2 * o, 1)]
        parts.append(("eval_conv", o, i, 3))
        out: dict[str, tuple[int, ...]] = {}
        for name, n_out, n_in, k in parts:
            out[f"{prefix}.{name}.weight"] = (n_out, n_in, k, k)
            out[f"{prefix}.{name}.bias"] = (n_out,)
        return out

    keys = conv3xc("conv_1", 3, c)
    for b in range(1, 7):
        for r in ("c1_r", "c2_r", "c3_r"):
            keys |= conv3xc(f"block_{b}.{r}", c, c)
    keys |= {"conv_cat.weight": (c, 4 * c, 1, 1), "conv_cat.bias": (c,)}
    keys |= conv3xc("conv_2", c, c)
    keys |= {"upsampler.0.weight": (3 * scale * scale, c, 3, 3)}
    keys |= {"upsampler.0.bias": (3 * scale * scale,)}
    return keys


def official_state_dict(c: int, scale: int, train: bool) -> dict[str, torch.Tensor]:
    """Random tensors in the official layout, eval_conv included (as a file would hold it)."""
    gen = torch.Generator().manual_seed(c * 10 + scale)
    return {
        k: torch.randn(shape, generator=gen) * (0.3 if len(shape) == 4 else 0.05)
        for k, shape in official_keys(c, scale, train).items()
    }


@pytest.mark.parametrize(
    ("name", "channels", "train"),
    [
        ("span", 48, False),
        ("span_train", 48, True),
        ("span_ntire", 28, False),
        ("span_ntire_train", 28, True),
    ],
)
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_state_dict_keys_are_the_official_ones(
    name: str, channels: int, train: bool, scale: int
) -> None:
    with torch.device("meta"):
        net = build_network(name, scale)
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    expected = official_keys(channels, scale, train)
    assert list(got) == list(expected)  # same keys, same order
    assert got == expected


def test_ntire_release_size_and_parameter_convention() -> None:
    """The NTIRE 2024 file (team38_span_ch28_slim.pth) holds 44 tensors, 150,688 values; the
    train forms count the frozen eval_conv (an nn.Parameter officially) but do not train it."""
    net = build_network("span_ntire", 4)
    assert len(net.state_dict()) == 44 and count_parameters(net) == 150_688
    train = build_network("span_ntire_train", 4)
    eval_convs = sum(p.numel() for n, p in train.named_parameters() if ".eval_conv." in n)
    assert eval_convs == count_parameters(net) - (28 * 112 + 28) - (48 * 28 * 9 + 48)
    trainable = sum(p.numel() for p in train.parameters() if p.requires_grad)
    assert trainable == count_parameters(train) - eval_convs == 769_428 - eval_convs


def test_registry_facts() -> None:
    for name in NAMES:
        info = get_model_info(name)
        assert (info.family, info.input_range, info.scales) == ("span", 1.0, (2, 3, 4))
        assert (info.tiling, info.min_size, info.cpu_channels_last) == ("exact", 1, False)
        assert "Wan et al." in info.paper
    assert get_model_info("span_train").deploy_form == "span"
    assert get_model_info("span_ntire_train").deploy_form == "span_ntire"
    assert get_model_info("span").deploy_form is None
    assert slimsr.list_models("span*") == sorted(NAMES)


# -- the fold ------------------------------------------------------------------------------


def _randomise(net: nn.Module) -> nn.Module:
    """Non-zero biases everywhere (a zero b0 would hide a wrong border term)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.uniform_(-0.3, 0.3)
    return net


def _assert_close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> None:
    span = float(a.max() - a.min())
    assert span > 0.1  # a constant output would prove nothing
    assert float((a - b).abs().max()) <= rel * span


def test_fold_conv3xc_equals_the_branches_including_borders() -> None:
    block = _randomise(Conv3XC(5, 7).double()).train()
    x = torch.randn(2, 5, 6, 9, dtype=torch.float64)
    parts = [block.sk, *block.conv]
    w, b = fold_conv3xc(*(t for m in parts for t in (m.weight, m.bias)))
    with torch.no_grad():
        branches = block(x)  # training mode: pad 0, 1x1 -> 3x3 -> 1x1, plus the shortcut
        assert torch.allclose(branches, F.conv2d(x, w, b, padding=1), atol=1e-10)
        assert torch.allclose(branches, block.eval()(x), atol=1e-10)  # eval: the fold alone


@pytest.mark.parametrize(("name", "scale"), [("span_train", 2), ("span_ntire_train", 4)])
def test_train_eval_and_deploy_forms_agree(name: str, scale: int) -> None:
    train = _randomise(build_network(name, scale))
    x = torch.rand(1, 3, 14, 11)
    with torch.no_grad():
        branches = train.train()(x)
        folded = train.eval()(x)
        deploy = reparameterize(train, get_model_info(name).deploy_form)
        assert isinstance(deploy, SPAN) and deploy.deploy
        _assert_close(branches, folded)
        _assert_close(folded, deploy(x))
    found = detect_span(deploy.state_dict())
    assert found is not None and (found.name, found.scale) == (name[: -len("_train")], scale)


def test_float64_fold_is_exact_to_rounding() -> None:
    train = _randomise(build_network("span_train", 3, feature_channels=8)).double().eval()
    x = torch.rand(1, 3, 9, 10, dtype=torch.float64)
    with torch.no_grad():
        assert float((train(x) - reparameterize(train)(x)).abs().max()) < 1e-9
        assert float((train.train()(x) - reparameterize(train)(x)).abs().max()) < 1e-9


def test_a_stale_eval_conv_in_a_file_is_refolded_as_the_official_module_does() -> None:
    """The official eval forward re-folds eval_conv from the branches on every call, so the
    stored eval_conv does not matter; both here and in `deploy_state_dict`."""
    sd = official_state_dict(16, 2, train=True)  # eval_conv random: not the fold of anything
    net = build_network("span_train", 2, feature_channels=16)
    net.load_state_dict(sd, strict=True)
    x = torch.rand(1, 3, 12, 13)
    with torch.no_grad():
        branches = net.train()(x)
        _assert_close(branches, net.eval()(x))
        assert not torch.equal(net.conv_1.eval_conv.weight, sd["conv_1.eval_conv.weight"])
        deploy = build_network("span", 2, feature_channels=16).eval()
        deploy.load_state_dict(deploy_state_dict(sd))
        _assert_close(branches, deploy(x))


def test_eval_refolds_after_training_steps() -> None:
    net = build_network("span_train", 2, feature_channels=8)
    x = torch.rand(2, 3, 10, 10)
    with torch.no_grad():
        before = net.eval()(x)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    net.train()(x).abs().mean().backward()
    opt.step()
    assert all(p.grad is None for n, p in net.named_parameters() if ".eval_conv." in n)
    with torch.no_grad():
        after_steps = net.train()(x)
        _assert_close(after_steps, net.eval()(x))
        assert float((after_steps - before).abs().max()) > 1e-3  # the weights did change
        net.conv_1.sk.weight.add_(0.5)  # edited in eval mode: refolded on the next call
        _assert_close(net.train()(x), net.eval()(x))


def test_eval_refolds_after_edits_through_data() -> None:
    """BasicSR-style EMA edits `p.data` in place, which leaves the version counter alone: the
    next eval forward must still run the fold of the edited branches."""
    net = build_network("span_train", 2, feature_channels=8).eval()
    x = torch.rand(1, 3, 10, 10)
    with torch.no_grad():
        before = net(x)
    for name, p in net.named_parameters():
        if ".eval_conv." not in name:
            p.data.mul_(0.9).add_(0.01)  # an EMA step toward other weights
    with torch.inference_mode():
        edited = net(x)
    with torch.no_grad():
        branches = net.train()(x)
    assert float((branches - before).abs().max()) > 1e-3  # the edit did change the function
    _assert_close(branches, edited)


def test_reparameterize_model_and_refusals() -> None:
    model = SRModel(_randomise(build_network("span_train", 3)), get_model_info("span_train"), 3)
    deployed = reparameterize_model(model)
    assert (deployed.name, deployed.scale, deployed.kwargs) == ("span", 3, {})
    x = torch.rand(1, 3, 9, 12)
    with torch.no_grad():
        _assert_close(model(x), deployed(x))
    with pytest.raises(NotReparameterizableError, match="already a deploy"):
        reparameterize_model(deployed)
    with pytest.raises(NotReparameterizableError, match="train-time FMEN or SPAN"):
        reparameterize(build_network("span", 2))


# -- detection, loading --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "scale", "train", "name", "kwargs"),
    [
        (48, 4, True, "span_train", {}),
        (48, 2, False, "span", {}),
        (28, 4, False, "span_ntire", {}),
        (28, 3, True, "span_ntire_train", {}),
        (26, 4, False, "span", {"feature_channels": 26}),  # NTIRE 2024 SPANtiny's width
        (32, 2, True, "span_train", {"feature_channels": 32}),
    ],
)
def test_official_layout_files_load_through_detection(
    channels: int, scale: int, train: bool, name: str, kwargs: dict[str, Any], tmp_path
) -> None:
    """A bare .pth of official keys, and BasicSR's {'params': ...} wrapper, load strictly."""
    sd = official_state_dict(channels, scale, train)
    for i, payload in enumerate((sd, {"params": sd})):
        path = tmp_path / f"span{i}.pth"
        torch.save(payload, path)
        model = slimsr.load(path)
        assert (model.name, model.scale, model.kwargs) == (name, scale, kwargs)
        got = model.net.state_dict()
        assert list(got) == list(sd)
        for key, value in got.items():
            if ".eval_conv." not in key or not train:  # train form: eval_conv is refolded
                assert torch.equal(value, sd[key]), key
        with torch.inference_mode():
            y = model(torch.rand(1, 3, 8, 9))
        assert y.shape == (1, 3, 8 * scale, 9 * scale) and torch.isfinite(y).all()


def test_detector_ignores_foreign_and_altered_state_dicts() -> None:
    assert detect_span({}) is None
    for name in ("rlfn_ntire", "fmen_s_train", "e_rfdn", "bsrn_s"):
        with torch.device("meta"):
            assert detect_span(build_network(name, 4).state_dict()) is None
    sd = official_state_dict(16, 4, train=True)
    assert detect_span(sd) is not None
    missing = {k: v for k, v in sd.items() if not k.startswith("block_3.c2_r.conv.1.")}
    assert detect_span(missing) is None  # a half train-form conv: not SPAN's
    extra = dict(sd, **{"block_7.c1_r.eval_conv.weight": torch.zeros(16, 16, 3, 3)})
    assert detect_span(extra) is None  # seven blocks: the official SPAN has six
    no_sk = {k: v for k, v in sd.items() if not k.startswith("conv_1.sk.")}
    assert detect_span(no_sk) is None  # forms mixed
    deploy = official_state_dict(16, 4, train=False)
    grey = dict(deploy, **{"conv_1.eval_conv.weight": torch.zeros(16, 1, 3, 3)})
    assert detect_span(grey) is None
    found = default_registry().detect(deploy)  # no other family claims it
    assert found is not None and found.name == "span"


# -- inference conventions -----------------------------------------------------------------


def test_input_is_0_1_normalised_inside_and_output_is_not_shifted_back() -> None:
    """The network maps [0,1] RGB to (x - DIV2K mean) * 255 itself; the mean is a
    non-persistent buffer that follows .to() and never enters the state dict."""
    net = build_network("span", 2, feature_channels=8).eval()
    assert "mean" not in net.state_dict()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
                m.bias.zero_()
        net.conv_1.eval_conv.weight[:3, :, 1, 1] = torch.eye(3)  # stem = normalised input
        net.conv_cat.weight[:3, :3, 0, 0] = torch.eye(3)
        for c in range(3):  # each colour to its own 2x2 output block
            net.upsampler[0].weight[4 * c : 4 * c + 4, c, 1, 1] = 1.0
        x = torch.rand(1, 3, 5, 6)
        expected = (x - torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)) * 255
        y = net(x)
    torch.testing.assert_close(y, F.interpolate(expected, scale_factor=2, mode="nearest"))
    assert net.double().mean.dtype == torch.float64


def test_conv_cat_reads_stem_conv_2_block_1_and_block_6s_activated_first_conv() -> None:
    """With hand-set weights each output colour shows one `conv_cat` input: conv_2(block_6),
    block_1, and SiLU(c1_r) of block_6 (the official SiLU runs in place, so the tensor the
    block returns is the activated one: -0.269 here, not -1)."""
    net = build_network("span", 2, feature_channels=8).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
                m.bias.zero_()
        net.conv_1.eval_conv.weight[:3, :, 1, 1] = torch.eye(3)
        net.block_1.c3_r.eval_conv.bias.fill_(1.0)  # block_1 = (1 + stem) * (sigmoid(1) - 0.5)
        net.block_6.c1_r.eval_conv.bias.fill_(-1.0)
        net.conv_2.eval_conv.bias.fill_(2.0)
        for colour, slot in enumerate((1, 2, 3)):  # slots: stem, conv_2, block_1, first
            net.conv_cat.weight[colour, 8 * slot, 0, 0] = 1.0
            net.upsampler[0].weight[4 * colour : 4 * colour + 4, colour, 1, 1] = 1.0
        x = torch.rand(1, 3, 4, 5)
        y = net(x)[..., ::2, ::2]
    stem0 = (x[:, 0] - 0.4488) * 255
    torch.testing.assert_close(y[:, 0], torch.full_like(stem0, 2.0))
    torch.testing.assert_close(y[:, 1], (1 + stem0) * (torch.sigmoid(torch.tensor(1.0)) - 0.5))
    torch.testing.assert_close(y[:, 2], torch.full_like(stem0, F.silu(torch.tensor(-1.0)).item()))


def test_train_form_counts_as_the_deploy_form() -> None:
    """In eval mode only eval_conv runs (the fold happens on .eval(), outside the forward), so
    every FLOPs convention, activations and conv calls equal the deploy network's. fvcore at
    256x256 (the NTIRE 2024 setting): per LR pixel 3*28*9 + 19 * 28*28*9 + 112*28 + 28*48*9
    = 150,052 MACs."""
    counts = {}
    for name in ("span_ntire", "span_ntire_train"):
        counts[name] = complexity(build_network(name, 4), (256, 256))
    assert counts["span_ntire"] == counts["span_ntire_train"]
    c = counts["span_ntire"]
    assert c.flops["fvcore"] == c.flops["macs"] == 150_052 * 256 * 256
    assert c.convs == 1 + 18 + 1 + 1 + 1


def test_tiles_equal_the_whole_image_beyond_the_receptive_field() -> None:
    """21 LR px of context (21 3x3 convs in a row): tiles whose blending weights start more
    than that from their cut edges give the whole-image output; narrow overlaps do not."""
    torch.manual_seed(0)
    model = slimsr.create_model("span_train", 2, feature_channels=8).eval()
    _randomise(model.net)
    x = torch.rand(1, 3, 200, 190)
    with torch.inference_mode():
        whole = model(x)
        exact = upscale_tiled(model, x, 2, 180, 90)
        rough = upscale_tiled(model, x, 2, 64, 8)
    assert float((exact - whole).abs().max()) < 1e-5 * float(whole.abs().max())
    assert float((rough - whole).abs().max()) > 1e-3 * float(whole.abs().max())
