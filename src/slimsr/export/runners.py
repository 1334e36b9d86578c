"""Running exported files (.onnx by ONNX Runtime, .tflite by LiteRT) like an `SRModel`.

Both runners are callables `(N,3,h,w) float in [0,1] -> (N,3,h*s,w*s)` with `.scale`, `.name`,
`check_dtype`, `to` and `eval` (the shared `Runner` base), so `slimsr eval`, `upscale` and
`info` treat them like an `SRModel`; `load_runner` picks one by the file's suffix. The runtimes
are optional extras, imported when a file is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from slimsr.errors import UnsupportedDtypeError
from slimsr.export.common import (
    TFLITE_RUN_HINT,
    OnnxError,
    TFLiteError,
    first_line,
    require_onnx,
    require_tflite,
)
from slimsr.quant.graph import QuantError

RUNTIME_SUFFIXES = (".onnx", ".tflite")
META = "slimsr."
"""Prefix of our keys in the ONNX `metadata_props` (written by `export.onnx`, read here)."""
IO_CHOICES = ("auto", "uint8", "float")


def is_runtime_path(path: str | Path | None) -> bool:
    """True for files that a runtime runs (ONNX Runtime, LiteRT) rather than PyTorch."""
    return path is not None and Path(path).suffix.lower() in RUNTIME_SUFFIXES


def is_onnx_path(path: str | Path | None) -> bool:
    return path is not None and Path(path).suffix.lower() == ".onnx"


def is_tflite_path(path: str | Path | None) -> bool:
    return path is not None and Path(path).suffix.lower() == ".tflite"


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
        return OnnxUpscaler(path, scale, arch=arch, threads=threads)
    if suffix == ".tflite":
        return TFLiteUpscaler(path, scale, arch=arch, threads=threads, io=tflite_io)
    raise QuantError(f"{path}: not a deployment file ({', '.join(RUNTIME_SUFFIXES)})")


class Runner:
    """The part of the `SRModel` interface that eval/upscale use, for a file a runtime runs.

    Subclasses open the file, set `scale` and implement `_run` on numpy arrays; the file runs
    in the precision it was exported in, on the runtime's device.
    """

    scale: int
    engine: str = ""
    """The runtime that runs the file ("onnxruntime", "tflite"), as `slimsr.engines` names it."""
    bytes_per_pixel: float | None = None
    """Working memory per LR pixel, where known (`slimsr.engines` measures the PyTorch model it
    exported); None: `upscale.RUNNER_BYTES_PER_PIXEL`, as a file cannot be probed."""

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def _short_name(self) -> str:
        """How a wrong-precision error names the file."""
        return self.name

    def _run(self, x: np.ndarray) -> np.ndarray:
        """(N,3,h,w) float32 in [0,1] -> (N,3,h*s,w*s) float32, contiguous."""
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        """The file's graph as is: zero padding at the image edge, unclamped."""
        out = self._run(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(out).to(x.device)

    def check_dtype(self, dtype: torch.dtype) -> None:
        if dtype != torch.float32:
            raise UnsupportedDtypeError(
                f"{self._short_name} runs in the precision it was exported in; drop --fp16/--bf16"
            )

    def to(self, *args: Any, **kwargs: Any) -> Runner:
        """Accepts float32 only; the device is the runtime's (onnxruntime: CUDA if installed,
        else CPU; LiteRT: the CPU whatever the device)."""
        dtype = kwargs.get("dtype") or next((a for a in args if isinstance(a, torch.dtype)), None)
        if dtype is not None:
            self.check_dtype(dtype)
        return self

    def eval(self) -> Runner:
        return self


# -- ONNX Runtime --------------------------------------------------------------------------------


def onnx_session(
    model: bytes | str,
    what: str,
    threads: int | None = None,
    providers: tuple[str, ...] | None = None,
) -> Any:
    """An onnxruntime session on `providers` (those installed of them), by default CUDA if the
    installed build has it, else CPU."""
    ort = require_onnx("onnxruntime")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors reach the user through our exception, once
    if threads:
        opts.intra_op_num_threads = threads
    wanted = providers or ("CUDAExecutionProvider", "CPUExecutionProvider")
    installed = ort.get_available_providers()
    try:
        return ort.InferenceSession(model, opts, providers=[p for p in wanted if p in installed])
    except Exception as exc:  # InvalidProtobuf, InvalidGraph, NoSuchFile, Fail, ...
        raise OnnxError(f"{what}: not a readable ONNX model ({first_line(exc)})") from None


def run_onnx(session: Any, x: np.ndarray, what: str) -> np.ndarray:
    """One run of the session's graph on `x` (cast to fp16 for fp16-input graphs)."""
    inp = session.get_inputs()[0]
    if inp.type == "tensor(float16)":
        x = x.astype(np.float16)
    try:
        out = session.run(None, {inp.name: x})[0]
    except Exception as exc:
        raise OnnxError(
            f"{what}: onnxruntime failed on a {'x'.join(map(str, x.shape))} input "
            f"({first_line(exc)})"
        ) from None
    return np.asarray(out, dtype=np.float32)


class OnnxUpscaler(Runner):
    """An .onnx file run by onnxruntime, callable like an `SRModel`.

    (N,3,h,w) float in [0,1] -> (N,3,h*s,w*s) float32. `scale` comes from slimsr's metadata,
    from the caller, or, for foreign files, from one probe run. `arch`, when given, must match
    the metadata. Precision is the file's: only float32 inputs are accepted by `check_dtype`.
    """

    engine = "onnxruntime"

    def __init__(
        self,
        path: str | Path | None,
        scale: int | None = None,
        *,
        arch: str | None = None,
        threads: int | None = None,
        providers: tuple[str, ...] | None = None,
        _content: bytes | None = None,
        _what: str = "",
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.what = _what or str(self.path)
        if _content is None:
            assert self.path is not None
            if not self.path.is_file():
                raise OnnxError(f"ONNX file not found: {self.path}")
        self.session = onnx_session(
            _content if _content is not None else str(self.path), self.what, threads, providers
        )
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1 or len(inputs[0].shape) != 4:
            raise OnnxError(f"{self.what}: expected one NCHW image input and an image output")
        if inputs[0].type not in ("tensor(float)", "tensor(float16)"):
            raise OnnxError(
                f"{self.what}: its input is {inputs[0].type}; slimsr runs models that take "
                "float RGB in [0,1], NCHW"
            )
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.arch = self.metadata.get(META + "arch")
        if arch is not None and self.arch is not None:
            from slimsr.registry import get_model_info

            if get_model_info(arch).name != self.arch:
                raise OnnxError(f"{self.what} holds {self.arch}, not {arch}")
        self.scale = self._resolve_scale(scale)

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "the model", **kwargs: Any) -> OnnxUpscaler:
        """A graph held in memory (`export.onnx.onnx_model_bytes`), no file written."""
        return cls(None, _content=data, _what=what, **kwargs)

    @property
    def name(self) -> str:
        return self.arch or (self.path.stem if self.path is not None else "onnx")

    @property
    def _short_name(self) -> str:
        return self.path.name if self.path is not None else self.what

    def _resolve_scale(self, scale: int | None) -> int:
        stored = self.metadata.get(META + "scale")
        if stored is not None:
            if scale is not None and int(scale) != int(stored):
                raise OnnxError(f"{self.what} is a x{stored} model, not x{scale}")
            return int(stored)
        if scale is not None:
            return int(scale)
        shape = self.session.get_inputs()[0].shape
        h, w = (d if isinstance(d, int) and d > 0 else 32 for d in shape[2:])
        out = run_onnx(self.session, np.zeros((1, 3, h, w), np.float32), self.what)
        s = out.shape[2] // h if out.ndim == 4 else 0
        if s < 1 or tuple(out.shape[2:]) != (s * h, s * w):
            raise OnnxError(f"{self.what}: cannot tell its scale from a probe run; pass --scale")
        return s

    def _run(self, x: np.ndarray) -> np.ndarray:
        return run_onnx(self.session, x, self.what)

    def __repr__(self) -> str:
        return f"OnnxUpscaler({self.what!r}, arch={self.arch}, scale={self.scale})"


# -- LiteRT ------------------------------------------------------------------------------------


def tflite_interpreter(model: bytes | str | Path, what: str, threads: int | None = None) -> Any:
    """A LiteRT interpreter for a .tflite file or its bytes (XNNPACK delegate by default)."""
    litert = require_tflite("ai_edge_litert.interpreter", TFLITE_RUN_HINT)
    kwargs: dict[str, Any] = {"num_threads": threads} if threads else {}
    try:
        if isinstance(model, bytes):
            return litert.Interpreter(model_content=model, **kwargs)
        return litert.Interpreter(model_path=str(model), **kwargs)
    except Exception as exc:  # ValueError / RuntimeError from the flatbuffer reader
        raise TFLiteError(f"{what}: not a readable TFLite model ({first_line(exc)})") from None


class TFLiteUpscaler(Runner):
    """A .tflite file run by LiteRT's interpreter, callable like an `SRModel`.

    (N,3,h,w) float in [0,1] -> (N,3,h*s,w*s) float32 in [0,1]. Files take NHWC RGB pixel
    values: uint8/int8 inputs are quantised with the file's (scale, zero point), which for
    slimsr's and the official ABPN files is (1.0, 0), i.e. raw pixels; float32 inputs get
    values in 0..255. The input is resized to each image (batch items run one by one).
    `io="uint8"` or `"float"` refuses a file of the other kind; `scale` is checked against
    (or found by) one probe run.
    """

    engine = "tflite"

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
        self.interpreter = tflite_interpreter(
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
                    f"{self.what}: cannot run a {shape[1]}x{shape[2]} input ({first_line(exc)})"
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
                f"({first_line(exc)})"
            ) from None
        out = out.astype(np.float32)
        if self.output_dtype.kind in "ui":
            s, z = self._out["quantization"]
            if s:
                out = (out - z) * s
        return out

    def _run(self, x: np.ndarray) -> np.ndarray:
        outs = [self._run_hwc(img.transpose(1, 2, 0) * 255.0) for img in x]
        y = np.stack([o.transpose(2, 0, 1) for o in outs]) / 255.0
        return np.ascontiguousarray(y, dtype=np.float32)

    def __repr__(self) -> str:
        return f"TFLiteUpscaler({self.what!r}, {self.precision}, scale={self.scale})"
