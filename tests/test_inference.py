"""The fast inference path: fused forms compute the plain forward, `prepare_for_inference`.

Every fused form is compared with the plain network it was built from, at x2/x3/x4, on odd
input sizes and a batch of two: in float64 (the portable PyTorch path; agreement to rounding)
and in float32 (oneDNN's fused kernels on CPU). No timings are asserted.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimsr
from slimsr.archs.blocks import BSConvU, ChannelsLastPixelShuffle
from slimsr.errors import SlimsrError
from slimsr.fused import fuse
from slimsr.fused.kernels import Act, fused_conv_add
from slimsr.fused.modules import FusedConv, FusedModule, Workspace
from slimsr.inference_form import (
    default_fuse,
    has_fused_form,
    inference_config,
    prepare_for_inference,
    run_inference,
)
from slimsr.registry import build_network, default_registry
from slimsr.reparam import reparameterize

from .conftest import official_weight


def _has_fused_form(name: str) -> bool:
    with torch.device("meta"):  # shapes only: building EDSR's 40M parameters costs nothing
        return has_fused_form(build_network(name))


FUSED = sorted(i.name for i in default_registry() if _has_fused_form(i.name))
SIZES = ((17, 23), (31, 16))  # odd, non-square; ESA needs >= 15 px


def test_the_fused_models_are_the_expected_ones() -> None:
    assert FUSED == [
        "abpn",
        "bsrn",
        "bsrn_s",
        "e_rfdn",
        "edsr",
        "edsr_baseline",
        "edsrmini",
        "fmen",
        "fmen_s",
        "rlfn",
        "rlfn_ntire",
        "rlfn_s",
        "safmn",
        "safmn_ntire",
        "smfanet",
        "span",
        "span_ntire",
        "swinir_m",
        "swinir_s",
        "swinirmini",
    ]


def _perturbed(name: str, scale: int, dtype: torch.dtype) -> nn.Module:
    """A random network with every parameter and buffer moved off its initial value, so that
    zero biases or unit weights cannot hide a dropped term."""
    torch.manual_seed(scale)
    net = build_network(name, scale).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return net.to(dtype)


@pytest.mark.parametrize(
    ("name", "scale"),
    [(n, s) for n in FUSED for s in (2, 3, 4) if s in slimsr.get_model_info(n).scales],
)
def test_fused_form_equals_the_plain_forward(name: str, scale: int) -> None:
    info = slimsr.get_model_info(name)
    for dtype, atol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        net = _perturbed(name, scale, dtype)
        fused = fuse(net)
        assert isinstance(fused, FusedModule)
        for h, w in SIZES:
            x = torch.rand(2, 3, h, w, dtype=dtype) * info.input_range
            with torch.inference_mode():
                ref, out = net(x), fused(x)
            assert out.shape == ref.shape == (2, 3, h * scale, w * scale)
            # relative to the output's size where a random network leaves the input's range
            # (SPAN multiplies its input by 255 inside: outputs ~50)
            size = max(info.input_range, ref.abs().max().item())
            err = (out - ref).abs().max().item() / size
            assert err <= atol, f"{name} x{scale} {dtype} {h}x{w}: {err:.2e}"


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_fused_abpn_clips_exactly_where_the_plain_graph_does(scale: int) -> None:
    """A last-conv bias of +-300 drives most outputs past [0, 255]: the fused form must clip
    the same pixels to exactly 0 and 255 and agree with the plain graph elsewhere."""
    net = _perturbed("abpn", scale, torch.float32)
    with torch.no_grad():
        net.convs[-1].bias.copy_(torch.linspace(-300, 300, net.convs[-1].out_channels))
    fused = fuse(net)
    x = torch.rand(2, 3, 9, 14) * 255
    with torch.inference_mode():
        ref, out = net(x), fused(x)
    for bound in (0.0, 255.0):
        assert torch.equal(out == bound, ref == bound)
    assert 0.2 < (ref == 0).float().mean() < 0.8 and (ref == 255).any()
    assert out.min() >= 0 and out.max() <= 255
    torch.testing.assert_close(out, ref, rtol=0, atol=255 * 1e-6)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_fused_edsr_banded_tail_is_exact(scale: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last shuffle stage runs in bands of rows with a halo: with the smallest bands (8
    rows, a short last band) the image must equal the plain forward, seams included."""
    from slimsr.fused.edsr import FusedEDSR

    monkeypatch.setattr(FusedEDSR, "BAND_BYTES", 1)
    for name in ("edsrmini", "edsr_baseline"):
        net = _perturbed(name, scale, torch.float64)
        fused = fuse(net)
        x = torch.rand(1, 3, 37, 11, dtype=torch.float64) * slimsr.get_model_info(name).input_range
        with torch.inference_mode():
            ref, out = net(x), fused(x)
        assert out.shape == ref.shape and out.is_contiguous()
        assert (out - ref).abs().max().item() <= 1e-9 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"resi_connection": "3conv"},
        {"upsampler": "nearest+conv", "num_feat": 16},
        {"upsampler": "pixelshuffle", "num_feat": 16},
        {"patch_norm": False},
    ],
)
def test_fused_swinir_variants_and_window_layouts(kwargs: dict) -> None:
    """Every upsampler and residual connection, a batch of two, and sizes where the shifted
    windows are all border windows (one window), all but one, or a single row of them: the
    fused form groups windows by their shift mask, which these layouts exercise."""
    scale = 2
    net = build_network("swinir_s", scale, **kwargs).eval().double()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    fused = fuse(net)
    for b, h, w in ((2, 16, 16), (1, 5, 7), (1, 8, 33), (1, 19, 27)):
        x = torch.rand(b, 3, h, w, dtype=torch.float64)
        with torch.inference_mode():
            ref, out = net(x), fused(x)
        assert out.shape == ref.shape == (b, 3, h * scale, w * scale)
        assert (out - ref).abs().max().item() <= 1e-10, (kwargs, b, h, w)


def test_fused_swinir_in_chunks_of_one_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attention and MLP run in chunks of windows / tokens: with one window per chunk (and a
    batch of two, so chunks cut across images' token runs) the result must not change."""
    from slimsr.fused.swinir import FusedSwinBlock

    net = _perturbed("swinirmini", 2, torch.float64)
    fused = fuse(net)
    x = torch.rand(2, 3, 24, 19, dtype=torch.float64)
    with torch.inference_mode():
        whole = fused(x)
        monkeypatch.setattr(FusedSwinBlock, "CHUNK_BYTES", 1)
        chunked, ref = fused(x), net(x)
    assert (chunked - ref).abs().max().item() <= 1e-10
    assert (chunked - whole).abs().max().item() <= 1e-12


def test_fused_form_leaves_the_network_alone_and_holds_no_state() -> None:
    net = _perturbed("bsrn_s", 4, torch.float32)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = sum(p.numel() for p in net.parameters())
    fused = fuse(net)
    after = net.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert sum(p.numel() for p in net.parameters()) == params == 156_288
    assert fused.state_dict() == {} and not list(fused.parameters())
    with pytest.raises(RuntimeError, match="no trainable state"):
        fused.load_state_dict({})


@pytest.mark.parametrize(
    ("name", "filename"),
    [
        ("bsrn", "bsrn_x4.pth"),
        ("bsrn_s", "bsrn_s_x4.pth"),
        ("e_rfdn", "e_rfdn_x4.pth"),
        ("fmen_s", "fmen_s_x4_deploy.pt"),
        ("rlfn", "rlfn_x4.pth"),
        ("rlfn_s", "rlfn_s_x2.pth"),
        ("rlfn_ntire", "rlfn_ntire_x4.pth"),
        ("abpn", "abpn_x3_float_keras.npz"),
        ("smfanet", "smfanet_div2k_x4.pth"),
        ("safmn_ntire", "safmn_ntire2023_x4.pth"),
    ],
)
def test_fused_form_of_the_official_weights(name: str, filename: str) -> None:
    model = slimsr.load(official_weight(filename))
    assert model.name == name
    net = model.net.eval().double()
    fused = fuse(net)
    x = torch.rand(1, 3, 19, 21, dtype=torch.float64) * model.input_range
    with torch.inference_mode():
        err = (fused(x) - net(x)).abs().max().item() / model.input_range
    assert err < 1e-10


def test_a_train_form_is_fused_through_its_deploy_form() -> None:
    """span_ntire_train has no fused form of its own; re-parameterised, its deploy form's fused
    form computes what the train form computes in eval mode."""
    train = _perturbed("span_ntire_train", 3, torch.float64)
    assert fuse(train) is None and not default_fuse(train, "cpu")
    fused = fuse(reparameterize(train))
    x = torch.rand(1, 3, 13, 18, dtype=torch.float64)
    with torch.inference_mode():
        ref, out = train(x), fused(x)
    assert (out - ref).abs().max().item() <= 1e-10 * max(1.0, ref.abs().max().item())


def test_prepare_for_inference_returns_a_fused_srmodel() -> None:
    model = slimsr.create_model("e_rfdn", 3)
    keys = list(model.net.state_dict())
    x = torch.rand(1, 3, 13, 11)  # below ESA's 15 px: the wrapper pads as for the plain model
    with torch.no_grad():
        ref = model(x)
    fast = prepare_for_inference(model, "cpu")
    assert isinstance(fast, slimsr.SRModel) and fast is not model
    assert isinstance(fast.net, FusedModule) and fast.scale == 3 and fast.name == "e_rfdn"
    cfg = inference_config(fast)
    assert cfg.fused and cfg.channels_last and cfg.dtype == torch.float32 and not cfg.compiled
    assert list(model.net.state_dict()) == keys and not model.training  # argument: unfused
    out = run_inference(fast, x)
    assert out.is_inference() and out.shape == (1, 3, 39, 33)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_prepare_for_inference_switches() -> None:
    fused = prepare_for_inference(slimsr.create_model("fmen_s", 2), "cpu", fuse=True)
    assert inference_config(fused).fused
    plain = prepare_for_inference(slimsr.create_model("fmen_s", 2), "cpu", channels_last=False)
    assert not inference_config(plain).fused and not inference_config(plain).channels_last
    raw = prepare_for_inference(build_network("bsrn", 2), "cpu")  # a raw network: raw result
    assert isinstance(raw, FusedModule) and inference_config(raw).fused
    train = prepare_for_inference(slimsr.create_model("fmen_s_train", 2), "cpu")  # none yet
    assert not inference_config(train).fused
    with pytest.raises(SlimsrError, match="no fused inference form"):
        prepare_for_inference(slimsr.create_model("fmen_s_train", 2), "cpu", fuse=True)
    assert default_fuse(build_network("bsrn", 2), "cpu")
    assert not default_fuse(build_network("bsrn", 2), "cuda")  # not measured on GPUs
    assert not default_fuse(build_network("fmen_s_train", 2), "cpu")  # re-parameterise first


def test_prepare_for_inference_dtype() -> None:
    default = prepare_for_inference(slimsr.create_model("bsrn", 2), "cpu")  # keeps float32
    assert inference_config(default).dtype == torch.float32
    with pytest.raises(SlimsrError, match="float32, float16 or bfloat16"):
        prepare_for_inference(slimsr.create_model("bsrn", 2).double(), "cpu")
    fast = prepare_for_inference(slimsr.create_model("bsrn", 2), "cpu", torch.bfloat16)
    assert inference_config(fast).dtype == torch.bfloat16
    x = torch.rand(1, 3, 16, 16)
    out = run_inference(fast, x)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 3, 32, 32)  # the portable path


def test_fused_building_blocks_refuse_what_they_cannot_do() -> None:
    with pytest.raises(ValueError, match="no fused form"):
        Act.of(nn.GELU(approximate="tanh"))  # the fused kernels compute the exact (erf) GELU
    x = torch.rand(1, 4, 8, 8)
    w = torch.rand(4, 4, 3, 3)
    with pytest.raises(ValueError, match="its own input"):
        fused_conv_add(x, w, None, x, padding=1, into_other=True)


@pytest.mark.parametrize("size", [(1, 1), (1, 6), (2, 2), (7, 9)])
def test_pointwise_bias_moved_into_the_depthwise_step(size: tuple[int, int]) -> None:
    """BSRN-S's residual BSConvU: the pointwise bias folded into the depthwise bias with the
    border taps corrected gives act(dw(pw(x)) + x) exactly, down to 1-pixel images (where
    every tap but the centre row/column lies on the padding)."""
    torch.manual_seed(0)
    layer = BSConvU(6, 6, linear_pw=True).eval()
    with torch.no_grad():
        layer.pw.bias.normal_(0, 3.0)  # large, so a missed border term could not hide
    fused = FusedConv(layer, residual=True)
    assert fused.bias_folded
    x = torch.randn(2, 6, *size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = nn.functional.gelu(layer(x) + x)
        pw_out = Workspace().get("p", x, 6)
        out = torch.empty_like(x)
        got = fused.separable_residual(x, Act("gelu"), out=out, pw_out=pw_out)
        assert got.data_ptr() == out.data_ptr()  # written where it was told
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        twin = x.clone()  # in place over its own input
        torch.testing.assert_close(
            fused.separable_residual(twin, Act("gelu"), twin, pw_out), expected, rtol=0, atol=1e-5
        )


def test_unfoldable_pointwise_bias_stays_in_the_gemm() -> None:
    layer = BSConvU(4, 4, kernel_size=5, padding=2, linear_pw=True).eval()
    fused = FusedConv(layer, residual=True)
    assert not fused.bias_folded
    x = torch.randn(1, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        got = fused.separable_residual(x, Act(), torch.empty_like(x), torch.empty_like(x))
        torch.testing.assert_close(got, layer(x) + x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_channels_last_pixel_shuffle(scale: int, layout: torch.memory_format) -> None:
    x = torch.randn(2, 3 * scale * scale, 5, 7).contiguous(memory_format=layout)
    out = ChannelsLastPixelShuffle(scale)(x)
    assert torch.equal(out, nn.functional.pixel_shuffle(x, scale))
    assert out.is_contiguous()


def test_workspace_reuses_a_buffer_only_for_the_same_shape() -> None:
    ws = Workspace()
    x = torch.rand(1, 3, 8, 8)
    a = ws.get("t", x, 5)
    assert a.shape == (1, 5, 8, 8) and a.is_contiguous(memory_format=torch.channels_last)
    assert ws.get("t", x, 5) is a
    assert ws.get("t", torch.rand(1, 3, 9, 8), 5) is not a
    assert ws.get("u", x, 5) is not ws.get("t", x, 5)


def test_prepacked_weights_follow_the_tensor() -> None:
    """oneDNN-layout copies of conv weights are cached per tensor: an in-place change of the
    weight is seen, and the cache entry goes with the tensor."""
    from slimsr.fused import kernels
    from slimsr.fused.kernels import fused_conv

    x = torch.rand(1, 4, 9, 7).contiguous(memory_format=torch.channels_last)
    w = torch.rand(6, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(
            fused_conv(x, w, None, padding=1), nn.functional.conv2d(x, w, None, 1, 1)
        )
    with torch.no_grad():
        w.mul_(-2)
    with torch.inference_mode():
        torch.testing.assert_close(
            fused_conv(x, w, None, padding=1), nn.functional.conv2d(x, w, None, 1, 1)
        )
    if kernels._onednn(x):
        assert id(w) in kernels._PACKED
        key = id(w)
        del w
        assert key not in kernels._PACKED
