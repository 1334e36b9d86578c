"""`slimsr export`: deployable files (ONNX fp32/fp16/INT8 QDQ, TFLite float/full-integer INT8),
verified against PyTorch before they are written, and the runners that run them.

One module per job: `onnx` and `tflite` build the files, `verify` runs a built file against the
PyTorch model and refuses one that disagrees, `calibration` holds the INT8 calibration data and
settings, `runners` runs .onnx / .tflite files like an `SRModel`, `common` holds their errors
and optional imports. The training side of INT8 (QAT, the plain-op graph) is `slimsr.quant`.

The heavy runtimes (onnx, onnxruntime, tensorflow, ai-edge-litert) are optional extras,
imported only when a function needs them, so `import slimsr.export` stays as light as
`import slimsr`.
"""

from __future__ import annotations

from slimsr.export.calibration import calibration_crops
from slimsr.export.common import OnnxError, TFLiteError
from slimsr.export.onnx import OnnxExport, export_onnx
from slimsr.export.runners import (
    OnnxUpscaler,
    Runner,
    TFLiteUpscaler,
    is_onnx_path,
    is_runtime_path,
    is_tflite_path,
    load_runner,
)
from slimsr.export.tflite import TFLiteExport, export_tflite

__all__ = [
    "OnnxError",
    "OnnxExport",
    "OnnxUpscaler",
    "Runner",
    "TFLiteError",
    "TFLiteExport",
    "TFLiteUpscaler",
    "calibration_crops",
    "export_onnx",
    "export_tflite",
    "is_onnx_path",
    "is_runtime_path",
    "is_tflite_path",
    "load_runner",
]
