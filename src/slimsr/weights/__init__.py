"""Weights shipped inside the package (trained by slimsr's own `slimsr train`).

Each `default_x{s}.safetensors` has a JSON sidecar with its architecture, training config and
metrics, so `slimsr upscale` works offline right after installation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from slimsr.errors import SlimsrError
from slimsr.factory import load
from slimsr.fileio import file_sha256
from slimsr.model import SRModel

BUNDLED_DIR = Path(__file__).resolve().parent


def bundled_path(scale: int) -> Path:
    return BUNDLED_DIR / f"default_x{scale}.safetensors"


def bundled_scales() -> list[int]:
    return sorted(int(p.stem.split("_x")[-1]) for p in BUNDLED_DIR.glob("default_x*.safetensors"))


def default_scale() -> int:
    """x4 if bundled, else the first bundled scale."""
    have = bundled_scales()
    return 4 if 4 in have or not have else have[0]


def default_model(scale: int | None = None) -> SRModel:
    """The bundled model for `scale` (default: `default_scale()`).

    A scale that is not bundled is a clear error naming the scales that are.
    """
    if scale is None:
        scale = default_scale()
    path = bundled_path(scale)
    if not path.is_file():
        have = ", ".join(f"x{s}" for s in bundled_scales()) or "none"
        raise SlimsrError(f"no bundled model for x{scale} (bundled: {have}); pass --weights")
    return load(path)


SHIPPED = {
    ("abpn", 3): "abpn/abpn_x3.safetensors",
    ("fmen_s", 4): "trained/fmen_s_x4.safetensors",
}
"""Models shipped beside the defaults that `-m NAME` (with their scale) names without
--weights: paths under `BUNDLED_DIR`."""

INT8_FILES = {"abpn/abpn_x3.safetensors": ("abpn/abpn_x3_int8_qat.tflite", "INT8 TFLite, QAT")}
"""Shipped float weights -> (their INT8 file, its label in the float file's `.metrics.json`)."""

INT8_MAX_LOSS_DB = 0.1
"""An INT8 file is offered (`upscale --int8`) only when its recorded Set5 PSNR is within this
of the float model's: beyond it the speed is paid for with visible quality."""


def shipped_path(name: str, scale: int | None) -> Path | None:
    """The shipped weights `-m name [-s scale]` names, or None (then --weights is needed)."""
    from slimsr.registry import get_model_info

    canonical = get_model_info(name).name
    matches = [p for (n, s), p in SHIPPED.items() if n == canonical and scale in (None, s)]
    return BUNDLED_DIR / matches[0] if len(matches) == 1 else None


@dataclass(frozen=True)
class Int8File:
    """A shipped INT8 file and its recorded quality against its float model (RGB Set5)."""

    path: Path
    float_psnr: float
    int8_psnr: float

    @property
    def loss_db(self) -> float:
        return self.float_psnr - self.int8_psnr


def int8_file(weights: Path) -> Int8File | None:
    """The INT8 file of known quality for the float `weights` (a shipped file or a byte-equal
    copy of one), or None. Quality is read from the float file's `.metrics.json`."""
    weights = Path(weights)
    if not weights.is_file():
        return None
    for float_rel, (int8_rel, label) in INT8_FILES.items():
        shipped = BUNDLED_DIR / float_rel
        if weights.resolve() != shipped.resolve() and not _same_bytes(weights, shipped):
            continue
        metrics = json.loads(shipped.with_suffix(".metrics.json").read_text())["results"]
        return Int8File(
            BUNDLED_DIR / int8_rel,
            float(metrics["float (PyTorch)"]["Set5"]["psnr"]),
            float(metrics[label]["Set5"]["psnr"]),
        )
    return None


def _same_bytes(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and file_sha256(a) == file_sha256(b)
