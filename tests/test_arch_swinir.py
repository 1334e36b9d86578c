"""SwinIR family: exact sizes, official key layout, detection round trips, any-size forward."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from slimsr.archs.swinir import (
    SwinIR,
    detect_swinir,
    relative_position_index,
    shifted_window_mask,
)
from slimsr.registry import REGISTRY, count_parameters, get_model_info

# (total P, P without relative_position_bias_table) from ARCHITECTURES.md §0.
PARAMS = {
    ("swinir_m", 2): (11_752_487, 11_703_887),
    ("swinir_m", 3): (11_937_127, 11_888_527),
    ("swinir_m", 4): (11_900_199, 11_851_599),
    ("swinir_s", 2): (910_152, 877_752),
    ("swinir_s", 3): (918_267, 885_867),
    ("swinir_s", 4): (929_628, 897_228),
    ("swinirmini", 2): (98_868, 82_668),
    ("swinirmini", 3): (102_123, 102_123 - 16_200),
    ("swinirmini", 4): (106_680, 106_680 - 16_200),
}

# A few-thousand-parameter SwinIR for the behavioural tests (two RSTBs, so masks are shared).
TINY = {"embed_dim": 12, "depths": [2, 2], "num_heads": [3, 3]}


def _build(name: str, scale: int, **kwargs) -> SwinIR:
    return get_model_info(name).build(scale, **kwargs).eval()


def _table_params(net: torch.nn.Module) -> int:
    return sum(
        p.numel() for k, p in net.named_parameters() if k.endswith("relative_position_bias_table")
    )


@pytest.mark.parametrize(("name", "scale"), sorted(PARAMS))
def test_parameter_counts(name: str, scale: int) -> None:
    with torch.device("meta"):  # shapes only: counting needs no values
        net = get_model_info(name).build(scale)
    total, without_tables = PARAMS[name, scale]
    assert count_parameters(net) == total
    assert count_parameters(net) - _table_params(net) == without_tables


def test_registry_facts_and_aliases() -> None:
    expected = {
        "swinir_m": ((2, 3, 4, 8), 4),
        "swinir_s": ((2, 3, 4), 4),
        "swinirmini": ((2, 3, 4), 2),
    }
    for name, (scales, default_scale) in expected.items():
        info = get_model_info(name)
        assert (info.family, info.scales, info.default_scale) == ("swinir", scales, default_scale)
        assert (info.input_range, info.size_multiple) == (1.0, 8)
        assert info.params_note and info.description
    aliases = {
        "SwinIR": "swinir_m",
        "swinir-classical": "swinir_m",
        "swinir_lightweight": "swinir_s",
        "SwinIR-light": "swinir_s",
        "swinir_mini": "swinirmini",
    }
    for alias, name in aliases.items():
        assert get_model_info(alias).name == name


def test_classical_state_dict_layout() -> None:
    net = _build("swinir_m", 2)  # img_size 48, the DIV2K s48w8 release
    sd = net.state_dict()
    assert len(sd) == 548
    block = "layers.0.residual_group.blocks."
    expected = {
        "conv_first.weight": (180, 3, 3, 3),
        "patch_embed.norm.weight": (180,),
        f"{block}0.attn.relative_position_bias_table": (225, 6),
        f"{block}0.attn.relative_position_index": (64, 64),
        f"{block}0.attn.qkv.weight": (540, 180),
        f"{block}0.mlp.fc1.weight": (360, 180),
        f"{block}0.mlp.fc2.weight": (180, 360),
        f"{block}1.attn_mask": (36, 64, 64),
        "layers.0.conv.weight": (180, 180, 3, 3),
        "layers.5.residual_group.blocks.5.attn_mask": (36, 64, 64),
        "norm.weight": (180,),
        "conv_after_body.weight": (180, 180, 3, 3),
        "conv_before_upsample.0.weight": (64, 180, 3, 3),
        "upsample.0.weight": (256, 64, 3, 3),
        "conv_last.weight": (3, 64, 3, 3),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    masks = {k for k in sd if k.endswith("attn_mask")}
    assert masks == {
        f"layers.{i}.residual_group.blocks.{j}.attn_mask" for i in range(6) for j in (1, 3, 5)
    }
    assert sum(k.endswith("relative_position_index") for k in sd) == 36
    assert not any("mean" in k for k in sd)  # the mean is a plain tensor, as in the official code
    assert sd["layers.0.residual_group.blocks.0.attn.relative_position_index"].dtype == torch.int64

    with torch.device("meta"):
        big = get_model_info("swinir_m").build(2, img_size=64).state_dict()
        x4 = get_model_info("swinir_m").build(4).state_dict()
        x3 = get_model_info("swinir_m").build(3).state_dict()
    assert tuple(big[f"{block}1.attn_mask"].shape) == (64, 64, 64)
    assert set(big) == set(sd)
    assert set(x4) - set(sd) == {"upsample.2.weight", "upsample.2.bias"}
    assert tuple(x3["upsample.0.weight"].shape) == (576, 64, 3, 3)


def test_lightweight_tails() -> None:
    with torch.device("meta"):
        light = get_model_info("swinir_s").build(3).state_dict()
        mini = get_model_info("swinirmini").build(2).state_dict()
    assert tuple(light["upsample.0.weight"].shape) == (27, 60, 3, 3)
    assert tuple(light["layers.3.residual_group.blocks.5.attn_mask"].shape) == (64, 64, 64)
    assert not any(k.startswith(("conv_before_upsample", "conv_last")) for k in light)
    assert tuple(mini["upsample.0.weight"].shape) == (12, 24, 3, 3)
    assert tuple(
        mini["layers.2.residual_group.blocks.3.attn.relative_position_bias_table"].shape
    ) == (225, 6)
    assert "layers.3.conv.weight" not in mini and "layers.2.conv.weight" in mini


def test_relative_position_index_formula() -> None:
    for w in (4, 8):
        index = relative_position_index(w)
        tokens = [(r, c) for r in range(w) for c in range(w)]
        brute = torch.tensor(
            [
                [(a - c + w - 1) * (2 * w - 1) + (b - d + w - 1) for c, d in tokens]
                for a, b in tokens
            ]
        )
        assert torch.equal(index, brute)


def _mask_by_regions(h: int, w: int, win: int, shift: int) -> torch.Tensor:
    """Independent oracle: label the 3x3 regions with slices, then compare labels per window."""
    labels = torch.zeros(h, w, dtype=torch.long)
    bands = (slice(0, -win), slice(-win, -shift), slice(-shift, None))
    for i, rows in enumerate(bands):
        for j, cols in enumerate(bands):
            labels[rows, cols] = 3 * i + j
    windows = [
        labels[r : r + win, c : c + win].flatten()
        for r in range(0, h, win)
        for c in range(0, w, win)
    ]
    out = torch.zeros(len(windows), win * win, win * win)
    for n, lab in enumerate(windows):
        out[n][lab[:, None] != lab[None, :]] = -100.0
    return out


@pytest.mark.parametrize("size", [(8, 8), (16, 24), (48, 48), (24, 8)])
def test_shifted_window_mask_matches_region_definition(size: tuple[int, int]) -> None:
    assert torch.equal(shifted_window_mask(*size, 8, 4), _mask_by_regions(*size, 8, 4))


def _round_trip(
    name: str, scale: int, kwargs: dict, expect: tuple[str, dict], size=(12, 12)
) -> None:
    net = _build(name, scale, **kwargs)
    found = detect_swinir(net.state_dict())
    assert found is not None
    assert (found.name, found.scale, found.kwargs) == (*expect[:1], scale, expect[1])
    again = get_model_info(found.name).build(found.scale, **found.kwargs).eval()
    again.load_state_dict(found.state_dict, strict=True)
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        out = net(x)
        assert out.shape == (1, 3, size[0] * scale, size[1] * scale)
        assert torch.equal(again(x), out)


def test_round_trip_swinir_m() -> None:
    # The one SwinIR-M forward of the file: 12x12 pads to 16x16, which is cheap even at 11.8M.
    _round_trip("swinir_m", 2, {}, ("swinir_m", {}))


@pytest.mark.parametrize(
    ("name", "scale", "kwargs", "expect"),
    [
        ("swinir_s", 3, {}, ("swinir_s", {})),
        ("swinirmini", 4, {}, ("swinirmini", {})),
        ("swinirmini", 2, {"img_size": 48}, ("swinirmini", {"img_size": 48})),
        (  # a compact one-step model: named after the nearest width (36 is closer to 24 than 60)
            "swinir_s",
            4,
            {"embed_dim": 36, "depths": [2, 2], "num_heads": [6, 6], "img_size": 32},
            (
                "swinirmini",
                {"embed_dim": 36, "depths": [2, 2], "num_heads": [6, 6], "img_size": 32},
            ),
        ),
        (  # a compact pixelshuffle model stays a SwinIR-M variant
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
        (  # real-world SR tail and the 3conv bottleneck
            "swinir_m",
            4,
            {**TINY, "upsampler": "nearest+conv", "resi_connection": "3conv", "img_size": 32},
            (
                "swinir_m",
                {**TINY, "upsampler": "nearest+conv", "resi_connection": "3conv", "img_size": 32},
            ),
        ),
    ],
)
def test_round_trip(name: str, scale: int, kwargs: dict, expect: tuple[str, dict]) -> None:
    _round_trip(name, scale, kwargs, expect)


def test_detection_fills_missing_buffers() -> None:
    net = _build("swinirmini", 2, img_size=32)
    full = net.state_dict()
    params_only = {k: v for k, v in full.items() if not k.endswith(("attn_mask", "_index"))}
    assert len(full) - len(params_only) == 12 + 6  # one index per block, masks in odd blocks
    found = detect_swinir(params_only)
    assert found is not None and found.kwargs == {}  # img_size unknown: the variant default (64)
    again = _build(found.name, found.scale, **found.kwargs)
    again.load_state_dict(found.state_dict, strict=True)
    index_key = "layers.1.residual_group.blocks.2.attn.relative_position_index"
    assert torch.equal(again.state_dict()[index_key], full[index_key])
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():  # stored 32x32 masks (net) vs masks rebuilt at run time (again)
        torch.testing.assert_close(again(x), net(x), rtol=0, atol=1e-6)


def test_detection_rejects_other_state_dicts() -> None:
    assert detect_swinir({}) is None
    edsr_like = {
        "conv_first.weight": torch.zeros(16, 3, 3, 3),
        "body.0.conv1.weight": torch.zeros(1),
    }
    assert detect_swinir(edsr_like) is None
    # A denoising SwinIR (upscale 1): conv_last straight from the features, no upsampler.
    sd = {
        k: v for k, v in _build("swinirmini", 2, **TINY).state_dict().items() if "upsample" not in k
    }
    sd["conv_last.weight"] = torch.zeros(3, 12, 3, 3)
    assert detect_swinir(sd) is None


def test_registry_detection_picks_swinir() -> None:
    found = REGISTRY.detect(_build("swinirmini", 3).state_dict())
    assert found is not None and (found.name, found.scale) == ("swinirmini", 3)


def test_any_input_size_pads_and_crops() -> None:
    net = _build("swinirmini", 3, **TINY)
    odd = torch.rand(1, 3, 13, 21)
    aligned = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        out = net(odd)
        assert out.shape == (1, 3, 39, 63)
        padded = F.pad(odd, (0, 3, 0, 3), mode="reflect")
        assert torch.equal(out, net.forward_aligned(padded)[..., :39, :63])
        # Already a multiple of the window: the padding logic leaves the result untouched.
        assert torch.equal(net(aligned), net.forward_aligned(aligned))


def test_stored_and_recomputed_masks_agree() -> None:
    stored = _build("swinirmini", 2, **TINY, img_size=64)
    rebuilt = _build("swinirmini", 2, **TINY, img_size=32)
    weights = {k: v for k, v in stored.state_dict().items() if not k.endswith("attn_mask")}
    missing, unexpected = rebuilt.load_state_dict(weights, strict=False)
    assert all(k.endswith("attn_mask") for k in missing) and len(missing) == 2 and not unexpected
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        reference = stored(x)  # 64x64 == img_size: the stored buffers
        torch.testing.assert_close(rebuilt(x), reference, rtol=0, atol=1e-6)
        # Prove which mask each model used: spoiling the buffers changes only the first.
        for net in (stored, rebuilt):
            for name, buf in net.named_buffers():
                if name.endswith("attn_mask"):
                    buf.zero_()
        assert not torch.allclose(stored(x), reference, atol=1e-4)
        torch.testing.assert_close(rebuilt(x), reference, rtol=0, atol=1e-6)


def test_size_changes_between_calls() -> None:
    net = _build("swinirmini", 2, **TINY, img_size=16)
    rect = _build("swinirmini", 2, **TINY, img_size=(24, 40))  # stored masks for 24x40
    rect.load_state_dict(
        {k: v for k, v in net.state_dict().items() if "attn_mask" not in k}, strict=False
    )
    a, b = torch.rand(1, 3, 16, 16), torch.rand(2, 3, 24, 40)
    with torch.no_grad():
        first = net(a)
        torch.testing.assert_close(net(b), rect(b), rtol=0, atol=1e-6)
        assert torch.equal(net(a), first)


def test_trace_keeps_height_and_width_dynamic() -> None:
    net = _build("swinirmini", 2, **TINY, img_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated, still what ONNX uses
        traced = torch.jit.trace(net, torch.rand(1, 3, 13, 21), check_trace=False)
    with torch.no_grad():
        for shape in [(1, 3, 16, 16), (2, 3, 24, 40), (1, 3, 9, 30)]:
            x = torch.rand(shape)
            torch.testing.assert_close(traced(x), net(x), rtol=0, atol=1e-6)


def test_train_step_and_bf16() -> None:
    net = _build("swinirmini", 2, **TINY).train()
    net(torch.rand(2, 3, 12, 20)).abs().mean().backward()
    table = net.layers[1].residual_group.blocks[1].attn.relative_position_bias_table
    assert (
        table.grad is not None and torch.isfinite(table.grad).all() and table.grad.abs().sum() > 0
    )
    net.eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        ref = net(x)
        low = net.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=0, atol=0.1)


def test_invalid_configs_are_rejected() -> None:
    with pytest.raises(ValueError, match="img_size"):
        SwinIR(2, img_size=20, window_size=8)
    with pytest.raises(ValueError, match="num_heads"):
        SwinIR(2, embed_dim=20, num_heads=(6, 6, 6, 6))
    with pytest.raises(ValueError, match="nearest"):
        SwinIR(3, upsampler="nearest+conv")


def test_masked_pairs_get_exact_zeros_not_subnormals(monkeypatch: pytest.MonkeyPatch) -> None:
    """The official -100 gives masked pairs exp(-100) ~ 4e-44, a float32 subnormal, which x86
    CPUs compute on 10-100x slower (the training backward doubled SwinIRmini's step): they
    must come out of the softmax as exact zeros, and the output must not change."""
    import slimsr.archs.swinir as swinir

    def probabilities(net: SwinIR) -> tuple[torch.Tensor, list[torch.Tensor]]:
        seen: list[torch.Tensor] = []
        hooks = [
            m.attn_drop.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].detach()))
            for m in net.modules()
            if isinstance(m, swinir.WindowAttention)
        ]
        torch.manual_seed(1)
        y = net(torch.rand(2, 3, 24, 40))  # not img_size: the runtime-built mask
        for h in hooks:
            h.remove()
        return y.detach(), seen

    torch.manual_seed(0)
    net = swinir.SwinIR(2, embed_dim=24, depths=(2, 2), num_heads=(6, 6), window_size=8)
    net.set_attention("math")
    tiny = torch.finfo(torch.float32).tiny
    y, probs = probabilities(net.train())
    shifted = [p for p in probs if (p == 0).any()]
    assert shifted, "no shifted block masked a pair"
    for p in probs:
        assert not ((p != 0) & (p.abs() < tiny)).any()
    # the official value, unconverted: subnormals appear, and the output is the same
    monkeypatch.setattr(swinir, "masked_as_minus_inf", lambda mask: mask)
    y_official, probs_official = probabilities(net)
    assert torch.allclose(y, y_official, rtol=0, atol=1e-6)
    if not any(((p != 0) & (p.abs() < tiny)).any() for p in probs_official):
        pytest.skip("this platform's softmax flushes exp(-100) to zero: nothing to compare")
