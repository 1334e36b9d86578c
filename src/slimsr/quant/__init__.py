"""Deployment formats: ONNX export (fp32, fp16, INT8 QDQ) and running exported files.

The heavy runtimes (onnx, onnxruntime) are optional extras, imported only when a function needs
them, so `import slimsr.quant` stays as light as `import slimsr`.
"""

from __future__ import annotations

from slimsr.quant.onnx import (
    OnnxError,
    OnnxExport,
    OnnxUpscaler,
    calibration_crops,
    export_onnx,
    is_onnx_path,
)

__all__ = [
    "OnnxError",
    "OnnxExport",
    "OnnxUpscaler",
    "calibration_crops",
    "export_onnx",
    "is_onnx_path",
]
