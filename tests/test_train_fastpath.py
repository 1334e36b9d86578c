"""The training fast paths compute what the plain paths compute (forward and gradients to
1e-5), are resolved deterministically, recorded, and kept by a resumed run."""

from __future__ import annotations

import copy
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from slimsr.archs.blocks import FoldableConv, set_online_fold
from slimsr.errors import SlimsrError
from slimsr.factory import create_model
from slimsr.registry import get_model_info
from slimsr.train import Trainer, load_config, resume_config, train
from slimsr.train.fastpath import (
    COMPILE_MIN_ITERATIONS,
    StepPlan,
    apply_plan,
    as_input,
    default_compile,
    default_memory_format,
    optimizer_kwargs,
    resolve_plan,
    step_forward,
)
from slimsr.train.trainer import LEGACY_PLAN
from slimsr.train.training_state import latest_checkpoint
from tests.train_utils import final_state, tiny_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
AUTO = {"memory_format": "auto", "attention": "auto", "optimizer_impl": "auto", "compile": "auto"}
"""A fast_path section left to the measured defaults."""


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to the reference's largest magnitude (gradients vary in scale)."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def gradient_error(g1: dict, g0: dict) -> float:
    """Largest gradient difference relative to the largest gradient of the network: biases
    that feed a BatchNorm have a zero gradient in exact arithmetic (float noise ~1e-7), so a
    per-tensor ratio would compare noise with noise."""
    assert g0.keys() == g1.keys()
    top = max(float(g.abs().max()) for g in g0.values())
    return max(float((g1[k] - g0[k]).abs().max()) for k in g0) / top


def forward_and_grads(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Train-mode forward and backward; seeded, so stochastic depth drops the same paths."""
    net.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    y = net(x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}
    return y.detach().contiguous(), grads


SMALL = {
    "edsrmini": {"num_feat": 8, "num_block": 2},
    "fmen_s_train": {},
    "bsrn_s": {},
    "abpn": {},
    "e_rfdn": {},
    "swinirmini": {},
    "bsrn": {"num_feat": 16, "num_block": 2},
    "rlfn": {"num_feat": 16, "num_block": 2},
    "safmn": {"dim": 16, "n_blocks": 2},
    "smfanet": {"dim": 16, "n_blocks": 2},
    "span_train": {},
    "span": {},
    "span_ntire": {},
    "span_ntire_train": {},
    "rlfn_s": {"num_feat": 16, "num_block": 2},
    "rlfn_ntire": {},
    "safmn_ntire": {},
}
SCALE = {"abpn": 3, "safmn_ntire": 4}
"""Models without an x2 form."""


@pytest.mark.parametrize("name", sorted(SMALL))
def test_channels_last_step_equals_contiguous(name: str) -> None:
    torch.manual_seed(0)
    scale = SCALE.get(name, 2)
    plain = create_model(name, scale, **SMALL[name]).net.train()
    fast = copy.deepcopy(plain)
    apply_plan(fast, StepPlan("channels_last", None, None))
    if name != "swinirmini":  # SwinIR's weights are mostly linear (2-D): nothing to reorder
        conv = next(p for p in fast.parameters() if p.dim() == 4 and p.shape[-1] > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 16, 16)
    y0, g0 = forward_and_grads(plain, x)
    y1, g1 = forward_and_grads(fast, as_input(x, StepPlan("channels_last", None, None)))
    assert relative_error(y1, y0) < 1e-5
    worst = gradient_error(g1, g0)
    assert worst < 1e-5, worst


FOLDABLE = ("fmen_s_train", "span_train", "span_ntire_train")


@pytest.mark.parametrize("name", FOLDABLE)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_online_fold_step_equals_the_branches(name: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    plain = create_model(name, 2, **SMALL[name]).net.to(dtype).train()
    with torch.no_grad():  # non-zero biases and BN affines: every term of the fold counts
        for p in plain.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    fast = copy.deepcopy(plain)
    assert set_online_fold(fast, True) > 0
    x = torch.rand(2, 3, 12, 20, dtype=dtype)  # not square: the fold's taps are not transposed
    y0, g0 = forward_and_grads(plain, x)
    y1, g1 = forward_and_grads(fast, x)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert relative_error(y1, y0) < tol
    assert set(g1) == set(g0)  # every branch weight still gets its gradient
    worst = gradient_error(g1, g0)
    assert worst < tol, worst
    # a fold by hand of one block: the branches' conv, not something merely close to it
    block = next(m for m in fast.modules() if isinstance(m, FoldableConv))
    z = torch.rand(1, block.folded()[0].shape[1], 7, 9, dtype=dtype)
    block.online_fold = False
    with torch.no_grad():
        expected = block.train()(z)
        by_hand = torch.nn.functional.conv2d(z, *block.folded(), padding=1)
    assert relative_error(by_hand, expected) < tol
    assert fast.state_dict().keys() == plain.state_dict().keys()


def test_online_fold_under_bf16_autocast_folds_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under autocast only the conv runs in bf16: the kernel it gets is the float32 fold,
    value for value (a fold inside autocast would round its products to bf16)."""
    import slimsr.archs.blocks as blocks

    torch.manual_seed(0)
    net = create_model("fmen_s_train", 2).net.train()
    set_online_fold(net, True)
    conv2d = torch.nn.functional.conv2d
    given: list[torch.Tensor] = []

    def recording(x: torch.Tensor, weight: torch.Tensor, *args: object, **kw: object) -> object:
        if not isinstance(weight, torch.nn.Parameter):  # a folded kernel, not a module's
            given.append(weight.detach().clone())
        return conv2d(x, weight, *args, **kw)

    monkeypatch.setattr(blocks.F, "conv2d", recording)
    x = torch.rand(1, 3, 12, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    monkeypatch.undo()
    assert y.dtype == torch.bfloat16
    folds = [m.folded()[0].detach() for m in net.modules() if isinstance(m, FoldableConv)]
    assert len(given) == len(folds)
    for weight in given:
        assert weight.dtype == torch.float32
        assert any(torch.equal(weight, f) for f in folds)
    with torch.no_grad():
        ref = create_model("fmen_s_train", 2).net.train()
        ref.load_state_dict(net.state_dict())
        assert relative_error(y.float(), ref(x)) < 0.05  # bf16 rounding, not another function


def test_online_fold_is_for_training_only() -> None:
    """In eval mode a block runs its branches (the profile counts and memory probes see the
    network as it is); the fold is the training step's fast path."""
    net = create_model("fmen_s_train", 2).net
    set_online_fold(net, True)
    block = next(m for m in net.modules() if isinstance(m, FoldableConv))
    calls: list[str] = []
    block.run_folded = lambda x: calls.append("fold") or torch.zeros(0)  # type: ignore[method-assign]
    net.eval()(torch.rand(1, 3, 8, 8))
    assert calls == []


def test_online_fold_choice() -> None:
    fold = create_model("fmen_s_train", 2).net
    info = get_model_info("fmen_s_train")
    auto = dict(AUTO)
    assert resolve_plan(auto, info, fold, CPU, own_step=False).online_fold is True
    plain = create_model("edsrmini", 2).net
    assert not resolve_plan(auto, get_model_info("edsrmini"), plain, CPU, False).online_fold
    assert not resolve_plan({**auto, "online_fold": True}, info, plain, CPU, False).online_fold
    # a run saved before the option existed kept its branches; one saved with it keeps it
    before = StepPlan("channels_last", None, "foreach").as_dict()
    del before["online_fold"]
    assert resolve_plan(auto, info, fold, CPU, False, saved=before).online_fold is False
    assert resolve_plan(auto, info, fold, CPU, False, saved=LEGACY_PLAN).online_fold is False
    on = StepPlan("channels_last", None, "foreach", online_fold=True).as_dict()
    assert resolve_plan(auto, info, fold, CPU, False, saved=on).online_fold is True
    # an explicit request wins over both
    asked = {**auto, "online_fold": True}
    assert resolve_plan(asked, info, fold, CPU, False, saved=before).online_fold is True
    off = {**auto, "online_fold": False}
    assert resolve_plan(off, info, fold, CPU, False, saved=on).online_fold is False
    apply_plan(fold, StepPlan("contiguous", None, None, online_fold=True))
    assert all(m.online_fold for m in fold.modules() if isinstance(m, FoldableConv))


@pytest.mark.parametrize("size", [(16, 16), (24, 40)])  # 16: not img_size (mask built), 24x40
def test_swinir_sdpa_attention_equals_math(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    plain = create_model("swinirmini", 2).net.train()
    with torch.no_grad():  # non-zero biases, so the bias and mask paths are exercised
        for m in plain.modules():
            if hasattr(m, "relative_position_bias_table"):
                m.relative_position_bias_table.normal_(0, 0.5)
    fast = copy.deepcopy(plain)
    fast.set_attention("sdpa")
    assert all(m.use_sdpa for m in fast.modules() if hasattr(m, "use_sdpa"))
    x = torch.rand(2, 3, *size)
    y0, g0 = forward_and_grads(plain, x)
    y1, g1 = forward_and_grads(fast, x)
    assert relative_error(y1, y0) < 1e-5
    tables = [k for k in g0 if k.endswith("relative_position_bias_table")]
    assert tables and all(g0[k].abs().max() > 0 for k in tables)
    worst = gradient_error(g1, g0)
    assert worst < 1e-5, worst


def test_swinir_builds_the_shifted_window_mask_once_per_size() -> None:
    net = create_model("swinirmini", 2).net
    x = torch.zeros(1, 24, 16, 24)
    first = net.attention_mask(16, 24, x)
    assert first is not None
    assert net.attention_mask(16, 24, x) is first  # cached, not rebuilt per step
    assert net.attention_mask(*net.img_size, x) is None  # the stored buffers serve img_size
    with pytest.raises(ValueError, match="attention"):
        net.set_attention("flash")


@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_optimizer_implementations_agree_with_the_loop(impl: str) -> None:
    torch.manual_seed(0)
    net = create_model("edsrmini", 2, num_feat=8, num_block=1).net
    nets = {k: copy.deepcopy(net) for k in ("for_loop", impl)}
    x = torch.rand(2, 3, 12, 12)
    for name, n in nets.items():
        plan = StepPlan("contiguous", None, name)  # type: ignore[arg-type]
        opt = torch.optim.Adam(n.parameters(), 1e-2, **optimizer_kwargs(plan))
        for _ in range(3):
            opt.zero_grad()
            n(x).square().mean().backward()
            opt.step()
    for (k, a), b in zip(nets["for_loop"].state_dict().items(), nets[impl].state_dict().values()):
        assert relative_error(b, a) < 1e-5, k


def test_plan_defaults_overrides_and_saved_choice() -> None:
    info = get_model_info("edsrmini")
    net = create_model("edsrmini", 2).net
    swin = create_model("swinirmini", 2).net
    auto = dict(AUTO)
    plan = resolve_plan(auto, info, net, CPU, own_step=False)
    assert plan == StepPlan(default_memory_format(info, CPU), None, "foreach")
    assert plan.memory_format == "channels_last"
    assert default_memory_format(get_model_info("fmen_train"), CPU) == "contiguous"
    # BSRN trains channels-last (measured 0.73x the step time), BSRN-S stays contiguous (a tie)
    assert default_memory_format(get_model_info("bsrn"), CPU) == "channels_last"
    assert default_memory_format(get_model_info("bsrn_s"), CPU) == "contiguous"
    for name in ("rlfn", "safmn", "smfanet", "span_train"):  # 0.65-0.89x the step time
        assert default_memory_format(get_model_info(name), CPU) == "channels_last"
    assert default_memory_format(info, torch.device("cuda")) == "contiguous"
    # OBProx-SG has its own step; SwinIR has attention to choose
    assert resolve_plan(auto, info, net, CPU, own_step=True).optimizer_impl is None
    swin_plan = resolve_plan(auto, get_model_info("swinirmini"), swin, CPU, own_step=False)
    assert swin_plan.attention == "math"
    # a resumed run keeps its own choice over "auto"; an explicit request wins over both
    legacy = resolve_plan(auto, info, net, CPU, own_step=False, saved=LEGACY_PLAN)
    assert legacy == StepPlan("contiguous", None, "for_loop")
    forced = {**auto, "memory_format": "contiguous", "optimizer_impl": "fused"}
    assert resolve_plan(forced, info, net, CPU, False, saved=plan.as_dict()) == StepPlan(
        "contiguous", None, "fused"
    )


def test_the_plan_is_logged_checkpointed_and_kept_on_resume(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, "planned", train__iterations=4, logging__checkpoint_every=2)

    def stop(event: str, trainer: Trainer) -> None:
        if event == "step" and trainer.iteration == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer saves and stops

    first = Trainer(load_config(recipe), callbacks=[stop]).run()
    assert first.interrupted and first.iteration == 2
    start = json.loads((first.run_dir / "train.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start"
    assert start["fast_path"] == {
        "memory_format": "channels_last",
        "attention": None,
        "optimizer_impl": "foreach",
        "compile": False,
        "online_fold": False,  # EDSRmini has no re-parameterisable block
    }
    assert final_state(first.run_dir)["fast_path"] == start["fast_path"]

    # a run checkpointed before fast paths existed resumes the way it was made
    state_path = latest_checkpoint(first.run_dir / "checkpoints")
    state = torch.load(state_path, weights_only=False)
    del state["fast_path"]
    torch.save(state, state_path)
    resumed = train(resume_config(first.run_dir), resume=True)
    assert resumed.iteration == 4 and not resumed.interrupted
    events = [json.loads(x) for x in (resumed.run_dir / "train.jsonl").read_text().splitlines()]
    assert [e for e in events if e["event"] == "resume"][-1]["fast_path"] == {
        "memory_format": "contiguous",
        "attention": None,
        "optimizer_impl": "for_loop",
        "compile": False,
        "online_fold": False,
    }
    assert final_state(resumed.run_dir)["fast_path"]["memory_format"] == "contiguous"


def needs_compiler() -> None:
    import shutil

    if not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("torch.compile's CPU backend needs a C++ compiler, and none is installed")


def test_compiled_step_forward_equals_eager() -> None:
    needs_compiler()
    torch.manual_seed(0)
    net = create_model("edsrmini", 2, num_feat=8, num_block=2).net.train()
    eager = copy.deepcopy(net)
    plan = StepPlan("channels_last", None, "foreach", compile=True)
    apply_plan(net, plan)
    apply_plan(eager, plan)
    compiled = step_forward(net, plan)
    assert compiled is not net and step_forward(eager, StepPlan("contiguous", None, None)) is eager
    x = as_input(torch.rand(2, 3, 16, 16), plan)
    y0, g0 = forward_and_grads(eager, x)
    y1, g1 = forward_and_grads(compiled, x)  # type: ignore[arg-type]
    assert relative_error(y1, y0) < 1e-5
    g1 = {k.removeprefix("_orig_mod."): g for k, g in g1.items()}  # the wrapper's prefix
    assert set(g1) == set(g0)  # the compiled form trains the same parameters
    worst = gradient_error(g1, g0)
    assert worst < 1e-5, worst
    # it shares the network's parameters: a checkpoint of the network is a checkpoint of it
    assert all(a is b for a, b in zip(compiled.parameters(), net.parameters()))  # type: ignore[union-attr]


def test_compile_choice_and_its_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = get_model_info("edsrmini")
    net = create_model("edsrmini", 2).net
    auto = dict(AUTO)
    assert resolve_plan(auto, info, net, CPU, own_step=False).compile is False
    saved = StepPlan("contiguous", None, "foreach", compile=True).as_dict()
    assert resolve_plan(auto, info, net, CPU, False, saved=saved).compile is True
    assert resolve_plan(auto, info, net, CPU, False, saved=LEGACY_PLAN).compile is False
    needs_compiler()
    # "auto" compiles the models measured faster compiled, on CPU, in long runs only
    long = COMPILE_MIN_ITERATIONS
    for name, expected in [("bsrn_s", True), ("edsrmini", True), ("e_rfdn", False)]:
        m = get_model_info(name)
        assert default_compile(m, CPU, long) is expected, name
        assert default_compile(m, CPU, long - 1) is False
        assert default_compile(m, torch.device("cuda"), long) is False
    assert resolve_plan(auto, info, net, CPU, False, iterations=long).compile is True
    off = {**auto, "compile": False}
    assert resolve_plan(off, info, net, CPU, False, iterations=long).compile is False
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    assert default_compile(info, CPU, long) is False
    with pytest.raises(SlimsrError, match="C\\+\\+ compiler"):
        resolve_plan({**auto, "compile": True}, info, net, CPU, False)
    monkeypatch.delenv("CXX")
    recipe = tiny_recipe(tmp_path, "compiled", train__iterations=2)
    # YAML's on/off are booleans, so `--set train.fast_path.compile=on` reads as asked
    assert load_config(recipe, ["train.fast_path.compile=off"]).train.fast_path.compile is False
    config = load_config(recipe, ["train.fast_path.compile=on"])
    assert config.train.fast_path.compile is True
    result = train(config)
    assert result.iteration == 2 and not result.interrupted
    start = json.loads((result.run_dir / "train.jsonl").read_text().splitlines()[0])
    assert start["fast_path"]["compile"] is True
    assert final_state(result.run_dir)["fast_path"]["compile"] is True
