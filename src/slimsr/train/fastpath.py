"""How a training step runs: memory format, attention kernel and optimiser implementation.

Each choice changes only float rounding, never the maths, and each is a measured default per
model (`benchmarks/bench_train.py --models --compare-layouts`, docs/training.md), resolved
once when a run starts: deterministic (no timing at start-up, so two runs of one recipe make
the same choice), the same on every DDP rank (so DDP still equals one process), recorded in
`train.jsonl` and the checkpoint, and kept on resume (so a resumed run stays bit-exact even
if these defaults change in a later version).

- Memory format: channels-last (NHWC) lets oneDNN run the convolutions without reordering,
  forward and backward. Measured on the training step (forward, backward and Adam; batch 8 of
  32 px LR patches, x4, 1 thread, idle machine, interleaved in one process), channels-last /
  contiguous: edsrmini 0.69, fmen_s 0.76, e_rfdn 0.81, edsr_baseline 0.83, fmen_s_train 0.86,
  abpn 0.86; a tie for bsrn_s 1.00, bsrn 0.98, swinirmini 0.99 (kept contiguous) and
  fmen_train 1.03 (1.31 in a run on a loaded machine). On the AVX-512 Xeon of later sessions
  (2026-12-06, batch 16 as the campaigns train, idle, interleaved) BSRN is the exception:
  0.73 at x2 and 0.74 at x4 (1 thread), 0.74 at 2 threads, 0.82-0.83 with 48-60 features
  (the widths eq. 5 gives a compressed BSRN), against bsrn_s 0.98 and swinirmini 0.97; so
  bsrn trains channels-last (a tie on the AVX2 machine, a 1.35x faster step on this one).
  The families added after that measurement, same machine and day, batch 16, x4, idle, 1 / 2
  threads: rlfn 0.71 / 0.75, rlfn_s 0.82 / 0.81, safmn 0.87 / 0.88, smfanet 0.71 / 0.65,
  span_train 0.86 / 0.86, span 0.89 (2 threads): all channels-last.
- Attention (SwinIR): "math" (matmul, softmax, matmul, with the position bias and the window
  mask summed while small) or "sdpa" (`F.scaled_dot_product_attention`). With SwinIRmini's
  head size of 4 the fused CPU kernel measured 1.4-1.5x slower than math (whole training
  step, 1 thread), so math is the default; sdpa is there for GPUs and larger heads.
- Optimiser: `foreach` (one kernel per step over all parameters instead of a Python loop
  over them) for Adam-family optimisers; OBProx-SG has its own loop.
- Online fold (train forms with re-parameterisable blocks: FMEN's RRRBs, SPAN's Conv3XC):
  each block runs as the one 3x3 conv it equals, its kernel folded from the branch weights
  in every forward (`slimsr.archs.blocks.FoldableConv`). Same function of the inputs and the
  parameters, so the same gradients; the state dict stays the train form's. Measured on the
  training step (docs/training.md, "Fast paths of the training step"), so "auto" folds every
  network that has such blocks; a run checkpointed before this option existed keeps the
  branches.
- Compile: `torch.compile` (inductor) of the training forward, with fixed shapes; validation
  and the teacher stay eager, so their other image sizes never recompile it. Measured on the
  training step (`benchmarks/bench_train.py --models ... --compile`, 1 thread, compiled /
  eager, two runs): bsrn_s 0.87 / 0.90, edsrmini 0.93 / 0.98, abpn 0.94 / 0.94 (faster:
  inductor fuses the element-wise work around the convolutions); fmen_s_train 0.97 (one run,
  within the spread: left eager), bsrn 1.07, e_rfdn 1.19 and swinirmini 1.95 (slower:
  docs/training.md says why). Compiling costs 5-50 s at the first step, so "auto" compiles only the faster models,
  on CPU, when a C++ compiler is there, and only in runs of at least
  `COMPILE_MIN_ITERATIONS` (where it costs under 1% of the run); never for QAT (its observers
  switch mid-run). GPUs: not measured yet (`benchmarks/gpu_check.sh`), so off unless asked.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from slimsr.archs.blocks import has_foldable_convs, set_online_fold
from slimsr.errors import SlimsrError
from slimsr.registry import ModelInfo

MemoryFormat = Literal["contiguous", "channels_last"]
Attention = Literal["math", "sdpa"]
OptimizerImpl = Literal["foreach", "for_loop", "fused"]

TRAIN_CHANNELS_LAST_FAMILIES: frozenset[str] = frozenset(
    {"edsr", "fmen", "rfdn", "abpn", "rlfn", "safmn", "smfanet", "span"}
)
"""Families whose training step measured faster in NHWC at every model tried (module doc)."""

TRAIN_COMPILE_MODELS: frozenset[str] = frozenset({"bsrn_s", "edsrmini", "abpn"})
"""Models whose training step measured faster under `torch.compile` on CPU (module doc)."""

COMPILE_MIN_ITERATIONS = 20_000
"""Shortest run "auto" compiles: the first step's compilation (up to ~50 s) is then under 1% of
the run at these models' step times, and tests and short runs start at once."""

TRAIN_CHANNELS_LAST_MODELS: frozenset[str] = frozenset({"bsrn"})
"""Models outside those families measured faster in NHWC (module doc): BSRN, not BSRN-S."""

TRAIN_CONTIGUOUS_MODELS: frozenset[str] = frozenset({"fmen_train"})
"""Exceptions in those families: FMEN's full-size train-time form measured 1.03x (idle) to 1.31x
(loaded machine) slower in NHWC."""


@dataclass(frozen=True)
class StepPlan:
    """The resolved fast path of one run (what `train.jsonl` and the checkpoint record)."""

    memory_format: MemoryFormat
    attention: Attention | None
    """None where the network has no attention to choose for."""
    optimizer_impl: OptimizerImpl | None
    """None for optimisers with their own step (OBProx-SG)."""
    compile: bool = False
    """True: the training forward runs through `torch.compile` (see `step_forward`)."""
    online_fold: bool = False
    """True: re-parameterisable blocks run as their folded conv (module doc)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def torch_memory_format(self) -> torch.memory_format:
        if self.memory_format == "channels_last":
            return torch.channels_last
        return torch.contiguous_format


def default_memory_format(info: ModelInfo, device: torch.device) -> MemoryFormat:
    """The default measured on this project's CPU; CUDA gets contiguous (not measured yet:
    `benchmarks/gpu_check.sh` is where a lent GPU would measure it)."""
    if device.type != "cpu":
        return "contiguous"
    fast = (
        info.family in TRAIN_CHANNELS_LAST_FAMILIES and info.name not in TRAIN_CONTIGUOUS_MODELS
    ) or info.name in TRAIN_CHANNELS_LAST_MODELS
    return "channels_last" if fast else "contiguous"


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would use on CPU ($CXX, else g++), or None."""
    return shutil.which(os.environ.get("CXX", "g++"))


def default_compile(info: ModelInfo, device: torch.device, iterations: int) -> bool:
    """Compile on "auto": a model measured faster compiled, on CPU with a compiler, in a run
    long enough to repay the compilation (module doc)."""
    return (
        device.type == "cpu"
        and info.name in TRAIN_COMPILE_MODELS
        and iterations >= COMPILE_MIN_ITERATIONS
        and cpp_compiler() is not None
    )


def has_window_attention(net: nn.Module) -> bool:
    return callable(getattr(net, "set_attention", None))


def resolve_plan(
    requested: dict[str, str],
    info: ModelInfo,
    net: nn.Module,
    device: torch.device,
    own_step: bool,
    saved: dict[str, Any] | None = None,
    iterations: int = 0,
) -> StepPlan:
    """`requested` ("auto" or a value per field) -> a plan; `saved` (a resumed run's plan)
    wins over "auto", so a resumed run keeps the choice it started with. `iterations`: the
    run's length, for the compile choice (0: never compile on "auto")."""
    saved = saved or {}

    def pick(field: str, default: Any) -> Any:
        value = requested.get(field, "auto")
        if value != "auto":
            return value
        return saved.get(field, default)

    attention = pick("attention", "math") if has_window_attention(net) else None
    impl = None if own_step else pick("optimizer_impl", "foreach")
    compiled = bool(pick("compile", default_compile(info, device, iterations)))
    if compiled and device.type == "cpu" and cpp_compiler() is None:
        raise SlimsrError(
            "train.fast_path.compile needs a C++ compiler on CPU (torch.compile's inductor "
            "backend builds C++ kernels) and none was found (g++, or $CXX); install one or "
            "set train.fast_path.compile: false"
        )
    # a run saved before the option existed ran its branches: it keeps them on "auto"
    fold_default = has_foldable_convs(net) and (not saved or "online_fold" in saved)
    online_fold = bool(pick("online_fold", fold_default)) and has_foldable_convs(net)
    return StepPlan(
        memory_format=pick("memory_format", default_memory_format(info, device)),
        attention=attention,
        optimizer_impl=impl,
        compile=compiled,
        online_fold=online_fold,
    )


def apply_plan(net: nn.Module, plan: StepPlan) -> None:
    """Put the network in the plan's memory format, attention kernel and fold mode (in place)."""
    net.to(memory_format=plan.torch_memory_format)
    if plan.attention is not None:
        net.set_attention(plan.attention)  # type: ignore[operator]
    set_online_fold(net, plan.online_fold)


def step_forward(forward: nn.Module, plan: StepPlan) -> Callable[[torch.Tensor], torch.Tensor]:
    """The callable a training step runs the network with: `forward` itself, or its compiled
    form (static shapes: a training run's patches never change size, and a dynamic graph
    measured slower). The compiled form shares `forward`'s parameters and state dict."""
    if not plan.compile:
        return forward
    return torch.compile(forward, dynamic=False)


def optimizer_kwargs(plan: StepPlan) -> dict[str, bool]:
    """Keyword arguments selecting the plan's implementation of a torch optimiser."""
    if plan.optimizer_impl is None:
        return {}
    if plan.optimizer_impl == "fused":
        return {"fused": True}
    return {"foreach": plan.optimizer_impl == "foreach"}


def as_input(x: torch.Tensor, plan: StepPlan) -> torch.Tensor:
    """A batch in the plan's memory format (a no-op for contiguous plans)."""
    if plan.memory_format == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
