"""Deployment formats: ONNX (fp32, fp16, INT8 QDQ), TFLite (float, full-integer INT8 with uint8
IO), quantisation-aware training, and running exported files.

The heavy runtimes (onnx, onnxruntime, tensorflow, ai-edge-litert) are optional extras,
imported only when a function needs them, so `import slimsr.quant` stays as light as
`import slimsr`.
"""

from __future__ import annotations

from slimsr.quant.graph import QuantError, UnsupportedOpError, plain_graph
from slimsr.quant.onnx import (
    OnnxError,
    OnnxExport,
    OnnxUpscaler,
    calibration_crops,
    export_onnx,
    is_onnx_path,
)
from slimsr.quant.qat import QATNet, calibrate, prepare_qat
from slimsr.quant.runtime import is_runtime_path, load_runner
from slimsr.quant.tflite import (
    TFLiteError,
    TFLiteExport,
    TFLiteUpscaler,
    export_tflite,
    is_tflite_path,
)

__all__ = [
    "OnnxError",
    "OnnxExport",
    "OnnxUpscaler",
    "QATNet",
    "QuantError",
    "TFLiteError",
    "TFLiteExport",
    "TFLiteUpscaler",
    "UnsupportedOpError",
    "calibrate",
    "calibration_crops",
    "export_onnx",
    "export_tflite",
    "is_onnx_path",
    "is_runtime_path",
    "is_tflite_path",
    "load_runner",
    "plain_graph",
    "prepare_qat",
]
