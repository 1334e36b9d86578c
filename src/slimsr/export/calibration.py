"""INT8 calibration: the representative crops, and how ONNX INT8 is quantised from them.

Calibration data is `calibration_crops`: random crops of images like those the model will
upscale (HR photos shrunk by MATLAB bicubic with `downscale`), shared by ONNX QDQ and TFLite
PTQ (which calibrates its ranges in PyTorch, `slimsr.quant.qat.calibrate`).

ONNX INT8 uses onnxruntime's static QDQ quantisation (per-channel int8 weights, int8
activations: "S8S8") and is offered for plain-conv graphs only. Not uint8 activations ("U8S8"):
on x86 CPUs without VNNI (AVX2 only), onnxruntime runs U8S8 convolutions with VPMADDUBSW, whose
16-bit pair sums saturate, so the same file loses ~1 dB more there than on a VNNI CPU (official
ABPN x3 on Set5: -0.955 vs -0.074 dB). S8S8 gives the same integer results on both.
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
            raise OnnxError(f"{name}: INT8 quantisation failed ({first_line(exc)})") from exc
        return onnx.load(str(out))
