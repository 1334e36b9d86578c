"""Running an exported file against the PyTorch model, and refusing to write one that disagrees.

Both exports build the file in memory, run it here at two sizes (batch 1, then 2 for ONNX; a
size baked into a graph cannot go unnoticed) and write it only when every check passes:

| file | passes when |
|---|---|
| ONNX fp32, TFLite float | max abs error <= 1e-4 on [0,1] outputs (measured 1e-7..3e-6) |
| ONNX fp16 | max abs error <= 1e-2 (2.5 uint8 levels) |
| ONNX INT8 | PSNR vs PyTorch float >= 30 dB, on calibration crops |
| TFLite INT8 | >= 99% of pixels within 1 uint8 level of the fake-quant model, >= 30 dB vs float |

The test inputs are image-like (`smooth_test_images`), not uniform noise; see docs/export.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from slimsr.export.common import OnnxVerifyError, TFLiteVerifyError
from slimsr.export.runners import TFLiteUpscaler, onnx_session, run_onnx
from slimsr.model import SRModel

VERIFY_SIZES: tuple[tuple[int, int], ...] = ((24, 20), (37, 41))
"""H x W of the verify runs: odd sizes, neither a multiple of 8 (SwinIR's window) nor of 2."""
FP32_TOLERANCE = 1e-4
"""Float files (ONNX fp32, TFLite float): max abs error on [0,1] outputs (measured ~1e-6)."""
FP16_TOLERANCE = 1e-2
"""Max abs error on [0,1] outputs for fp16: 2.5 uint8 levels. Measured 1.5e-4..1.6e-3 on CPU,
where onnxruntime may run fp16 nodes through float32 casts (see docs/export.md)."""
INT8_MIN_PSNR = 30.0
"""INT8 verify: PSNR (dB, [0,1] outputs) of the quantised file against PyTorch float, on
calibration crops. ABPN scores ~47 dB, FMEN-S ~37 dB; a broken quantisation far below 30."""
INT8_LEVELS = 1
INT8_SHARE = 0.99
"""INT8 TFLite files: at least 99% of output pixels within 1 uint8 level of the PyTorch
fake-quant model (integer kernels round a few intermediate values differently; measured on Set5
with the official ABPN: 99.81% identical, 99.98% within 1 level, at most 3), and PSNR against
float PyTorch of at least `INT8_MIN_PSNR`."""


@dataclass
class VerifyResult:
    """One runtime-vs-PyTorch comparison."""

    shape: tuple[int, ...]
    max_abs_error: float
    psnr: float
    ok: bool

    def describe(self) -> str:
        size = "x".join(str(s) for s in self.shape)
        return f"{size}: max |diff| {self.max_abs_error:.1e}, {self.psnr:.1f} dB"


def smooth_test_images(shape: Sequence[int], gen: torch.Generator) -> Tensor:
    """Image-like test inputs in [0,1]: random colours at 1/4 resolution, bilinear-upsampled,
    plus mild Gaussian texture.

    Not uniform noise: trained SR networks amplify it into outputs far outside [0,1] (official
    BSRN x2: +-145), where float32 rounding alone moves outputs by 0.3 and no tolerance on
    [0,1] outputs means anything. On these inputs PyTorch and onnxruntime agree to ~1e-6.
    """
    n, c, h, w = shape
    base = torch.rand(n, c, h // 4 + 2, w // 4 + 2, generator=gen)
    x = F.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    return (x + 0.05 * torch.randn(n, c, h, w, generator=gen)).clamp(0, 1)


def verify_shapes(sizes: Sequence[tuple[int, int]], info: Any) -> list[tuple[int, ...]]:
    """Batch 1 for the first size, 2 for the others (the batch axis is dynamic too)."""
    shapes = []
    for i, (h, w) in enumerate(sizes):
        shapes.append((1 if i == 0 else 2, 3, max(h, info.min_size), max(w, info.min_size)))
    return shapes


def verify_onnx(
    data: bytes,
    reference: SRModel,
    precision: str,
    shapes: list[tuple[int, ...]],
    samples: list[np.ndarray],
    name: str,
) -> tuple[list[VerifyResult], str]:
    """Run the serialised graph with onnxruntime at `shapes` and compare with `reference`.

    `name` is the exported architecture (the deploy form for re-parameterised models). Returns
    the checks and the criterion in words; raises `OnnxVerifyError` (so nothing is written)
    when a check fails.
    """
    session = onnx_session(data, "the exported graph")
    gen = torch.Generator().manual_seed(0)
    results = []
    for shape in shapes:
        # INT8 ranges were calibrated on the samples: test on images like them.
        x = _crops_at(samples, shape) if precision == "int8" else smooth_test_images(shape, gen)
        with torch.no_grad():
            expected = reference.raw(x).numpy()  # the graph holds `raw` (no border, no clamp)
        got = run_onnx(session, x.numpy(), "the exported graph")
        if got.shape != expected.shape:
            raise OnnxVerifyError(
                f"{reference.name}: onnxruntime returned {list(got.shape)} for input "
                f"{list(shape)}, PyTorch {list(expected.shape)} (a size baked into the graph)"
            )
        diff = np.abs(got.astype(np.float64) - expected)
        err = float(diff.max())
        psnr = _psnr(diff)
        if precision == "int8":
            ok = psnr >= INT8_MIN_PSNR
        else:
            ok = err <= (FP32_TOLERANCE if precision == "fp32" else FP16_TOLERANCE)
        results.append(VerifyResult(tuple(shape), err, psnr, bool(ok and np.isfinite(got).all())))
    limits = {
        "fp32": f"max |diff| <= {FP32_TOLERANCE:.0e}",
        "fp16": f"max |diff| <= {FP16_TOLERANCE:.0e}",
        "int8": f"PSNR >= {INT8_MIN_PSNR:g} dB",
    }
    _refuse_if_any_fails(results, limits[precision], f"{name}: onnxruntime", OnnxVerifyError)
    return results, limits[precision]


def verify_tflite(
    data: bytes,
    reference: SRModel,
    simulated: SRModel | None,
    sizes: Sequence[tuple[int, int]],
    samples: list[Any],
) -> tuple[list[VerifyResult], str]:
    """Run the converted file with LiteRT at `sizes` and compare with PyTorch: float files with
    `reference`, INT8 files with `simulated` (its fake-quant twin) and with float `reference`.

    Returns the checks and the criterion in words; raises `TFLiteVerifyError` (so nothing is
    written) when a check fails.
    """
    runner = TFLiteUpscaler.from_bytes(data, "the converted file")
    gen = torch.Generator().manual_seed(0)
    results = []
    for h, w in sizes:
        x = _sample_at(samples, h, w, gen)
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
        psnr = _psnr(diff)
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
        limit = f"max |diff| <= {FP32_TOLERANCE:.0e}"
    else:
        limit = (
            f">= {INT8_SHARE:.0%} of pixels within {INT8_LEVELS} uint8 levels of the PyTorch "
            f"fake-quant model, PSNR vs float >= {INT8_MIN_PSNR:g} dB"
        )
    _refuse_if_any_fails(results, limit, f"{reference.name}: the TFLite file", TFLiteVerifyError)
    return results, limit


def _psnr(diff: np.ndarray | Tensor) -> float:
    """PSNR (dB) of an absolute difference on [0,1] outputs; inf where they are equal."""
    mse = float((diff * diff).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _refuse_if_any_fails(
    checks: list[VerifyResult], limit: str, subject: str, error: type[Exception]
) -> None:
    bad = [c for c in checks if not c.ok]
    if bad:
        raise error(
            f"{subject} disagrees with PyTorch at "
            f"{'; '.join(c.describe() for c in bad)} (limit {limit}); nothing written"
        )


def _crops_at(samples: list[np.ndarray], shape: tuple[int, ...]) -> Tensor:
    """`shape[0]` calibration samples cut (or tiled) to shape's H x W."""
    n, _, h, w = shape
    return torch.cat([_tiled(torch.from_numpy(samples[i % len(samples)]), h, w) for i in range(n)])


def _sample_at(samples: list[Any], h: int, w: int, gen: torch.Generator) -> Tensor:
    """A random calibration sample cut (or tiled) to h x w; smooth test images without any."""
    if not samples:
        return smooth_test_images((1, 3, h, w), gen)
    s = torch.as_tensor(np.asarray(samples[int(torch.randint(len(samples), (1,), generator=gen))]))
    return _tiled(s if s.ndim == 4 else s[None], h, w)


def _tiled(s: Tensor, h: int, w: int) -> Tensor:
    """(1,3,h',w') repeated to cover h x w, then cut to it; float32."""
    reps = (1, 1, math.ceil(h / s.shape[-2]), math.ceil(w / s.shape[-1]))
    return s.float().repeat(*reps)[..., :h, :w]
