"""ONNX export of any registered model, INT8 (QDQ) quantisation, and running .onnx files.

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
`verify` (on by default) runs onnxruntime at two sizes and compares with PyTorch, so a shape
baked into a graph cannot go unnoticed.

FMEN train-time models are exported in their re-parameterised deploy form. fp16 exports keep
float32 IO (casts inside the graph). INT8 uses onnxruntime's static QDQ quantisation
(per-channel int8 weights, int8 activations: "S8S8") and is offered for plain-conv graphs only.
Not uint8 activations ("U8S8"): on x86 CPUs without VNNI (AVX2 only), onnxruntime runs U8S8
convolutions with VPMADDUBSW, whose 16-bit pair sums saturate, so the same file loses ~1 dB
more there than on a VNNI CPU (official ABPN x3 on Set5: -0.955 vs -0.074 dB). S8S8 gives the
same integer results on both.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import math
import os
import random
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimsr.errors import SlimsrError, UnsupportedDtypeError
from slimsr.fileio import atomic_path
from slimsr.model import SRModel

INSTALL_HINT = "pip install slimsr[onnx]"
DEFAULT_OPSET = 17
OPSETS = range(13, 21)
"""Opsets the TorchScript exporter writes (20 is its newest); onnxruntime 1.2x runs them all."""
PRECISIONS = ("fp32", "fp16", "int8")
INPUT_NAME, OUTPUT_NAME = "input", "output"
VERIFY_SIZES: tuple[tuple[int, int], ...] = ((24, 20), (37, 41))
"""H x W of the verify runs: odd sizes, neither a multiple of 8 (SwinIR's window) nor of 2."""
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2
"""Max abs error on [0,1] outputs for fp16: 2.5 uint8 levels. Measured 1.5e-4..1.6e-3 on CPU,
where onnxruntime may run fp16 nodes through float32 casts (see docs/export.md)."""
INT8_MIN_PSNR = 30.0
"""INT8 verify: PSNR (dB, [0,1] outputs) of the quantised graph against PyTorch float, on
calibration crops. ABPN scores ~47 dB, FMEN-S ~37 dB; a broken quantisation far below 30."""
PLAIN_CONV_OPS = frozenset(
    {
        *("Conv", "Relu", "LeakyRelu", "PRelu", "Sigmoid", "Clip", "DepthToSpace"),
        *("Add", "Sub", "Mul", "Div", "Concat", "Tile", "Reshape", "Unsqueeze", "Shape"),
        *("Slice", "Constant", "Identity"),
    }
)
"""Ops of the graphs INT8 QDQ is offered for: the plain-conv ABPN, EDSR and FMEN. Others
(attention, GELU, ESA pooling, padding gathers) are refused; with this check lifted, official
BSRN-S x4 lost 1.84 dB and E-RFDN x4 0.42 dB on Set5 (FMEN-S 0.80 dB, ABPN 0.07 dB)."""
CALIBRATION_METHODS = ("percentile", "minmax")
"""onnxruntime calibrators; percentile (99.999th) lost 0.015 dB less than minmax on ABPN."""
META = "slimsr."
"""Prefix of our keys in the ONNX `metadata_props`."""


class OnnxError(SlimsrError):
    """An ONNX export, quantisation, file or run that cannot be done as asked."""


class OnnxNotInstalledError(OnnxError, ImportError):
    """The optional `onnx` extra is missing."""


class OnnxVerifyError(OnnxError):
    """The exported graph disagrees with PyTorch beyond the tolerance (nothing is written)."""


def require(module: str) -> Any:
    """Import an optional dependency, or fail with the install command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise OnnxNotInstalledError(
            f"this needs the optional package {module!r}: {INSTALL_HINT}"
        ) from None


def is_onnx_path(path: str | Path | None) -> bool:
    return path is not None and Path(path).suffix.lower() == ".onnx"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# -- the graph -------------------------------------------------------------------------------


def _axis_gather(length: Any, multiple: int, min_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Source indices that pad one axis like `slimsr.model.pad_input`, and the padding.

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
        # pad_input reflects only when both paddings are shorter than the image.
        reflect = (pad_h < torch.as_tensor(h)) & (pad_w < torch.as_tensor(w))
        rows = torch.where(reflect, rows_reflect, rows_clamp).to(x.device)
        cols = torch.where(reflect, cols_reflect, cols_clamp).to(x.device)
        return x.index_select(-2, rows).index_select(-1, cols)


# -- export ----------------------------------------------------------------------------------


@dataclass
class VerifyResult:
    """One onnxruntime-vs-PyTorch comparison."""

    shape: tuple[int, ...]
    max_abs_error: float
    psnr: float
    ok: bool

    def describe(self) -> str:
        size = "x".join(str(s) for s in self.shape)
        return f"{size}: max |diff| {self.max_abs_error:.1e}, {self.psnr:.1f} dB"


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
    onnx = require("onnx")
    if verify or precision == "int8":
        require("onnxruntime")
    _check_writable(path)  # before minutes of tracing and verifying, not after

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
        samples = _as_samples(calibration)
        proto = _quantize_qdq(proto, samples, calibration_method, deploy.name)
    _set_metadata(proto, deploy, precision, source=reference.name)
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise OnnxError(
            f"{deploy.name}: the exported graph is invalid ({_first_line(exc)})"
        ) from exc
    data = proto.SerializeToString()

    result = OnnxExport(path, deploy.name, deploy.scale, precision, opset, dynamic, len(data))
    if verify:
        shapes = (
            [(1, 3, *input_size)] if not dynamic and input_size else _verify_shapes(sizes, info)
        )
        result.checks, result.limit = _verify(data, reference, precision, shapes, samples)
        bad = [c for c in result.checks if not c.ok]
        if bad:
            raise OnnxVerifyError(
                f"{deploy.name}: onnxruntime disagrees with PyTorch at "
                f"{'; '.join(c.describe() for c in bad)} (limit {result.limit}); nothing written"
            )
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise OnnxError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return result


def _cpu_float_copy(model: SRModel) -> SRModel:
    """An eval-mode float32 CPU copy: exporting must not move or retype the caller's model."""
    if not isinstance(model, SRModel):
        raise OnnxError(f"export_onnx needs an SRModel (slimsr.load / create_model), got {model!r}")
    copied = copy.deepcopy(model).cpu()
    nn.Module.float(copied)  # an fp16/bf16 model is exported from (and checked in) float32
    return copied.eval()


def _check_writable(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OnnxError(f"{path}: cannot write ({exc.strerror or exc})") from None
    if not os.access(path.parent, os.W_OK):
        raise OnnxError(f"{path}: cannot write (no permission in {path.parent})")


def _trace(graph: nn.Module, example: Tensor, opset: int, dynamic: bool, name: str) -> Any:
    onnx = require("onnx")
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
        raise OnnxError(f"{name}: ONNX export failed ({_first_line(exc)})") from exc
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


def _verify_shapes(sizes: Sequence[tuple[int, int]], info: Any) -> list[tuple[int, ...]]:
    """Batch 1 for the first size, 2 for the others (the batch axis is dynamic too)."""
    shapes = []
    for i, (h, w) in enumerate(sizes):
        shapes.append((1 if i == 0 else 2, 3, max(h, info.min_size), max(w, info.min_size)))
    return shapes


def _verify(
    data: bytes,
    reference: SRModel,
    precision: str,
    shapes: list[tuple[int, ...]],
    samples: list[np.ndarray],
) -> tuple[list[VerifyResult], str]:
    session = _session(data, "the exported graph")
    gen = torch.Generator().manual_seed(0)
    results = []
    for shape in shapes:
        # INT8 ranges were calibrated on the samples: test on images like them.
        x = _crops_at(samples, shape) if precision == "int8" else smooth_test_images(shape, gen)
        with torch.no_grad():
            expected = reference.raw(x).numpy()  # the graph holds `raw` (no border, no clamp)
        got = _run(session, x.numpy(), "the exported graph")
        if got.shape != expected.shape:
            raise OnnxVerifyError(
                f"{reference.name}: onnxruntime returned {list(got.shape)} for input "
                f"{list(shape)}, PyTorch {list(expected.shape)} (a size baked into the graph)"
            )
        diff = np.abs(got.astype(np.float64) - expected)
        err = float(diff.max())
        mse = float((diff * diff).mean())
        psnr = math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
        if precision == "int8":
            ok = psnr >= INT8_MIN_PSNR
        else:
            ok = err <= (FP32_TOLERANCE if precision == "fp32" else FP16_TOLERANCE)
        results.append(VerifyResult(tuple(shape), err, psnr, bool(ok and np.isfinite(got).all())))
    limits = {
        "fp32": f"max |diff| <= {FP32_TOLERANCE:.0e}",
        "fp16": f"max |diff| <= {FP16_TOLERANCE:.0e}",
        "int8": f"PSNR >= {INT8_MIN_PSNR:g} dB",
    }
    return results, limits[precision]


def smooth_test_images(shape: Sequence[int], gen: torch.Generator) -> Tensor:
    """Image-like test inputs in [0,1]: random colours at 1/4 resolution, bilinear-upsampled,
    plus mild Gaussian texture.

    Not uniform noise: trained SR networks amplify it into outputs far outside [0,1] (official
    BSRN x2: +-145), where float32 rounding alone moves outputs by 0.3 and no tolerance on
    [0,1] outputs means anything. On these inputs PyTorch and onnxruntime agree to ~1e-6.
    """
    n, c, h, w = shape
    base = torch.rand(n, c, h // 4 + 2, w // 4 + 2, generator=gen)
    x = F.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    return (x + 0.05 * torch.randn(n, c, h, w, generator=gen)).clamp(0, 1)


def _crops_at(samples: list[np.ndarray], shape: tuple[int, ...]) -> Tensor:
    """`shape[0]` calibration samples cut (or tiled) to shape's H x W."""
    n, _, h, w = shape
    out = []
    for i in range(n):
        s = torch.from_numpy(samples[i % len(samples)])
        reps = (1, 1, math.ceil(h / s.shape[-2]), math.ceil(w / s.shape[-1]))
        out.append(s.repeat(*reps)[..., :h, :w])
    return torch.cat(out).float()


# -- INT8 --------------------------------------------------------------------------------------


def calibration_crops(
    source: str | Path | Sequence[str | Path | Tensor],
    count: int = 64,
    size: int = 48,
    *,
    downscale: int = 1,
    seed: int = 0,
) -> list[np.ndarray]:
    """`count` random `size` x `size` crops, (1,3,size,size) float32 in [0,1], for INT8.

    `source`: a folder of images, image paths, or (3,H,W) tensors. Give images like those the
    model will upscale; with `downscale` > 1 each crop is cut `downscale` times larger and
    shrunk by MATLAB bicubic, which turns HR photographs into LR-like inputs. Images too small
    for a crop are skipped: onnxruntime's calibrators stack the samples, so they share one size.
    """
    from slimsr.imaging import imresize, list_images, read_image

    if count < 1 or size < 1 or downscale < 1:
        raise OnnxError("calibration needs count, size and downscale >= 1")
    items: list[Any]
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.exists():
            raise OnnxError(f"{folder}: calibration folder not found")
        items = list_images(folder) if folder.is_dir() else [folder]
    else:
        items = list(source)
    if not items:
        raise OnnxError(f"{source}: no calibration images")
    rng = random.Random(seed)
    cut = size * downscale
    usable = list(range(len(items)))
    loaded: dict[int, Tensor] = {}
    crops = []
    while len(crops) < count:
        if not usable:
            raise OnnxError(f"no calibration image is at least {cut}x{cut} px; use smaller crops")
        k = rng.choice(usable)
        if k not in loaded:
            item = items[k]
            img = (item if isinstance(item, Tensor) else read_image(item).rgb).float()[:3]
            if min(img.shape[-2:]) < cut:
                usable.remove(k)
                continue
            loaded[k] = img
        img = loaded[k]
        h, w = img.shape[-2:]
        top, left = rng.randrange(h - cut + 1), rng.randrange(w - cut + 1)
        crop = img[None, :, top : top + cut, left : left + cut]
        if downscale > 1:
            crop = imresize(crop, 1.0 / downscale).clamp(0, 1)
        crops.append(np.ascontiguousarray(crop.numpy(), dtype=np.float32))
    return crops


def _as_samples(calibration: Any) -> list[np.ndarray]:
    if isinstance(calibration, (str, Path)):
        return calibration_crops(calibration)
    samples = [np.asarray(s, dtype=np.float32) for s in calibration]
    if not samples or any(s.ndim != 4 or s.shape[:2] != (1, 3) for s in samples):
        raise OnnxError("calibration samples must be (1, 3, H, W) arrays (see calibration_crops)")
    return samples


def _quantize_qdq(proto: Any, samples: list[np.ndarray], method: str, name: str) -> Any:
    """Static QDQ quantisation: per-channel int8 weights, int8 activations, float32 IO.

    Activations are int8 (S8S8), not uint8: see the module docstring (saturation on AVX2).
    """
    onnx = require("onnx")
    require("onnxruntime")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    other = sorted({n.op_type for n in proto.graph.node} - PLAIN_CONV_OPS)
    if other:
        raise OnnxError(
            f"{name}: INT8 is offered for plain-conv models (abpn, edsr*, fmen*); this graph "
            f"also has {', '.join(other)}. Export it as fp32 or fp16 instead"
        )
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            s = next(self._it, None)
            return None if s is None else {INPUT_NAME: s}

    with tempfile.TemporaryDirectory(prefix="slimsr-int8-") as tmp:
        src, pre, out = (Path(tmp) / f for f in ("float.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(proto, src)
        try:  # the calibrators print progress; keep the CLI's output to our own lines
            with contextlib.redirect_stdout(io.StringIO()):
                quant_pre_process(str(src), str(pre))
                quantize_static(
                    str(pre),
                    str(out),
                    Reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=methods[method],
                )
        except Exception as exc:
            raise OnnxError(f"{name}: INT8 quantisation failed ({_first_line(exc)})") from exc
        return onnx.load(str(out))


# -- running .onnx files -----------------------------------------------------------------------


def _session(model: bytes | str, what: str, threads: int | None = None) -> Any:
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors reach the user through our exception, once
    if threads:
        opts.intra_op_num_threads = threads
    wanted = ("CUDAExecutionProvider", "CPUExecutionProvider")
    providers = [p for p in wanted if p in ort.get_available_providers()]
    try:
        return ort.InferenceSession(model, opts, providers=providers)
    except Exception as exc:  # InvalidProtobuf, InvalidGraph, NoSuchFile, Fail, ...
        raise OnnxError(f"{what}: not a readable ONNX model ({_first_line(exc)})") from None


def _run(session: Any, x: np.ndarray, what: str) -> np.ndarray:
    inp = session.get_inputs()[0]
    if inp.type == "tensor(float16)":
        x = x.astype(np.float16)
    try:
        out = session.run(None, {inp.name: x})[0]
    except Exception as exc:
        raise OnnxError(
            f"{what}: onnxruntime failed on a {'x'.join(map(str, x.shape))} input "
            f"({_first_line(exc)})"
        ) from None
    return np.asarray(out, dtype=np.float32)


class OnnxUpscaler:
    """An .onnx file run by onnxruntime, callable like an `SRModel`.

    (N,3,h,w) float in [0,1] -> (N,3,h*s,w*s) float32. `scale` comes from slimsr's metadata,
    from the caller, or, for foreign files, from one probe run. `arch`, when given, must match
    the metadata. Precision is the file's: only float32 inputs are accepted by `check_dtype`.
    """

    def __init__(
        self,
        path: str | Path,
        scale: int | None = None,
        *,
        arch: str | None = None,
        threads: int | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxError(f"ONNX file not found: {self.path}")
        self.session = _session(str(self.path), str(self.path), threads)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1 or len(inputs[0].shape) != 4:
            raise OnnxError(f"{self.path}: expected one NCHW image input and an image output")
        if inputs[0].type not in ("tensor(float)", "tensor(float16)"):
            raise OnnxError(
                f"{self.path}: its input is {inputs[0].type}; slimsr runs models that take "
                "float RGB in [0,1], NCHW"
            )
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.arch = self.metadata.get(META + "arch")
        if arch is not None and self.arch is not None:
            from slimsr.registry import get_model_info

            if get_model_info(arch).name != self.arch:
                raise OnnxError(f"{self.path} holds {self.arch}, not {arch}")
        self.scale = self._resolve_scale(scale)

    @property
    def name(self) -> str:
        return self.arch or self.path.stem

    def _resolve_scale(self, scale: int | None) -> int:
        stored = self.metadata.get(META + "scale")
        if stored is not None:
            if scale is not None and int(scale) != int(stored):
                raise OnnxError(f"{self.path} is a x{stored} model, not x{scale}")
            return int(stored)
        if scale is not None:
            return int(scale)
        shape = self.session.get_inputs()[0].shape
        h, w = (d if isinstance(d, int) and d > 0 else 32 for d in shape[2:])
        out = _run(self.session, np.zeros((1, 3, h, w), np.float32), str(self.path))
        s = out.shape[2] // h if out.ndim == 4 else 0
        if s < 1 or tuple(out.shape[2:]) != (s * h, s * w):
            raise OnnxError(f"{self.path}: cannot tell its scale from a probe run; pass --scale")
        return s

    def __call__(self, x: Tensor) -> Tensor:
        """The file's graph as is: zero padding at the image edge, unclamped."""
        arr = x.detach().to("cpu", torch.float32).numpy()
        out = _run(self.session, arr, str(self.path))
        return torch.from_numpy(out).to(x.device)

    # The parts of the SRModel interface that eval/upscale use.
    def check_dtype(self, dtype: torch.dtype) -> None:
        if dtype != torch.float32:
            raise UnsupportedDtypeError(
                f"{self.path.name} runs in the precision it was exported in; drop --fp16/--bf16"
            )

    def to(self, *args: Any, **kwargs: Any) -> OnnxUpscaler:
        """Accepts float32 only; the device is onnxruntime's (CUDA if installed, else CPU)."""
        dtype = kwargs.get("dtype") or next((a for a in args if isinstance(a, torch.dtype)), None)
        if dtype is not None:
            self.check_dtype(dtype)
        return self

    def eval(self) -> OnnxUpscaler:
        return self

    def __repr__(self) -> str:
        return f"OnnxUpscaler({str(self.path)!r}, arch={self.arch}, scale={self.scale})"
