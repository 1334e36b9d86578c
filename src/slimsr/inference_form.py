"""The fast inference form of a model, shared by `profile`, `eval` and `upscale`.

This module prepares a model for inference (and runs a tensor through the prepared form); the
pictures themselves (tiles, strips, files) are `upscale.py`'s job.

    fast = prepare_for_inference(model, "cpu")      # an SRModel (or a raw network)
    y = run_inference(fast, x)                      # same outputs as model(x), to ~1e-6

Inference needs no autograd state, so everything runs under `torch.inference_mode`, with
parameters frozen and the module in eval mode. On top of that, per model, whatever measured
fastest (numbers in docs/efficiency.md):

- **Fused forms** (default on CPU for ABPN, BSRN, BSRN-S, E-RFDN, FMEN, FMEN-S, RLFN, RLFN-S,
  the RLFN NTIRE entry and SPAN's deploy forms): `slimsr.fused.fuse` builds a new module from the trained weights
  that computes the same function with fewer passes over memory: channels-last throughout,
  concatenations feeding a 1x1 conv replaced by running sums, chains of linear layers folded,
  residual identities folded into conv weights, activations in place or fused into oneDNN
  convolutions. The trained network is left as it is (its state dict stays official); the
  fused one holds derived tensors only.
- **Memory format** for the other networks: channels_last (NHWC) where it measured faster on
  CPU, as each family declares in its registry entry (`ModelInfo.cpu_channels_last`, set by
  `register_family` in `archs/<family>.py`, with the measured ratios). On CUDA nothing was
  measured here: contiguous and unfused by default.
- `torch.compile`, opt-in: the first call compiles (tens of seconds on CPU), later calls with
  the same shapes may be faster.

Measured and rejected: `torch.jit.trace` + `freeze` + `optimize_for_inference` (3x slower on
BSRN: it converts to oneDNN's blocked tensors and back around every unsupported op).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from slimsr.errors import SlimsrError, UnsupportedDtypeError
from slimsr.fused import fuse as build_fused_form
from slimsr.fused import has_fused_form
from slimsr.registry import default_registry

_STATE_ATTR = "_slimsr_inference"


@dataclass(frozen=True)
class InferenceConfig:
    """How a module was prepared; `run_inference` reads it back from the module."""

    device: torch.device
    dtype: torch.dtype
    channels_last: bool
    compiled: bool
    fused: bool = False
    """The module is a fused inference form (channels-last inside whatever the input)."""

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def describe(self) -> str:
        parts = [str(self.device), str(self.dtype).replace("torch.", "")]
        parts.append("fused" if self.fused else "plain")
        parts.append("channels_last" if self.channels_last else "contiguous")
        if self.compiled:
            parts.append("torch.compile")
        return ", ".join(parts)


def family_of(model: nn.Module) -> tuple[str | None, str | None]:
    """(family, name) of an `SRModel` (duck-typed: anything with `.info.family`)."""
    info = getattr(model, "info", None)
    return getattr(info, "family", None), getattr(info, "name", None)


def default_channels_last(
    family: str | None, device: torch.device | str, name: str | None = None
) -> bool:
    """The measured default on CPU, as the registry declares it for the model `name` (or, for
    a name it does not know, for `family`); contiguous elsewhere (not measured here)."""
    if torch.device(device).type != "cpu" or family is None:
        return False
    registry = default_registry()
    if name is not None and name in registry:
        return registry.get(name).cpu_channels_last
    return registry.family(family).cpu_channels_last


def default_fuse(net: nn.Module, device: torch.device | str) -> bool:
    """Fuse by default on CPU, where it was measured (docs/efficiency.md)."""
    return has_fused_form(net) and torch.device(device).type == "cpu"


def check_inference_dtype(model: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse a precision the device or the architecture cannot run safely (clear error)."""
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise SlimsrError(f"inference runs in float32, float16 or bfloat16, not {dtype}")
    check = getattr(model, "check_dtype", None)
    if callable(check):
        check(dtype)  # SRModel: refuses precisions the architecture is not safe in
    if dtype == torch.float16 and device.type == "cpu":
        raise UnsupportedDtypeError("float16 needs a CUDA device; use bfloat16 on CPU")


def _current_dtype(model: nn.Module) -> torch.dtype:
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    return ref.dtype if ref is not None else torch.float32


def prepare_for_inference(
    model: nn.Module,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    channels_last: bool | None = None,
    compile: bool = False,
    *,
    fuse: bool | None = None,
    family: str | None = None,
    name: str | None = None,
) -> nn.Module:
    """The fastest measured inference form of `model` (an `SRModel` or a raw network).

    Returns the module to call (use it, not the argument): for an `SRModel` again an `SRModel`
    (RGB in [0,1], any size, padding handled), for a raw network a raw network (official range).

    - `device`, `dtype` (None: the model's current dtype, normally float32): moved there;
      eval mode, no gradients. float16 needs CUDA; architectures refuse unsafe precisions.
    - `fuse`: build the network's fused form (`slimsr.fused.fuse`); None = where one exists
      and on CPU, unless `channels_last=False` asks for the plain NCHW graph. The argument is
      then left unfused (prepared in place: device, dtype, eval) and shares nothing with the
      result. Fused forms run channels-last inside, so `channels_last` only says how inputs
      are handed over.
    - `channels_last`: memory format of an unfused network; None = the measured default of its
      family (`family`, `name` say which for a raw network).
    - `compile`: wrap the result's network with `torch.compile` (keys unchanged).

    `run_inference(result, x)` converts `x` to the recorded device, dtype and layout.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SlimsrError("a CUDA device was asked for, but none is available")
    dtype = _current_dtype(model) if dtype is None else dtype
    check_inference_dtype(model, dtype, device)
    own_family, own_name = family_of(model)
    net: nn.Module = getattr(model, "net", model)  # SRModel or raw network
    if fuse is None:
        fuse = default_fuse(net, device) and channels_last is not False
    if fuse and not has_fused_form(net):
        raise SlimsrError(f"{own_name or type(net).__name__} has no fused inference form")
    model.eval().requires_grad_(False)
    model.to(device=device, dtype=dtype)
    if fuse:
        with torch.no_grad():
            fused = build_fused_form(net)
            assert fused is not None  # has_fused_form(net) was checked above
            fused = fused.to(device=device, dtype=dtype)
        result = _rewrap(model, fused)
        channels_last = True
    else:
        if channels_last is None:
            channels_last = default_channels_last(family or own_family, device, name or own_name)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model.to(memory_format=fmt)  # only 4-D parameters and buffers change layout
        result = model
    if compile:
        target = getattr(result, "net", result)
        target.compile()  # in place: state-dict keys stay as they are (no `_orig_mod.`)
    cfg = InferenceConfig(device, dtype, bool(channels_last), bool(compile), bool(fuse))
    object.__setattr__(result, _STATE_ATTR, cfg)
    return result


def _rewrap(model: nn.Module, fused: nn.Module) -> nn.Module:
    """An `SRModel` around the fused network (same info, scale, kwargs), or `fused` itself."""
    if getattr(model, "net", None) is None:
        return fused
    wrapper = type(model)(fused, model.info, model.scale, getattr(model, "kwargs", None))
    return wrapper.eval().requires_grad_(False)


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
    for. The output keeps the model's device and dtype."""
    with torch.inference_mode():
        return model(to_model_input(model, x))
