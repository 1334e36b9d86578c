"""Profiling: the papers' published efficiency figures, hand-counted toy nets, the fast path.

Counting runs on meta tensors, so the 256x256 and 1280x720 figures below cost milliseconds.
Nothing here asserts on timings; runtime and memory are only checked for shape and sanity.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimsr
import slimsr.profile.report
from slimsr.archs.blocks import ChannelLinear
from slimsr.errors import SlimsrError
from slimsr.inference_form import inference_config, prepare_for_inference, run_inference
from slimsr.profile import (
    CONVENTIONS,
    complexity,
    count_complexity,
    lr_size_for_output,
    parse_size,
    profile_model,
    time_cpu,
)
from slimsr.registry import build_network, count_parameters, default_registry

NTIRE_INPUT = (256, 256)
OUTPUT_720P = (720, 1280)


def meta_net(name: str, scale: int) -> nn.Module:
    with torch.device("meta"):
        return build_network(name, scale)


def g(n: int, digits: int) -> float:
    return round(n / 1e9, digits)


# -- the papers' figures -----------------------------------------------------------------------


def test_e_rfdn_matches_fmen_table_4() -> None:
    """FMEN paper Table 4 (NTIRE 2022 protocol): 433K params, 27.10 G, 112.03 M acts, 64 convs."""
    net = meta_net("e_rfdn", 4)
    c = complexity(net, NTIRE_INPUT)
    assert count_parameters(net) == 433_448
    assert g(c.flops["ntire2022"], 2) == 27.10
    assert round(c.activations / 1e6, 2) == 112.03
    assert c.convs == 64
    # the harness's exact integers (checked against utils/model_summary.py on the official RFDN)
    assert c.flops["ntire2022"] == 27_102_622_560
    assert c.activations == 112_034_240


def test_fmen_s_matches_fmen_table_4() -> None:
    """FMEN-S: 341K params, 22.28 G FLOPs, 72.09 M activations, 34 convs."""
    net = meta_net("fmen_s", 4)
    c = complexity(net, NTIRE_INPUT)
    assert count_parameters(net) == 341_066
    assert g(c.flops["ntire2022"], 2) == 22.28
    assert round(c.activations / 1e6, 2) == 72.09
    assert c.convs == 34


@pytest.mark.parametrize(("scale", "mult_adds"), [(2, 73.0), (3, 33.3), (4, 19.4)])
def test_bsrn_mult_adds_match_bsrn_table_5(scale: int, mult_adds: float) -> None:
    """BSRN Table 5, Mult-Adds for a 1280x720 output, in the `paper` (thop) convention."""
    c = complexity(meta_net("bsrn", scale), lr_size_for_output(OUTPUT_720P, scale))
    assert g(c.flops["paper"], 1) == mult_adds
    assert g(c.flops["macs"], 1) != mult_adds  # the convention matters at this precision


def test_bsrn_s_figures() -> None:
    """BSRN-S: 8.3 G (Table 5) / 8.35 G (Table 7) for 720p; challenge Table 6: 0.156 M params,
    9.496 G FLOPs, 65.76 M activations at 256x256 (the FLOPs in thop's convention). The NTIRE
    2022 harness's Linear rule sees only ~2 G of it."""
    net = meta_net("bsrn_s", 4)
    assert count_parameters(net) == 156_288
    at_720p = complexity(net, lr_size_for_output(OUTPUT_720P, 4))
    assert g(at_720p.flops["paper"], 1) == 8.3
    assert g(at_720p.flops["paper"], 2) == 8.35
    at_256 = complexity(net, NTIRE_INPUT)
    assert g(at_256.flops["paper"], 3) == 9.496
    assert round(at_256.activations / 1e6, 2) == 65.76
    assert g(at_256.flops["ntire2022"], 2) == 2.02
    assert at_256.flops["ntire2022"] == 2_022_422_883  # utils/model_summary.py, official module


@pytest.mark.parametrize(("scale", "mult_adds"), [(2, 172.0), (3, 77.2), (4, 44.2)])
def test_fmen_mult_adds_match_fmen_table_3(scale: int, mult_adds: float) -> None:
    """FMEN Table 3 truncates to one decimal, as it does its parameter counts (748,656 ->
    748K): 172.06 G -> 172.0."""
    c = complexity(meta_net("fmen", scale), lr_size_for_output(OUTPUT_720P, scale))
    assert math.floor(c.flops["macs"] / 1e8) / 10 == mult_adds


def test_edsr_baseline_and_edsrmini_match_the_compression_paper() -> None:
    """Table I of the compression paper (x2, 1280x720 output): EDSR baseline 316.3 G,
    EDSRmini 11.7 G. Hand count of EDSRmini's MACs per LR pixel: conv_first 3*16*9, 17 body
    convs 16*16*9, upsample 16*64*9, conv_last at 4 HR pixels 4*16*3*9 = 50,544."""
    base = complexity(meta_net("edsr_baseline", 2), (360, 640))
    assert g(base.flops["macs"], 1) == 316.3
    mini = complexity(meta_net("edsrmini", 2), (360, 640))
    assert mini.flops["macs"] == (432 + 17 * 2304 + 9216 + 1728) * 360 * 640
    assert g(mini.flops["paper"], 1) == 11.7


# -- the conventions on a toy net, by hand -----------------------------------------------------


class Toy(nn.Module):
    """conv 3->4 (3x3, bias) -> LeakyReLU -> Linear 4->2 channels-last -> bilinear x2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.LeakyReLU(0.1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x))
        y = self.fc(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)


def test_toy_net_in_every_convention() -> None:
    h, w = 5, 6
    px = h * w
    conv_macs = 3 * 3 * 3 * 4 * px  # k*k*Cin*Cout per output position
    linear_macs = 4 * 2 * px
    c = count_complexity(Toy(), (h, w))
    assert c.flops == {
        # conv + LeakyReLU numel + the harness's Linear rule: B * in.shape[1] * out.shape[1]
        "ntire2022": conv_macs + 4 * px + 1 * h * h,
        "macs": conv_macs + linear_macs,
        # thop: conv + 1 per biased output, LeakyReLU numel, Linear in_features per output
        "paper": conv_macs + 4 * px + 4 * px + linear_macs,
        # fvcore: MACs + 4 per bilinear output element
        "fvcore": conv_macs + linear_macs + 4 * (2 * 2 * h * 2 * w),
    }
    assert set(c.flops) == set(CONVENTIONS)
    assert (c.activations, c.convs) == (4 * px, 1)
    assert c.output_hw == (2 * h, 2 * w)


def test_channel_linear_is_counted_like_the_official_channels_last_linear() -> None:
    """slimsr's ChannelLinear takes NCHW; the harness must see the official (B,H,W,C) shapes."""
    net = ChannelLinear(4, 2)
    c = count_complexity(net, (5, 6), in_channels=4)
    assert c.flops["ntire2022"] == 1 * 5 * 5
    assert c.flops["macs"] == c.flops["fvcore"] == 4 * 2 * 30
    assert c.flops["paper"] == 4 * 2 * 30


class Reuse(nn.Module):
    """One conv applied twice: NTIRE counts conv *calls*."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.conv(x))


def test_a_reused_conv_counts_twice() -> None:
    c = count_complexity(Reuse(), (4, 4))
    assert c.convs == 2
    assert c.activations == 2 * 3 * 16
    assert c.flops["ntire2022"] == c.flops["macs"] == 2 * 3 * 3 * 3 * 3 * 16
    assert c.flops["paper"] == c.flops["macs"]  # no bias, no extra op


def test_counting_runs_on_a_meta_copy() -> None:
    net = Toy()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    complexity(net, (8, 8))
    assert all(p.device.type == "cpu" for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("name", ["bsrn", "bsrn_s", "swinirmini", "fmen_s_train", "abpn"])
def test_meta_counts_equal_real_tensor_counts(name: str) -> None:
    """The meta device must dispatch the same ops as a real CPU forward."""
    net = slimsr.create_model(name).net
    on_meta = count_complexity(net, (16, 24), on_meta=True)
    assert on_meta == count_complexity(net, (16, 24), on_meta=False)


def test_every_registered_model_counts_on_meta() -> None:
    for info in default_registry():
        c = complexity(meta_net(info.name, info.default_scale), (24, 32))
        s = info.default_scale
        assert c.output_hw == (24 * s, 32 * s), info.name
        assert c.convs > 0 and c.activations > 0, info.name
        assert all(v > 0 for v in c.flops.values()), info.name


def test_sizes() -> None:
    assert parse_size("1280x720") == (720, 1280)
    assert parse_size("256") == (256, 256)
    assert lr_size_for_output((720, 1280), 3) == (240, 426)
    for bad in ("12x", "axb", "0x5", "1x2x3"):
        with pytest.raises(SlimsrError):
            parse_size(bad)


# -- reports, runtime, memory ------------------------------------------------------------------


def test_profile_report_of_a_reparameterisable_model() -> None:
    model = slimsr.create_model("fmen_s_train", 4)
    report = profile_model(model, output_hw=(64, 96), runtime=False, memory=False)
    d = report.to_dict()
    assert d["params"] == 1_045_866
    assert d["params_forms"] == {"train": 1_045_866, "deploy": 341_066}
    assert d["input_hw"] == [16, 24] and d["output_hw"] == [64, 96]
    assert d["size_given_as"] == "output"
    deploy = profile_model(slimsr.create_model("fmen_s", 4), runtime=False, memory=False)
    assert deploy.params_forms == {"train": 1_045_866, "deploy": 341_066}
    assert deploy.complexity.flops["ntire2022"] == 22_280_011_776


def test_profile_refuses_inputs_below_the_minimum() -> None:
    with pytest.raises(SlimsrError, match="at least 15x15"):
        profile_model(slimsr.create_model("e_rfdn", 4), input_hw=(12, 12), runtime=False)
    with pytest.raises(SlimsrError, match="not both"):
        profile_model(slimsr.create_model("abpn", 3), input_hw=(8, 8), output_hw=(24, 24))


def test_runtime_and_memory_are_measured_and_reported() -> None:
    model = slimsr.create_model("abpn", 3)
    before = torch.get_num_threads()
    report = profile_model(model, input_hw=(24, 32), threads=1, warmup=2, repeats=3)
    assert torch.get_num_threads() == before
    rt = report.runtime
    assert rt is not None and rt.threads == 1
    assert len(rt.warmup_ms) == 2 and len(rt.times_ms) == 3
    assert rt.min_ms <= rt.median_ms <= rt.max_ms and rt.first_ms == rt.warmup_ms[0]
    mem = report.memory
    assert mem is not None and mem.device == "cpu"
    assert mem.peak_increase_bytes >= 0 and mem.baseline_bytes > 10 * 2**20  # torch is loaded
    d = json.loads(json.dumps(report.to_dict()))
    assert d["runtime"]["median_ms"] == rt.median_ms
    assert d["settings"]["threads"] == 1


def test_bfloat16_is_timed_and_measured_in_bfloat16(monkeypatch) -> None:
    model = slimsr.create_model("bsrn_s", 4)
    seen: list[torch.dtype] = []
    real_time_cpu = slimsr.profile.time_cpu

    def spy(net, x, **kwargs):
        seen.append(x.dtype)
        with torch.inference_mode():
            seen.append(net(x).dtype)
        return real_time_cpu(net, x, **kwargs)

    monkeypatch.setattr(slimsr.profile.report, "time_cpu", spy)  # where profile_model looks
    report = profile_model(
        model, input_hw=(16, 16), threads=1, warmup=1, repeats=1, dtype=torch.bfloat16
    )
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert report.settings["dtype"] == "bfloat16" and report.memory is not None
    assert next(model.net.parameters()).dtype == torch.float32  # the model itself is untouched
    assert report.complexity == profile_model(model, input_hw=(16, 16), runtime=False).complexity


def test_time_cpu_rejects_bad_counts() -> None:
    with pytest.raises(SlimsrError):
        time_cpu(Reuse(), torch.zeros(1, 3, 4, 4), repeats=0)


# -- the fast inference path -------------------------------------------------------------------


def test_prepare_for_inference_channels_last_keeps_outputs_and_keys() -> None:
    model = slimsr.create_model("e_rfdn", 4)
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        ref = model(x)
    keys = list(model.net.state_dict())
    prepare_for_inference(model, "cpu", torch.float32, channels_last=True, fuse=False)  # in place
    assert list(model.net.state_dict()) == keys
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert model.net.fea_conv.weight.is_contiguous(memory_format=torch.channels_last)
    out = run_inference(model, x)
    assert out.is_inference()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_channels_last_default_comes_from_the_family() -> None:
    registry = default_registry()
    families = registry.families()
    assert {f.name for f in families} == {
        "abpn",
        "bsrn",
        "edsr",
        "fmen",
        "rfdn",
        "rlfn",
        "safmn",
        "smfanet",
        "span",
        "swinir",
    }
    for family in families:
        expected = family.cpu_channels_last
        name = next(
            i.name for i in registry if i.family == family.name and i.cpu_channels_last is expected
        )
        model = prepare_for_inference(
            slimsr.create_model(name), "cpu", torch.float32, None, fuse=False
        )
        assert inference_config(model).channels_last is expected, family.name
    train = prepare_for_inference(slimsr.create_model("fmen_s_train"), "cpu", torch.float32)
    assert inference_config(train).channels_last is False  # measured slower in NHWC
    raw = prepare_for_inference(Toy(), "cpu", torch.float32, None)
    assert inference_config(raw).channels_last is False  # unknown family: contiguous


def test_profile_times_the_fused_form_and_counts_the_official_graph() -> None:
    model = slimsr.create_model("e_rfdn", 2)
    fused = profile_model(model, input_hw=(16, 16), threads=1, warmup=0, repeats=1)
    assert fused.settings["fused"] is True and fused.settings["channels_last"] is True
    assert fused.memory is not None and fused.memory.peak_increase_bytes >= 0  # child fuses too
    plain = profile_model(model, input_hw=(16, 16), threads=1, repeats=1, fuse=False, memory=False)
    assert plain.settings["fused"] is False
    assert fused.complexity == plain.complexity  # counts are of the official network
    assert fused.params == plain.params == sum(p.numel() for p in model.net.parameters())
    assert type(model.net).__name__ == "RFDN"  # the profiled model itself stays plain


def test_prepare_for_inference_refuses_fp16_on_cpu() -> None:
    with pytest.raises(SlimsrError, match="float16"):
        prepare_for_inference(slimsr.create_model("abpn", 3), "cpu", torch.float16)


# -- the command ---------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slimsr", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_profile_writes_json(tmp_path) -> None:
    out = tmp_path / "p.json"
    res = run_cli(
        "profile", "-m", "e_rfdn", "--scale", "4", "--no-runtime", "--no-memory", "--json", str(out)
    )
    assert res.returncode == 0, res.stderr
    assert "27.1026 G" in res.stdout and "112.03 M" in res.stdout
    d = json.loads(out.read_text())
    assert d["flops"]["ntire2022"] == 27_102_622_560 and d["convs"] == 64
    res = run_cli("profile", "-m", "bsrn", "--input", "64x64", "--output", "1280x720")
    assert res.returncode == 2 and res.stderr.startswith("error: ")
    res = run_cli(
        "profile", "-m", "abpn", "-s", "3", "--input", "16x16", "--fp16", "--device", "cpu"
    )
    assert res.returncode == 2 and "float16 needs a CUDA device" in res.stderr
    assert "Traceback" not in res.stderr
