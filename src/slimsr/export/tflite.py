"""TFLite export of plain-conv models (float, or full-integer INT8 with uint8 IO), verified
before it is written.

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
rounding (`slimsr.export.verify` checks it).

File contract: NHWC RGB, batch 1, pixel values (uint8 for INT8 files, float32 0..255 for float
files), output `scale` times larger. TensorFlow is needed only to export (`slimsr[tflite-export]`),
running needs `ai-edge-litert` only (`slimsr[tflite]`, `slimsr.export.runners`); both are
imported lazily.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from slimsr.export.calibration import calibration_crops
from slimsr.export.common import (
    TFLiteError,
    check_writable,
    first_line,
    require_tflite,
    write_file,
)
from slimsr.export.runners import tflite_interpreter
from slimsr.export.verify import VERIFY_SIZES, VerifyResult, verify_tflite
from slimsr.model import SRModel
from slimsr.quant.graph import PlainGraph, conv_weights, plain_graph
from slimsr.quant.qat import calibrate, fake_quant_weight, prepare_qat, qat_net

PRECISIONS = ("fp32", "int8")


# -- Keras rebuild -----------------------------------------------------------------------------


def build_keras(
    graph: PlainGraph, net: nn.Module, ranges: dict[str, tuple[float, float]] | None = None
) -> Any:
    """The plain graph as a Keras functional model taking and returning pixel values (NHWC).

    With `ranges` (quantisation point -> (min, max), nudged), a fake-quant node follows every
    point and conv kernels are put on their per-channel int8 grid.
    """
    tf = require_tflite("tensorflow")
    keras = require_tflite("keras")
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
    tf = require_tflite("tensorflow")
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
        raise TFLiteError(f"{name}: TFLite conversion failed ({first_line(exc)})") from exc


# -- inspecting files --------------------------------------------------------------------------


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
    it = tflite_interpreter(model, str(model)[:80] if not isinstance(model, bytes) else "the model")
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
    require_tflite("tensorflow")
    check_writable(path, TFLiteError)

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
        result.checks, result.limit = verify_tflite(
            data, reference, simulated, sizes, list(calibration or [])
        )
    write_file(path, data, TFLiteError)
    return result
