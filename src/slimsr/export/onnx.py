"""ONNX export of any registered model (fp32, fp16, INT8 QDQ), verified before it is written.

The exported graph has the `SRModel` contract, so a deployment needs no slimsr code: one input
`input`, float32 RGB in [0,1], NCHW, batch/height/width dynamic; one output `output`, float32
RGB in [0,1] (not clamped), `scale` times larger. The range scaling of networks trained on
[0,255] and the padding to a size multiple / minimum size happen inside the graph.

Exporter: torch 2.13 has two. The torch.export-based one (`dynamo=True`) needs onnxscript, took
5-30 s per model here, and keeps `SRModel`'s data-dependent padding choices as guards: an x4
BSRN exported from a 24x24 example fails on inputs under its 15-px minimum. The TorchScript
tracer (`dynamo=False`, deprecated but present) exports every registered model in 0.3-4 s; it
records sizes as graph values, provided the Python code never turns a size into a bool or an
int. `ExportGraph` therefore re-states `SRModel.forward` without size branches: the padded
extent, reflect-vs-replicate choice and crop are tensor arithmetic and index gathers. SwinIR
already builds its shifted-window masks from the run-time size while a graph is captured.
`verify` (on by default, `slimsr.export.verify`) runs onnxruntime at two sizes and compares with
PyTorch, so a shape baked into a graph cannot go unnoticed.

FMEN train-time models are exported in their re-parameterised deploy form. fp16 exports keep
float32 IO (casts inside the graph). INT8 is onnxruntime's static QDQ quantisation with int8
activations ("S8S8"), for plain-conv graphs only: see `slimsr.export.calibration`.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from slimsr.errors import UnsupportedDtypeError
from slimsr.export.calibration import CALIBRATION_METHODS, as_samples, quantize_qdq
from slimsr.export.common import (
    OnnxError,
    check_writable,
    first_line,
    require_onnx,
    write_file,
)
from slimsr.export.runners import META
from slimsr.export.verify import VERIFY_SIZES, VerifyResult, verify_onnx, verify_shapes
from slimsr.model import SRModel

DEFAULT_OPSET = 17
OPSETS = range(13, 21)
"""Opsets the TorchScript exporter writes (20 is its newest); onnxruntime 1.2x runs them all."""
PRECISIONS = ("fp32", "fp16", "int8")
INPUT_NAME, OUTPUT_NAME = "input", "output"


# -- the graph -------------------------------------------------------------------------------


def _axis_gather(length: Any, multiple: int, min_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Source indices that pad one axis like `slimsr.archs.blocks.pad_to_multiple`, and the padding.

    Returns (reflect index, replicate index, padding). While tracing, `length` is a 0-d tensor,
    so all of this stays symbolic in the graph.
    """
    n = torch.as_tensor(length)
    target = torch.clamp(n, min=min_size)
    target = target + (multiple - target % multiple) % multiple
    pos = torch.arange(target)
    last = n - 1
    reflect = torch.where(pos <= last, pos, 2 * last - pos)
    return reflect, torch.clamp(pos, max=last), target - n


class ExportGraph(nn.Module):
    """`SRModel.forward` written for the tracer: same numbers, no Python branch on sizes.

    With `half`, the network runs in fp16 between two casts, so the IO stays float32.
    """

    def __init__(self, model: SRModel, half: bool = False) -> None:
        super().__init__()
        self.net = copy.deepcopy(model.net).half() if half else model.net
        self.scale = model.scale
        self.multiple = model.info.size_multiple
        self.min_size = model.info.min_size
        self.value_range = model.info.input_range
        self.half = half

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2], x.shape[-1]
        pads = self.multiple > 1 or self.min_size > 1
        if pads:
            x = self._pad(x, h, w)
        if self.half:
            x = x.half()
        r = self.value_range
        y = self.net(x * r) if r != 1.0 else self.net(x)
        if self.half:
            y = y.float()
        if r != 1.0:
            y = y / r
        return y[..., : h * self.scale, : w * self.scale] if pads else y

    def _pad(self, x: Tensor, h: Any, w: Any) -> Tensor:
        rows_reflect, rows_clamp, pad_h = _axis_gather(h, self.multiple, self.min_size)
        cols_reflect, cols_clamp, pad_w = _axis_gather(w, self.multiple, self.min_size)
        # pad_to_multiple reflects only when both paddings are shorter than the image.
        reflect = (pad_h < torch.as_tensor(h)) & (pad_w < torch.as_tensor(w))
        rows = torch.where(reflect, rows_reflect, rows_clamp).to(x.device)
        cols = torch.where(reflect, cols_reflect, cols_clamp).to(x.device)
        return x.index_select(-2, rows).index_select(-1, cols)


# -- export ----------------------------------------------------------------------------------


@dataclass
class OnnxExport:
    """What `export_onnx` wrote and how it was checked."""

    path: Path
    arch: str
    scale: int
    precision: str
    opset: int
    dynamic: bool
    size_bytes: int
    checks: list[VerifyResult] = field(default_factory=list)
    limit: str = ""
    """The verify criterion, in words (e.g. "max |diff| <= 1e-04")."""


def export_onnx(
    model: SRModel,
    path: str | Path,
    *,
    opset: int | None = None,
    dtype: str = "fp32",
    dynamic: bool = True,
    verify: bool = True,
    sizes: Sequence[tuple[int, int]] = VERIFY_SIZES,
    input_size: tuple[int, int] | None = None,
    calibration: Any = None,
    calibration_method: str = "percentile",
) -> OnnxExport:
    """Export `model` to an ONNX file with the `SRModel` contract (see module docstring).

    `dtype`: "fp32", "fp16" (float32 IO) or "int8" (QDQ; needs `calibration`: a folder, image
    paths, or arrays from `calibration_crops`). `dynamic=False` fixes the input to `input_size`
    (H, W), batch 1. `verify` runs onnxruntime at `sizes` (batch 1, then 2; raised to the
    model's minimum size) and compares with `model` in PyTorch float32: max abs error <= 1e-4
    (fp32), <= 1e-2 (fp16), PSNR >= 30 dB (int8); on failure nothing is written. The file is
    written atomically.
    """
    precision = dtype.lower()
    if precision not in PRECISIONS:
        raise OnnxError(f"dtype must be one of {', '.join(PRECISIONS)}, not {dtype!r}")
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if opset not in OPSETS:
        raise OnnxError(f"opset {opset} is not supported; use {OPSETS[0]}..{OPSETS[-1]}")
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise OnnxError(f"{path}: the output file must end in .onnx")
    if not dynamic and input_size is None:
        raise OnnxError("a static export (dynamic=False) needs input_size=(H, W)")
    if precision == "int8" and calibration is None:
        raise OnnxError("INT8 needs calibration images (a folder, or calibration_crops(...))")
    if calibration_method not in CALIBRATION_METHODS:
        raise OnnxError(
            f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, "
            f"not {calibration_method!r}"
        )
    require_onnx("onnx")
    if verify or precision == "int8":
        require_onnx("onnxruntime")
    check_writable(path, OnnxError)  # before minutes of tracing and verifying, not after

    reference, deploy, samples, data = _build(
        model, precision, opset, dynamic, input_size, calibration, calibration_method
    )
    info = deploy.info
    result = OnnxExport(path, deploy.name, deploy.scale, precision, opset, dynamic, len(data))
    if verify:
        shapes = [(1, 3, *input_size)] if not dynamic and input_size else verify_shapes(sizes, info)
        result.checks, result.limit = verify_onnx(
            data, reference, precision, shapes, samples, deploy.name
        )
    write_file(path, data, OnnxError)
    return result


def onnx_model_bytes(model: SRModel, opset: int = DEFAULT_OPSET) -> bytes:
    """`model` as an fp32 dynamic-size ONNX graph in memory (what `export_onnx` writes, minus
    the verification): for running it in onnxruntime without a file (`slimsr.engines`, which
    compares the outputs itself)."""
    require_onnx("onnx")
    return _build(model, "fp32", opset, True, None, None, "percentile")[3]


def _build(
    model: SRModel,
    precision: str,
    opset: int,
    dynamic: bool,
    input_size: tuple[int, int] | None,
    calibration: Any,
    calibration_method: str,
) -> tuple[SRModel, SRModel, list[np.ndarray], bytes]:
    """(float32 reference, deploy form, calibration samples, serialized graph)."""
    onnx = require_onnx("onnx")
    reference = _cpu_float_copy(model)
    if precision == "fp16" and not reference.info.supports_fp16:
        raise UnsupportedDtypeError(f"{reference.name} does not support fp16; export it as fp32")
    deploy = reference
    if reference.info.deploy_form is not None:
        from slimsr.reparam import reparameterize_model

        deploy = reparameterize_model(reference)
    info = deploy.info
    example_hw = input_size or (max(32, info.min_size), max(40, info.min_size))
    graph = ExportGraph(deploy, half=precision == "fp16").eval()
    example = torch.rand(1, 3, *example_hw, generator=torch.Generator().manual_seed(0))
    proto = _trace(graph, example, opset, dynamic, deploy.name)
    samples: list[np.ndarray] = []
    if precision == "int8":
        samples = as_samples(calibration)
        proto = quantize_qdq(proto, samples, calibration_method, deploy.name, INPUT_NAME)
    _set_metadata(proto, deploy, precision, source=reference.name)
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise OnnxError(
            f"{deploy.name}: the exported graph is invalid ({first_line(exc)})"
        ) from exc
    return reference, deploy, samples, proto.SerializeToString()


def _cpu_float_copy(model: SRModel) -> SRModel:
    """An eval-mode float32 CPU copy: exporting must not move or retype the caller's model."""
    if not isinstance(model, SRModel):
        raise OnnxError(f"export_onnx needs an SRModel (slimsr.load / create_model), got {model!r}")
    copied = copy.deepcopy(model).cpu()
    nn.Module.float(copied)  # an fp16/bf16 model is exported from (and checked in) float32
    return copied.eval()


def _trace(graph: nn.Module, example: Tensor, opset: int, dynamic: bool, name: str) -> Any:
    onnx = require_onnx("onnx")
    axes = None
    if dynamic:
        axes = {
            INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
            OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"},
        }
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter announces its deprecation on every call.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                graph,
                (example,),
                buf,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                do_constant_folding=True,
            )
    except Exception as exc:  # the exporter raises many types; the cause stays chained
        raise OnnxError(f"{name}: ONNX export failed ({first_line(exc)})") from exc
    return onnx.load_from_string(buf.getvalue())


def _set_metadata(proto: Any, model: SRModel, precision: str, source: str) -> None:
    from slimsr import __version__

    info = model.info
    values = {
        "format": "slimsr-onnx",
        "version": __version__,
        "arch": info.name,
        "family": info.family,
        "scale": str(model.scale),
        "kwargs": json.dumps(model.kwargs, sort_keys=True),
        "precision": precision,
        "input_range": "[0, 1]",
        "layout": "NCHW RGB float32 in, NCHW RGB float32 out (not clamped)",
        "network_input_range": f"[0, {info.input_range:g}]",
    }
    if source != info.name:
        values["reparameterized_from"] = source
    kept = [p for p in proto.metadata_props if not p.key.startswith(META)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META + key, value
    proto.producer_name = "slimsr"
    proto.producer_version = __version__
    proto.doc_string = f"slimsr {info.name} x{model.scale} ({precision}): RGB [0,1] NCHW in and out"
