"""What the ONNX and TFLite sides share: their errors, the optional packages, the output file.

The runtimes (onnx, onnxruntime, tensorflow, ai-edge-litert) are optional extras: `require_*`
imports one when a function needs it, or fails with one line naming the install command. An
export checks its output folder before the slow work and writes the file atomically after it.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from slimsr.errors import SlimsrError
from slimsr.fileio import atomic_path
from slimsr.quant.graph import QuantError

ONNX_HINT = "pip install slimsr[onnx]"
TFLITE_EXPORT_HINT = "pip install 'slimsr[tflite-export]'"
TFLITE_RUN_HINT = "pip install 'slimsr[tflite]'"


class OnnxError(SlimsrError):
    """An ONNX export, quantisation, file or run that cannot be done as asked."""


class OnnxNotInstalledError(OnnxError, ImportError):
    """The optional `onnx` extra is missing."""


class OnnxVerifyError(OnnxError):
    """The exported graph disagrees with PyTorch beyond the tolerance (nothing is written)."""


class TFLiteError(QuantError):
    """A TFLite export, file or run that cannot be done as asked."""


class TFLiteNotInstalledError(TFLiteError, ImportError):
    """An optional TFLite extra is missing."""


class TFLiteVerifyError(TFLiteError):
    """The converted file disagrees with PyTorch beyond the tolerance (nothing is written)."""


def require_onnx(module: str) -> Any:
    """Import an optional ONNX dependency, or fail with the install command."""
    return _require(module, OnnxNotInstalledError, ONNX_HINT)


def require_tflite(module: str, hint: str = TFLITE_EXPORT_HINT) -> Any:
    """Import an optional TFLite dependency, or fail with the install command (one line)."""
    if module == "tensorflow":
        # Before TF's C++ logging starts: without these, importing it prints four log lines.
        # oneDNN only speeds up TF's own kernels, which exporting barely runs.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    return _require(module, TFLiteNotInstalledError, hint)


def _require(module: str, error: type[Exception], hint: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise error(f"this needs the optional package {module!r}: {hint}") from None


def first_line(exc: BaseException) -> str:
    """A third-party exception in one line (the cause stays chained where it helps)."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def check_writable(path: Path, error: type[Exception]) -> None:
    """Fail before minutes of tracing and verifying, not after, when `path` cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"{path}: cannot write ({exc.strerror or exc})") from None
    if not os.access(path.parent, os.W_OK):
        raise error(f"{path}: cannot write (no permission in {path.parent})")


def write_file(path: Path, data: bytes, error: type[Exception]) -> None:
    """Write `data` atomically (temp file, then rename): a failed write leaves nothing."""
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise error(f"{path}: cannot write ({exc.strerror or exc})") from None
