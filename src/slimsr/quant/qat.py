"""Quantisation-aware training (QAT) of plain-conv networks, simulating full-integer TFLite.

`prepare_qat(model)` wraps a plain-conv `SRModel` (see `slimsr.quant.graph`) so that its
forward pass computes what the INT8 TFLite file will compute, in float:

- weights: per-output-channel symmetric INT8 (scale = max|w| / 127, zero point 0), recomputed
  from the current weights at every step, as TFLite's converter quantises them; biases int32
  with scale input scale x weight scale;
- activations: per-tensor 8-bit affine ranges, one per quantisation point of the plain graph
  (after each conv/ReLU, add, concat, clamp); pixel shuffle and the anchor repeat reuse their
  input's range, as the official graph's DEPTH_TO_SPACE and CONCATENATION do;
- input and output: fixed to the uint8 pixel grid [0, 255] (scale 1, zero point 0), so the
  deployed file takes and returns raw pixel values; so is the tensor the output is only moved
  and clamped from (ABPN's anchor add, `graph.PlainGraph.fixed`).

Ranges start from calibration (`calibrate`: min/max over representative images on the float
network, i.e. post-training quantisation), so fine-tuning starts at PTQ quality, and then follow
an exponential moving average of each batch's min/max while training (decay 0.999, as the
official ABPN QAT through tensorflow-model-optimization did); in eval mode they are frozen. The
rounding uses torch's own `fake_quantize_per_tensor_affine` / `fake_quantize_per_channel_affine`
(straight-through gradients inside the range). Zero points are nudged to integers exactly as
TensorFlow's FakeQuant ops do, so `export_ranges()` can be written into a TFLite graph as
fake-quant nodes and the converter keeps the trained ranges bit for bit.

The wrapper keeps the float network as `.net` (official parameter names under `net.`), so the
weights trained here save as an ordinary float model of the same architecture, and the ranges
travel beside them (`quantization` in the weights' JSON sidecar).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimsr.model import SRModel
from slimsr.quant.graph import PlainGraph, QuantError, plain_graph

RANGES_FORMAT = "slimsr-int8-ranges"
QMIN, QMAX = 0, 255
"""Activations: 8-bit affine (uint8 view; TFLite stores the same grid as int8, zp - 128)."""
WMAX = 127
"""Weights: symmetric int8 in [-127, 127] (TFLite's narrow range for per-channel weights)."""
BIAS_MIN, BIAS_MAX = -(2**31), 2**31 - 1
"""Biases: int32 with scale input_scale * weight_scale, as TFLite stores them."""
CALIBRATION_BATCH = 16


class ActQuant(nn.Module):
    """One per-tensor activation range: calibrate, follow an EMA while training, fake-quantise.

    `mode`: "calibrate" records the running min/max of float activations and returns them
    unchanged; "quantize" fake-quantises (and, in training mode, updates the EMA first).
    """

    def __init__(self, fixed: tuple[float, float] | None = None, decay: float = 0.999) -> None:
        super().__init__()
        lo, hi = fixed if fixed is not None else (math.inf, -math.inf)
        self.register_buffer("lo", torch.tensor(float(lo)))
        self.register_buffer("hi", torch.tensor(float(hi)))
        self.fixed = fixed is not None
        self._fixed_range = (float(lo), float(hi))
        self.decay = float(decay)
        self.mode = "quantize"
        self.observe = True
        """False freezes the range while training (e.g. for the last iterations)."""

    @property
    def initialized(self) -> bool:
        return bool(torch.isfinite(self.lo) and torch.isfinite(self.hi))

    def set_range(self, lo: float, hi: float) -> None:
        """Take a stored range; a fixed point keeps the graph's own (files and checkpoints saved
        before a point was fixed carry a learned one, which the graph's replaces)."""
        lo, hi = self._fixed_range if self.fixed else (float(lo), float(hi))
        with torch.no_grad():
            self.lo.fill_(lo)
            self.hi.fill_(hi)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        self.set_range(float(self.lo), float(self.hi))

    def reset(self) -> None:
        if not self.fixed:
            self.lo.fill_(math.inf)
            self.hi.fill_(-math.inf)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "calibrate":
            if not self.fixed:
                with torch.no_grad():
                    self.lo.copy_(torch.minimum(self.lo, x.detach().min().float()))
                    self.hi.copy_(torch.maximum(self.hi, x.detach().max().float()))
            return x
        if not self.initialized:
            raise QuantError(
                "an activation range is not initialised: calibrate the QAT model first "
                "(slimsr.quant.qat.calibrate)"
            )
        if self.training and self.observe and not self.fixed:
            with torch.no_grad():
                d = self.decay
                self.lo.mul_(d).add_((1 - d) * x.detach().min().float())
                self.hi.mul_(d).add_((1 - d) * x.detach().max().float())
        scale, zero_point = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, QMIN, QMAX)

    def qparams(self) -> tuple[Tensor, Tensor]:
        """(scale float32, zero point int32) with the range widened to contain 0, as TF does."""
        lo = torch.clamp(self.lo, max=0.0)
        hi = torch.clamp(self.hi, min=0.0)
        scale = torch.clamp((hi - lo) / (QMAX - QMIN), min=1e-8)
        # TF's FakeQuant rounds the zero point half away from zero; lo <= 0 so floor(x + 0.5).
        zp = torch.clamp(torch.floor(QMIN - lo / scale + 0.5), QMIN, QMAX)
        return scale.reshape(1).float(), zp.reshape(1).to(torch.int32)

    def nudged(self) -> tuple[float, float]:
        """The range as it is applied: (min, max) on the integer grid, zero exactly on it."""
        scale, zp = self.qparams()
        s, z = float(scale), float(zp)
        return (QMIN - z) * s, (QMAX - z) * s

    def extra_repr(self) -> str:
        return f"lo={float(self.lo):.4g}, hi={float(self.hi):.4g}, fixed={self.fixed}"


def weight_scale(w: Tensor) -> Tensor:
    """Per-output-channel scale of symmetric INT8 weights: max|w| / 127."""
    return torch.clamp(w.detach().abs().flatten(1).amax(1) / WMAX, min=1e-12).float()


def fake_quant_weight(w: Tensor) -> Tensor:
    """Per-output-channel symmetric INT8 (scale max|w|/127), straight-through gradients."""
    scale = weight_scale(w)
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -WMAX, WMAX)


def fake_quant_bias(b: Tensor, input_scale: Tensor, w_scale: Tensor) -> Tensor:
    """The int32 bias of an integer conv: scale = input scale x weight scale per channel.

    Its rounding shifts outputs by up to ~0.05 of a level, enough to flip a few percent of
    roundings, so the fake-quant model rounds it too (closer agreement with the file).
    """
    scale = (input_scale.reshape(()) * w_scale).float()
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(b, scale, zero, 0, BIAS_MIN, BIAS_MAX)


class QATNet(nn.Module):
    """A plain-conv network run op by op with fake quantisation (see module docstring).

    Takes and returns the network's own value range (like `.net`); `SRModel` adds the [0,1]
    convention around it.
    """

    def __init__(self, net: nn.Module, graph: PlainGraph, decay: float = 0.999) -> None:
        super().__init__()
        self.net = net
        self.graph = graph
        self.quant = nn.ModuleDict(
            {p: ActQuant(graph.fixed.get(p), decay) for p in graph.own_points}
        )
        self.calibrating = False

    def forward(self, x: Tensor) -> Tensor:
        g = self.graph
        env: dict[str, Tensor] = {}
        for op in g.ops:
            v = self._run(op, env, x)
            if g.points[op.name] == op.name:
                v = self.quant[op.name](v)
            env[op.name] = v
        y = env[g.output]
        if g.output_point == "output":
            y = self.quant["output"](torch.clamp(y, 0.0, g.input_range))
        return y

    def _run(self, op: Any, env: dict[str, Tensor], x: Tensor) -> Tensor:
        args = [env[i] for i in op.inputs]
        kind = op.kind
        if kind == "input":
            return x
        if kind == "conv":
            m = self.net.get_submodule(op.module)
            w, b = m.weight, m.bias
            if not self.calibrating:  # calibration sees the float network, as PTQ does
                w = fake_quant_weight(m.weight)
                if b is not None:
                    source = self.quant[self.graph.points[op.inputs[0]]]
                    b = fake_quant_bias(b, source.qparams()[0], weight_scale(m.weight))
            y = m._conv_forward(args[0], w, b)
            return F.relu(y) if op.relu else y
        if kind == "relu":
            return F.relu(args[0])
        if kind == "add":
            return args[0] + args[1]
        if kind == "mul":
            return args[0] * op.value
        if kind == "cat":
            return torch.cat(args, dim=1)
        if kind == "repeat":
            return args[0].repeat_interleave(int(op.value), dim=1)
        if kind == "shuffle":
            return F.pixel_shuffle(args[0], int(op.value))
        if kind == "clamp":
            return torch.clamp(args[0], *op.bounds)
        raise QuantError(f"unknown op kind {kind!r}")  # pragma: no cover - graph.KINDS

    # -- ranges ----------------------------------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        self.calibrating = mode == "calibrate"
        for q in self.quant.values():
            q.mode = mode

    def set_observe(self, observe: bool) -> None:
        for q in self.quant.values():
            q.observe = observe

    @property
    def initialized(self) -> bool:
        return all(q.initialized for q in self.quant.values())

    def export_ranges(self) -> dict[str, Any]:
        """The ranges as applied (nudged), JSON-ready; stored beside QAT-trained weights."""
        if not self.initialized:
            raise QuantError("the QAT ranges are not initialised (calibrate first)")
        return {
            "format": RANGES_FORMAT,
            "version": 1,
            "input_range": self.graph.input_range,
            "weights": "per-channel symmetric int8, max|w|/127",
            "activations": {p: list(q.nudged()) for p, q in self.quant.items()},
        }

    def load_ranges(self, ranges: dict[str, Any]) -> None:
        if not isinstance(ranges, dict) or ranges.get("format") != RANGES_FORMAT:
            raise QuantError("not slimsr INT8 ranges (expected the 'quantization' sidecar entry)")
        acts = ranges.get("activations") or {}
        if set(acts) != set(self.quant):
            missing = sorted(set(self.quant) - set(acts)) or sorted(set(acts) - set(self.quant))
            raise QuantError(
                f"the INT8 ranges do not fit this network (points differ: {', '.join(missing)})"
            )
        for p, (lo, hi) in acts.items():
            self.quant[p].set_range(lo, hi)


def prepare_qat(model: SRModel, decay: float = 0.999) -> SRModel:
    """An SRModel whose `.net` is a `QATNet` around `model.net` (shared parameters).

    Raises `UnsupportedOpError` (one line, naming the op) for networks that are not plain-conv.
    Ranges are uninitialised: `calibrate` or `load_ranges` next.
    """
    if isinstance(model.net, QATNet):
        return model
    graph = plain_graph(model)
    wrapped = SRModel(QATNet(model.net, graph, decay), model.info, model.scale, model.kwargs)
    return wrapped.train(model.training)


def qat_net(model: SRModel | nn.Module) -> QATNet:
    net = model.net if isinstance(model, SRModel) else model
    if not isinstance(net, QATNet):
        raise QuantError("not a QAT model (use slimsr.quant.qat.prepare_qat)")
    return net


@torch.no_grad()
def calibrate(model: SRModel, images: Iterable[Tensor | Any]) -> SRModel:
    """Post-training ranges: min/max of the float activations over `images`.

    `images`: (N,3,h,w) tensors or arrays in [0,1] (e.g. `calibration_crops(...)`).
    The model's train/eval mode is kept; the quantisers end in "quantize" mode.
    """
    net = qat_net(model)
    was_training = model.training
    device = next(net.parameters()).device
    for q in net.quant.values():
        q.reset()
    net.set_mode("calibrate")
    model.eval()
    seen = 0
    try:
        for batch in _batches(images, CALIBRATION_BATCH):
            model(batch.to(device))
            seen += 1
    finally:
        net.set_mode("quantize")
        model.train(was_training)
    if not seen:
        raise QuantError("calibration needs at least one image")
    return model


def _batches(images: Iterable[Tensor | Any], size: int) -> Iterable[Tensor]:
    """Consecutive images of one shape stacked into batches (min/max do not depend on it)."""
    pending: list[Tensor] = []
    for img in images:
        x = torch.as_tensor(np.asarray(img) if not isinstance(img, Tensor) else img).float()
        x = x if x.ndim == 4 else x[None]
        if pending and (x.shape[1:] != pending[0].shape[1:] or len(pending) >= size):
            yield torch.cat(pending)
            pending = []
        pending.append(x)
    if pending:
        yield torch.cat(pending)


def ranges_from_weights_file(path: Any) -> dict[str, Any] | None:
    """The `quantization` entry of a slimsr weights file's description, if it has one."""
    from slimsr.weight_files import read_checkpoint

    meta = read_checkpoint(path).meta or {}
    ranges = meta.get("quantization")
    return ranges if isinstance(ranges, dict) else None
