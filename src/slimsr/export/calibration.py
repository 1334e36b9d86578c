"""INT8 calibration: the representative crops, and how ONNX INT8 is quantised from them.

Calibration data is `calibration_crops`: random crops of images like those the model will
upscale (HR photos shrunk by MATLAB bicubic with `downscale`), shared by ONNX QDQ and TFLite
PTQ (which calibrates its ranges in PyTorch, `slimsr.quant.qat.calibrate`).

ONNX INT8 uses onnxruntime's static QDQ quantisation (per-channel int8 weights, int8
activations: "S8S8") and is offered for plain-conv graphs only. Not uint8 activations ("U8S8"):
on x86 CPUs without VNNI (AVX2 only), onnxruntime runs U8S8 convolutions with VPMADDUBSW, whose
16-bit pair sums saturate, so the same file loses ~1 dB more there than on a VNNI CPU (official
ABPN x3 on Set5: -0.955 vs -0.074 dB). S8S8 gives the same integer results on both.

The tensors the output only follows from by pixel moves, a clamp to the pixel range and the
scaling to [0, 1] (ABPN's anchor add, its depth-to-space and clamp, and the output) take the
output's pixel grid instead of a calibrated range (`output_grid_ranges`), as in the TFLite
export (`slimsr.quant.graph`): a range of their own rounds the output twice. Official ABPN x3,
Set5 RGB: -0.074 -> -0.053 dB (docs/export.md).
"""

from __future__ import annotations

import contextlib
import io
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from slimsr.export.common import OnnxError, first_line, require_onnx

CALIBRATION_METHODS = ("percentile", "minmax")
"""onnxruntime calibrators; percentile (99.999th) lost 0.015 dB less than minmax on ABPN."""
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


def as_samples(calibration: Any) -> list[np.ndarray]:
    """Calibration as (1,3,H,W) float32 arrays: crops of a folder, or the arrays given."""
    if isinstance(calibration, (str, Path)):
        return calibration_crops(calibration)
    samples = [np.asarray(s, dtype=np.float32) for s in calibration]
    if not samples or any(s.ndim != 4 or s.shape[:2] != (1, 3) for s in samples):
        raise OnnxError("calibration samples must be (1, 3, H, W) arrays (see calibration_crops)")
    return samples


PIXEL_MOVES = frozenset({"DepthToSpace", "Identity"})
"""Ops that only move values: a tensor on the pixel grid stays on it."""


def _constants(proto: Any) -> dict[str, np.ndarray]:
    """Values of the graph's initializers and Constant nodes, by tensor name."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def output_grid_ranges(proto: Any) -> dict[str, float]:
    """Tensor -> the top of its [0, top] range for the tensors the [0, 1] output follows from
    by pixel moves, one clamp to exactly the pixel range and constant scalings, each the only
    user of its input, up to and including the first other op's output (ABPN: the anchor
    Add). Empty unless the chain holds that clamp: without it a float output may leave [0, 1],
    and a range of [0, top] would clip what the float graph does not."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    users: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    consts = _constants(proto)

    def scalar(name: str) -> float | None:
        value = consts.get(name)
        return float(value) if value is not None and value.size == 1 else None

    name, top = proto.graph.output[0].name, 1.0
    ranges: dict[str, float] = {}
    clamped = False
    while True:
        ranges[name] = top
        node = producers.get(name)
        if node is None:
            break
        factor = scalar(node.input[1]) if node.op_type in ("Div", "Mul") else None
        if node.op_type in PIXEL_MOVES:
            source = node.input[0]
        elif factor:  # a constant, non-zero scaling
            source, top = node.input[0], top * factor if node.op_type == "Div" else top / factor
        elif node.op_type == "Clip" and len(node.input) == 3:
            lo, hi = scalar(node.input[1]), scalar(node.input[2])
            if lo is None or hi is None or lo != 0.0 or abs(hi - top) > 1e-6 * top:
                break
            source, clamped = node.input[0], True
        else:
            break
        if users.get(source) != 1:
            break
        name = source
    return ranges if clamped else {}


def quantize_qdq(
    proto: Any, samples: list[np.ndarray], method: str, name: str, input_name: str
) -> Any:
    """Static QDQ quantisation: per-channel int8 weights, int8 activations, float32 IO.

    Activations are int8 (S8S8), not uint8: see the module docstring (saturation on AVX2).
    `input_name` is the graph's image input, which the calibration reader feeds.
    """
    onnx = require_onnx("onnx")
    require_onnx("onnxruntime")
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
            return None if s is None else {input_name: s}

    grid = {
        name: [{"rmin": np.array(0.0, np.float32), "rmax": np.array(top, np.float32)}]
        for name, top in output_grid_ranges(proto).items()
    }
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
                    extra_options={"TensorQuantOverrides": grid},
                )
        except Exception as exc:
            raise OnnxError(f"{name}: INT8 quantisation failed ({first_line(exc)})") from exc
        return onnx.load(str(out))
