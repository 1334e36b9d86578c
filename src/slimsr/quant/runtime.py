"""Running deployment files (.onnx, .tflite) behind one call, for `slimsr eval` and `upscale`.

Both runners are callables `(N,3,h,w) float in [0,1] -> (N,3,h*s,w*s)` with `.scale`, `.name`,
`check_dtype`, `to` and `eval`, so the commands treat them like an `SRModel`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from slimsr.quant.onnx import OnnxUpscaler
    from slimsr.quant.tflite import TFLiteUpscaler

Runner = Union["OnnxUpscaler", "TFLiteUpscaler"]
RUNTIME_SUFFIXES = (".onnx", ".tflite")


def is_runtime_path(path: str | Path | None) -> bool:
    """True for files that a runtime runs (ONNX Runtime, LiteRT) rather than PyTorch."""
    return path is not None and Path(path).suffix.lower() in RUNTIME_SUFFIXES


def load_runner(
    path: str | Path,
    scale: int | None = None,
    arch: str | None = None,
    *,
    tflite_io: str = "auto",
    threads: int | None = None,
) -> Runner:
    """The runner for a deployment file, chosen by its suffix.

    `tflite_io` ("auto", "uint8", "float") makes a .tflite file of the other kind an error;
    the runtimes are optional extras, and a missing one is a one-line error naming the install.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        from slimsr.quant.onnx import OnnxUpscaler

        return OnnxUpscaler(path, scale, arch=arch, threads=threads)
    if suffix == ".tflite":
        from slimsr.quant.tflite import TFLiteUpscaler

        return TFLiteUpscaler(path, scale, arch=arch, threads=threads, io=tflite_io)
    from slimsr.quant.graph import QuantError

    raise QuantError(f"{path}: not a deployment file ({', '.join(RUNTIME_SUFFIXES)})")
