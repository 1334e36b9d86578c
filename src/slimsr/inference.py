"""The fast inference path shared by `profile`, `eval` and `upscale`.

Inference needs no autograd state, so everything runs under `torch.inference_mode`, with
parameters frozen and the module in eval mode. Two further switches are worth having, but only
where they pay off:

- channels_last (NHWC) memory format. oneDNN's CPU convolutions prefer channels-last or
  blocked layouts, so an NCHW network pays layout reorders around its convs. How
  much that saves depends on the graph (depthwise convs, attention, concatenations), so the
  default is chosen per family from measurements (`CPU_CHANNELS_LAST`, numbers in the
  docstring there). On CUDA nothing has been measured here, so the default is contiguous.
- `torch.compile`, opt-in: the first call compiles (tens of seconds on CPU), later calls with
  the same shapes are faster. The module is compiled in place, so state-dict keys stay official.

`prepare_for_inference` applies the switches and records them on the module; `run_inference`
moves an input to the recorded device, dtype and layout and runs the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from slimsr.errors import SlimsrError, UnsupportedDtypeError

CPU_CHANNELS_LAST: dict[str, bool] = {
    "abpn": True,
    "bsrn": False,
    "edsr": True,
    "fmen": True,
    "rfdn": True,
    "swinir": True,
}
"""Default memory format per family on CPU, from `benchmarks/bench_models.py --layout`.

Measured with torch 2.13 (CPU, oneDNN), fp32, 128x128 LR, 1 thread (the 2-core machine was
shared with training runs; 2 threads were unusable), median of 5 interleaved runs after 2
warm-ups; ratio = channels_last time / contiguous time at x2 / x3 / x4 (below 1: faster):

    abpn 0.76 / 0.69 / 0.80        e_rfdn 0.81 / 0.83 / 0.85      fmen_s 0.75 / 0.76 / 0.73
    bsrn 0.92 / 0.96 / 0.97        edsr_baseline 0.90 / 0.77 / 0.81   fmen 0.94 / 0.91 / 0.87
    bsrn_s 1.01 / 0.98 / 0.97      edsrmini 0.83 / 0.70 / 0.73    swinir_s 0.92 / 0.95 / 0.94
    swinirmini 0.95 / 0.94 / 0.97  fmen_s_train 0.98 / 1.00 / 0.98   fmen_train 1.13 / 1.34 / 1.37

A family is NHWC only where that was faster at every scale. BSRN is not: 0.92-1.02 across
runs at 128x128, 1.02 for slimsr's BSRN at 256x256, and the official BSRN module switched to
NHWC ran 1.48x slower there (`bench_vs_reference.py`); its depthwise convs gain nothing from
the layout and BSRN-S's 1x1s are Linear layers on permuted tensors. SwinIR gains a little,
probably because the token view of an NHWC feature map needs no copy.
"""

CPU_CONTIGUOUS_MODELS: frozenset[str] = frozenset({"fmen_train", "fmen_s_train"})
"""Exceptions to the family default, measured up to 1.37x slower in NHWC (see above); FMEN's
train-time forms pad every RRRB and BN input into a freshly built NCHW tensor, so NHWC weights
probably pay a reorder per conv."""

_STATE_ATTR = "_slimsr_inference"


@dataclass(frozen=True)
class InferenceConfig:
    """How a module was prepared; `run_inference` reads it back from the module."""

    device: torch.device
    dtype: torch.dtype
    channels_last: bool
    compiled: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def family_of(model: nn.Module) -> tuple[str | None, str | None]:
    """(family, name) of an `SRModel` (duck-typed: anything with `.info.family`)."""
    info = getattr(model, "info", None)
    return getattr(info, "family", None), getattr(info, "name", None)


def default_channels_last(
    family: str | None, device: torch.device | str, name: str | None = None
) -> bool:
    """The measured per-family default on CPU; contiguous elsewhere (not measured here)."""
    if torch.device(device).type != "cpu" or family is None or name in CPU_CONTIGUOUS_MODELS:
        return False
    return CPU_CHANNELS_LAST.get(family, False)


def _check_dtype(model: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise SlimsrError(f"inference runs in float32, float16 or bfloat16, not {dtype}")
    check = getattr(model, "check_dtype", None)
    if callable(check):
        check(dtype)  # SRModel: refuses precisions the architecture is not safe in
    if dtype == torch.float16 and device.type == "cpu":
        raise UnsupportedDtypeError("float16 needs a CUDA device; use bfloat16 on CPU")


def prepare_for_inference(
    model: nn.Module,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool | None = None,
    compile: bool = False,
    *,
    family: str | None = None,
    name: str | None = None,
) -> nn.Module:
    """Put `model` (an `SRModel` or a raw network) on the fast path, in place; returns it.

    eval mode, no gradients, moved to `device` / `dtype`; `channels_last=None` picks the
    measured default of the model's family (`family` and the registered `name` say which for
    a raw network); `compile`
    compiles the module in place with `torch.compile`.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SlimsrError("a CUDA device was asked for, but none is available")
    _check_dtype(model, dtype, device)
    if channels_last is None:
        own_family, own_name = family_of(model)
        channels_last = default_channels_last(family or own_family, device, name or own_name)
    model.eval().requires_grad_(False)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device=device, dtype=dtype)
    model.to(memory_format=fmt)  # only 4-D parameters and buffers change layout
    if compile:
        model.compile()  # in place: the state-dict keys stay as they are (no `_orig_mod.`)
    cfg = InferenceConfig(device, dtype, bool(channels_last), bool(compile))
    object.__setattr__(model, _STATE_ATTR, cfg)
    return model


def inference_config(model: nn.Module) -> InferenceConfig:
    """The recorded settings, or the ones a model that was never prepared implies."""
    cfg = getattr(model, _STATE_ATTR, None)
    if isinstance(cfg, InferenceConfig):
        return cfg
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None else torch.float32
    return InferenceConfig(device, dtype, channels_last=False, compiled=False)


def to_model_input(model: nn.Module, x: Tensor) -> Tensor:
    """`x` on the model's device, dtype and memory format (a no-op when it already is)."""
    cfg = inference_config(model)
    fmt = cfg.memory_format if x.dim() == 4 else torch.preserve_format
    return x.to(device=cfg.device, dtype=cfg.dtype, memory_format=fmt)


def run_inference(model: nn.Module, x: Tensor) -> Tensor:
    """model(x) under `torch.inference_mode`, with x converted to what the model was prepared
    for. The output keeps the model's device, dtype and memory format."""
    with torch.inference_mode():
        return model(to_model_input(model, x))
