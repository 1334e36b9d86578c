"""TFLite export of plain-conv models (float, or full-integer INT8 with uint8 IO) and running
.tflite files.

Route (measured in the project's INT8 feasibility study): the network is rebuilt in Keras 3 op
for op from `slimsr.quant.graph` (Conv2D, Add, Concatenate, depth_to_space, clip_by_value),
with the PyTorch weights transposed to HWIO and the pixel-shuffle channel order converted, and
TensorFlow 2.21's `TFLiteConverter` writes the file. For ABPN this is the official graph:
QUANTIZE(u8->i8), CONCATENATION, 7x CONV_2D, ADD, DEPTH_TO_SPACE, MINIMUM, RELU,
QUANTIZE(i8->u8), height and width dynamic.

INT8 ranges are decided in PyTorch, not by the converter: `slimsr.quant.qat` calibrates them on
representative images (post-training quantisation) or carries those learned by QAT, and the
Keras graph gets a TF fake-quant node with that range after every quantisation point. Weights
are stored already on their per-channel int8 grid, which the converter recovers exactly. So
one path serves PTQ and QAT, the file's input and output are uint8 with scale 1 and zero point
0 (raw pixel values), and the PyTorch fake-quant model predicts the file's output to within
rounding (`verify` checks it).

File contract: NHWC RGB, batch 1, pixel values (uint8 for INT8 files, float32 0..255 for float
files), output `scale` times larger. TensorFlow is needed only to export (`slimsr[tflite-export]`),
running needs `ai-edge-litert` only (`slimsr[tflite]`); both are imported lazily.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from slimsr.errors import UnsupportedDtypeError
from slimsr.fileio import atomic_path
from slimsr.model import SRModel
from slimsr.quant.graph import PlainGraph, QuantError, conv_weights, plain_graph
from slimsr.quant.onnx import VerifyResult, smooth_test_images
from slimsr.quant.qat import calibrate, fake_quant_weight, prepare_qat, qat_net

EXPORT_HINT = "pip install 'slimsr[tflite-export]'"
RUN_HINT = "pip install 'slimsr[tflite]'"
PRECISIONS = ("fp32", "int8")
VERIFY_SIZES: tuple[tuple[int, int], ...] = ((24, 20), (37, 41))
FP32_TOLERANCE = 1e-4
"""Float files: max abs error on [0,1] outputs against PyTorch (measured ~1e-6)."""
INT8_LEVELS = 1
INT8_SHARE = 0.99
"""INT8 files: at least 99% of output pixels within 1 uint8 level of the PyTorch fake-quant
model (integer kernels round a few intermediate values differently; measured on Set5 with the
official ABPN: 99.81% identical, 99.98% within 1 level, at most 3), and PSNR against float
PyTorch of at least `INT8_MIN_PSNR`."""
INT8_MIN_PSNR = 30.0
IO_CHOICES = ("auto", "uint8", "float")


class TFLiteError(QuantError):
    """A TFLite export, file or run that cannot be done as asked."""


class TFLiteNotInstalledError(TFLiteError, ImportError):
    """An optional TFLite extra is missing."""


class TFLiteVerifyError(TFLiteError):
    """The converted file disagrees with PyTorch beyond the tolerance (nothing is written)."""


def require(module: str, hint: str = EXPORT_HINT) -> Any:
    """Import an optional dependency, or fail with the install command (one line)."""
    if module == "tensorflow":
        # Before TF's C++ logging starts: without these, importing it prints four log lines.
        # oneDNN only speeds up TF's own kernels, which exporting barely runs.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TFLiteNotInstalledError(
            f"this needs the optional package {module!r}: {hint}"
        ) from None


def is_tflite_path(path: str | Path | None) -> bool:
    return path is not None and Path(path).suffix.lower() == ".tflite"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# -- Keras rebuild -----------------------------------------------------------------------------


def build_keras(
    graph: PlainGraph, net: nn.Module, ranges: dict[str, tuple[float, float]] | None = None
) -> Any:
    """The plain graph as a Keras functional model taking and returning pixel values (NHWC).

    With `ranges` (quantisation point -> (min, max), nudged), a fake-quant node follows every
    point and conv kernels are put on their per-channel int8 grid.
    """
    tf = require("tensorflow")
    keras = require("keras")
    layers = keras.layers
    r = graph.input_range

    def fake_quant(t: Any, point: str) -> Any:
        if ranges is None:
            return t
        lo, hi = ranges[point]
        return layers.Lambda(
            lambda v, lo=lo, hi=hi: tf.quantization.fake_quant_with_min_max_vars(
                v, lo, hi, num_bits=8, narrow_range=False
            ),
            name=f"fq_{point}",
        )(t)

    def lam(fn: Any, t: Any) -> Any:
        return layers.Lambda(fn)(t)

    first = graph.ops[0]
    inp = keras.Input(shape=(None, None, first.channels), batch_size=1, name="image")
    x = inp if r == 255.0 else lam(lambda v: v * (r / 255.0), inp)
    env: dict[str, Any] = {}
    for op in graph.ops:
        args = [env[i] for i in op.inputs]
        if op.kind == "input":
            v = x
        elif op.kind == "conv":
            w, b = conv_weights(graph, net, op)
            if ranges is not None:
                w = fake_quant_weight(w)
            kh, kw = w.shape[-2:]
            conv = layers.Conv2D(
                w.shape[0], (kh, kw), padding="same", activation="relu" if op.relu else None
            )
            v = conv(args[0])
            conv.set_weights([w.permute(2, 3, 1, 0).numpy(), b.numpy()])
        elif op.kind == "relu":
            v = layers.ReLU()(args[0])
        elif op.kind == "add":
            v = layers.Add()(args)
        elif op.kind == "mul":
            v = lam(lambda t, c=op.value: t * c, args[0])
        elif op.kind == "cat":
            v = layers.Concatenate(axis=-1)(args)
        elif op.kind == "repeat":  # an anchor bound for depth_to_space: a plain tiling (DCR)
            v = layers.Concatenate(axis=-1)([args[0]] * int(op.value))
        elif op.kind == "shuffle":
            v = lam(lambda t, s=int(op.value): tf.nn.depth_to_space(t, s), args[0])
        elif op.kind == "clamp":
            lo, hi = op.bounds
            if lo is not None and hi is not None:
                v = lam(lambda t, lo=lo, hi=hi: tf.clip_by_value(t, lo, hi), args[0])
            elif lo is not None:
                v = lam(lambda t, lo=lo: tf.maximum(t, lo), args[0])
            else:
                v = lam(lambda t, hi=hi: tf.minimum(t, hi), args[0])
        else:  # pragma: no cover - graph.KINDS
            raise TFLiteError(f"unknown op kind {op.kind!r}")
        if graph.points[op.name] == op.name:
            v = fake_quant(v, op.name)
        env[op.name] = v
    y = env[graph.output]
    if graph.output_point == "output" and ranges is not None:
        y = fake_quant(lam(lambda t: tf.clip_by_value(t, 0.0, r), y), "output")
    if r != 255.0:
        y = lam(lambda v: v * (255.0 / r), y)
        if ranges is not None:
            y = layers.Lambda(
                lambda v: tf.quantization.fake_quant_with_min_max_vars(v, 0.0, 255.0, num_bits=8)
            )(y)
    return keras.Model(inp, y)


def _convert(kmodel: Any, int8: bool, name: str) -> bytes:
    tf = require("tensorflow")
    converter = tf.lite.TFLiteConverter.from_keras_model(kmodel)
    if int8:
        # The graph carries fake-quant nodes, so the converter takes every range from them
        # (no representative dataset) and quantises all ops; uint8 at both ends.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    try:
        # Keras' SavedModel export prints its signature to stdout; the converter warns.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bytes(converter.convert())
    except Exception as exc:  # converter errors come in many types; the cause stays chained
        raise TFLiteError(f"{name}: TFLite conversion failed ({_first_line(exc)})") from exc


# -- inspecting files --------------------------------------------------------------------------


def _interpreter(model: bytes | str | Path, what: str, threads: int | None = None) -> Any:
    litert = require("ai_edge_litert.interpreter", RUN_HINT)
    kwargs: dict[str, Any] = {"num_threads": threads} if threads else {}
    try:
        if isinstance(model, bytes):
            return litert.Interpreter(model_content=model, **kwargs)
        return litert.Interpreter(model_path=str(model), **kwargs)
    except Exception as exc:  # ValueError / RuntimeError from the flatbuffer reader
        raise TFLiteError(f"{what}: not a readable TFLite model ({_first_line(exc)})") from None


@dataclass
class GraphSummary:
    """What a .tflite file computes with: op names, IO types and quantisation."""

    ops: list[str]
    input_dtype: str
    output_dtype: str
    input_quant: tuple[float, int]
    output_quant: tuple[float, int]
    tensor_dtypes: dict[str, int]
    """dtype name -> number of tensors."""
    signature: list[int]

    @property
    def full_integer(self) -> bool:
        """uint8 IO and no float tensor anywhere (weights int8, biases int32)."""
        io_ok = self.input_dtype == "uint8" and self.output_dtype == "uint8"
        return io_ok and not any(d.startswith("float") for d in self.tensor_dtypes)


def summarize(model: bytes | str | Path) -> GraphSummary:
    """Ops and tensor types of a .tflite file (with the XNNPACK delegate not applied yet)."""
    it = _interpreter(model, str(model)[:80] if not isinstance(model, bytes) else "the model")
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    dtypes: dict[str, int] = {}
    for t in it.get_tensor_details():
        key = np.dtype(t["dtype"]).name
        dtypes[key] = dtypes.get(key, 0) + 1
    get_ops = getattr(it, "_get_ops_details", None)  # not public API; names only
    ops = [o["op_name"] for o in get_ops()] if get_ops else []

    def quant(d: dict[str, Any]) -> tuple[float, int]:
        s, z = d.get("quantization", (0.0, 0))
        return float(s), int(z)

    return GraphSummary(
        ops,
        np.dtype(inp["dtype"]).name,
        np.dtype(out["dtype"]).name,
        quant(inp),
        quant(out),
        dtypes,
        [int(v) for v in inp.get("shape_signature", inp["shape"])],
    )


# -- export ------------------------------------------------------------------------------------


@dataclass
class TFLiteExport:
    """What `export_tflite` wrote and how it was checked."""

    path: Path
    arch: str
    scale: int
    precision: str
    ranges: str
    """INT8: "calibrated" (PTQ on representative images) or "qat" (ranges from training)."""
    size_bytes: int
    summary: GraphSummary | None = None
    checks: list[VerifyResult] = field(default_factory=list)
    limit: str = ""


def export_tflite(
    model: SRModel,
    path: str | Path,
    *,
    int8: bool = False,
    calibration: Sequence[Any] | str | Path | None = None,
    ranges: dict[str, Any] | None = None,
    verify: bool = True,
    sizes: Sequence[tuple[int, int]] = VERIFY_SIZES,
) -> TFLiteExport:
    """Export a plain-conv `model` to a .tflite file (see module docstring).

    `int8`: full-integer with uint8 IO; the ranges come from `ranges` (the `quantization` entry
    written beside QAT-trained weights) or are calibrated on `calibration` ((1,3,h,w) arrays in
    [0,1], e.g. `calibration_crops(...)`, or a folder of images). `verify` runs the file at
    `sizes` and compares with PyTorch (float: the model; INT8: its fake-quant twin); on failure
    nothing is written.
    """
    path = Path(path)
    if path.suffix.lower() != ".tflite":
        raise TFLiteError(f"{path}: the output file must end in .tflite")
    if isinstance(calibration, (str, Path)):  # a folder or an image: 64 random 48x48 crops
        from slimsr.quant.onnx import calibration_crops

        calibration = calibration_crops(calibration)
    if int8 and ranges is None and not calibration:
        raise TFLiteError("INT8 needs calibration images or QAT ranges")
    if not isinstance(model, SRModel):
        raise TFLiteError(f"export_tflite needs an SRModel (slimsr.load), got {model!r}")
    reference = copy.deepcopy(model).cpu()
    nn.Module.float(reference)
    reference.eval()
    if reference.info.deploy_form is not None:
        from slimsr.reparam import reparameterize_model

        reference = reparameterize_model(reference)
    graph = plain_graph(reference)  # refuses non-plain networks, naming the op
    require("tensorflow")
    _check_writable(path)

    simulated: SRModel | None = None
    point_ranges = None
    how = ""
    if int8:
        simulated = prepare_qat(copy.deepcopy(reference)).eval()
        qnet = qat_net(simulated)
        if ranges is not None:
            qnet.load_ranges(ranges)
            how = "qat"
        else:
            calibrate(simulated, calibration or [])
            how = "calibrated"
        point_ranges = {k: tuple(v) for k, v in qnet.export_ranges()["activations"].items()}
    kmodel = build_keras(graph, reference.net, point_ranges)
    data = _convert(kmodel, int8, reference.name)
    summary = summarize(data)
    if int8 and not (
        summary.full_integer
        and abs(summary.input_quant[0] - 1.0) < 1e-6
        and summary.input_quant[1] == 0
    ):
        raise TFLiteError(
            f"{reference.name}: the converter did not produce a full-integer graph with uint8 "
            f"pixel IO (tensor types {summary.tensor_dtypes}, input {summary.input_dtype} "
            f"{summary.input_quant}); nothing written"
        )
    result = TFLiteExport(
        path, reference.name, reference.scale, "int8" if int8 else "fp32", how, len(data), summary
    )
    if verify:
        result.checks, result.limit = _verify(
            data, reference, simulated, sizes, list(calibration or [])
        )
        bad = [c for c in result.checks if not c.ok]
        if bad:
            raise TFLiteVerifyError(
                f"{reference.name}: the TFLite file disagrees with PyTorch at "
                f"{'; '.join(c.describe() for c in bad)} (limit {result.limit}); nothing written"
            )
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise TFLiteError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return result


def _check_writable(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TFLiteError(f"{path}: cannot write ({exc.strerror or exc})") from None
    if not os.access(path.parent, os.W_OK):
        raise TFLiteError(f"{path}: cannot write (no permission in {path.parent})")


def _verify_input(samples: list[Any], h: int, w: int, gen: torch.Generator) -> Tensor:
    if not samples:
        return smooth_test_images((1, 3, h, w), gen)
    s = torch.as_tensor(np.asarray(samples[int(torch.randint(len(samples), (1,), generator=gen))]))
    s = s if s.ndim == 4 else s[None]
    reps = (1, 1, math.ceil(h / s.shape[-2]), math.ceil(w / s.shape[-1]))
    return s.float().repeat(*reps)[..., :h, :w]


def _verify(
    data: bytes,
    reference: SRModel,
    simulated: SRModel | None,
    sizes: Sequence[tuple[int, int]],
    samples: list[Any],
) -> tuple[list[VerifyResult], str]:
    runner = TFLiteUpscaler.from_bytes(data, "the converted file")
    gen = torch.Generator().manual_seed(0)
    results = []
    for h, w in sizes:
        x = _verify_input(samples, h, w, gen)
        with torch.no_grad():
            expected = reference(x)
            twin = simulated(x) if simulated is not None else None
        got = runner(x)
        if got.shape != expected.shape:
            raise TFLiteVerifyError(
                f"{reference.name}: TFLite returned {list(got.shape)} for input "
                f"{list(x.shape)}, PyTorch {list(expected.shape)}"
            )
        if twin is not None:  # a uint8 output holds [0, 1] only: compare with that
            expected = expected.clamp(0, 1)
        diff = (got.double() - expected.double()).abs()
        mse = float((diff * diff).mean())
        psnr = math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
        if twin is None:
            err = float(diff.max())
            ok = err <= FP32_TOLERANCE
        else:
            levels = (got.double() * 255 - twin.double() * 255).abs().round()
            err = float(levels.max()) / 255
            share = float((levels <= INT8_LEVELS).double().mean())
            ok = share >= INT8_SHARE and psnr >= INT8_MIN_PSNR
        results.append(VerifyResult((1, 3, h, w), err, psnr, bool(ok)))
    if simulated is None:
        return results, f"max |diff| <= {FP32_TOLERANCE:.0e}"
    limit = (
        f">= {INT8_SHARE:.0%} of pixels within {INT8_LEVELS} uint8 levels of the PyTorch "
        f"fake-quant model, PSNR vs float >= {INT8_MIN_PSNR:g} dB"
    )
    return results, limit


# -- running .tflite files ---------------------------------------------------------------------


class TFLiteUpscaler:
    """A .tflite file run by LiteRT's interpreter, callable like an `SRModel`.

    (N,3,h,w) float in [0,1] -> (N,3,h*s,w*s) float32 in [0,1]. Files take NHWC RGB pixel
    values: uint8/int8 inputs are quantised with the file's (scale, zero point), which for
    slimsr's and the official ABPN files is (1.0, 0), i.e. raw pixels; float32 inputs get
    values in 0..255. The input is resized to each image (batch items run one by one).
    `io="uint8"` or `"float"` refuses a file of the other kind; `scale` is checked against
    (or found by) one probe run.
    """

    def __init__(
        self,
        path: str | Path | None,
        scale: int | None = None,
        *,
        arch: str | None = None,
        threads: int | None = None,
        io: str = "auto",
        _content: bytes | None = None,
        _what: str = "",
    ) -> None:
        if io not in IO_CHOICES:
            raise TFLiteError(f"io must be one of {', '.join(IO_CHOICES)}, not {io!r}")
        self.path = Path(path) if path is not None else None
        self.what = _what or str(self.path)
        if _content is None:
            assert self.path is not None
            if not self.path.is_file():
                raise TFLiteError(f"TFLite file not found: {self.path}")
        self.interpreter = _interpreter(
            _content if _content is not None else str(self.path), self.what, threads
        )
        inputs, outputs = (
            self.interpreter.get_input_details(),
            self.interpreter.get_output_details(),
        )
        if len(inputs) != 1 or len(outputs) < 1 or len(inputs[0]["shape"]) != 4:
            raise TFLiteError(f"{self.what}: expected one NHWC image input and an image output")
        self._in, self._out = inputs[0], outputs[0]
        self.input_dtype = np.dtype(self._in["dtype"])
        self.output_dtype = np.dtype(self._out["dtype"])
        kinds = {self.input_dtype.kind, self.output_dtype.kind}
        if not kinds <= {"u", "i", "f"} or self._in["shape"][-1] != 3:
            raise TFLiteError(f"{self.what}: expected RGB (3-channel) integer or float IO")
        self.quantized = self.input_dtype.kind in "ui"
        if io == "uint8" and not (self.input_dtype == np.uint8 and self.output_dtype == np.uint8):
            raise TFLiteError(
                f"{self.what} has {self.input_dtype.name} input and {self.output_dtype.name} "
                "output; an INT8 file with uint8 IO is required here "
                "(export one with `slimsr export tflite --int8`)"
            )
        if io == "float" and self.quantized:
            raise TFLiteError(
                f"{self.what} is quantised ({self.input_dtype.name} IO); a float file is "
                "required here (export one with `slimsr export tflite` without --int8)"
            )
        self.arch = arch
        self._shape: tuple[int, ...] | None = None
        self.scale = self._resolve_scale(scale)

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "the model", **kwargs: Any) -> TFLiteUpscaler:
        return cls(None, _content=data, _what=what, **kwargs)

    @property
    def name(self) -> str:
        return self.arch or (self.path.stem if self.path is not None else "tflite")

    @property
    def precision(self) -> str:
        return "int8" if self.quantized else "fp32"

    def _resolve_scale(self, scale: int | None) -> int:
        probe = self._run_hwc(np.zeros((12, 10, 3), np.float32))
        s = probe.shape[0] // 12
        if s < 1 or probe.shape[:2] != (12 * s, 10 * s):
            raise TFLiteError(f"{self.what}: cannot tell its scale from a probe run")
        if scale is not None and int(scale) != s:
            raise TFLiteError(f"{self.what} is a x{s} model, not x{scale}")
        return s

    def _run_hwc(self, pixels: np.ndarray) -> np.ndarray:
        """One image: (h,w,3) float pixel values 0..255 -> (H,W,3) float pixel values."""
        it = self.interpreter
        shape = (1, *pixels.shape)
        if shape != self._shape:
            try:
                it.resize_tensor_input(self._in["index"], list(shape), strict=False)
                it.allocate_tensors()
            except Exception as exc:
                raise TFLiteError(
                    f"{self.what}: cannot run a {shape[1]}x{shape[2]} input ({_first_line(exc)})"
                ) from None
            self._shape = shape
        x = pixels
        if self.quantized:
            s, z = self._in["quantization"]
            info = np.iinfo(self.input_dtype)
            q = np.round(x / (s or 1.0) + z) if s else np.round(x)
            x = np.clip(q, info.min, info.max)
        try:
            it.set_tensor(self._in["index"], x.astype(self.input_dtype)[None])
            it.invoke()
            out = it.get_tensor(self._out["index"])[0]
        except Exception as exc:
            raise TFLiteError(
                f"{self.what}: the interpreter failed on a {shape[1]}x{shape[2]} input "
                f"({_first_line(exc)})"
            ) from None
        out = out.astype(np.float32)
        if self.output_dtype.kind in "ui":
            s, z = self._out["quantization"]
            if s:
                out = (out - z) * s
        return out

    def __call__(self, x: Tensor) -> Tensor:
        """The file's graph as is: zero padding at the image edge, unclamped."""
        arr = x.detach().to("cpu", torch.float32).numpy()
        outs = [self._run_hwc(img.transpose(1, 2, 0) * 255.0) for img in arr]
        y = np.stack([o.transpose(2, 0, 1) for o in outs]) / 255.0
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).to(x.device)

    # The parts of the SRModel interface that eval/upscale use.
    def check_dtype(self, dtype: torch.dtype) -> None:
        if dtype != torch.float32:
            raise UnsupportedDtypeError(
                f"{self.name} runs in the precision it was exported in; drop --fp16/--bf16"
            )

    def to(self, *args: Any, **kwargs: Any) -> TFLiteUpscaler:
        """Accepts float32 only; LiteRT runs on the CPU whatever the device."""
        dtype = kwargs.get("dtype") or next((a for a in args if isinstance(a, torch.dtype)), None)
        if dtype is not None:
            self.check_dtype(dtype)
        return self

    def eval(self) -> TFLiteUpscaler:
        return self

    def __repr__(self) -> str:
        return f"TFLiteUpscaler({self.what!r}, {self.precision}, scale={self.scale})"
