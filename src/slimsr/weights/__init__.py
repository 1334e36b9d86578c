"""Weights shipped inside the package (trained by slimsr's own `slimsr train`).

Each `default_x{s}.safetensors` has a JSON sidecar with its architecture, training config and
metrics, so `slimsr upscale` works offline right after installation.
"""

from __future__ import annotations

from pathlib import Path

from slimsr.errors import SlimsrError
from slimsr.factory import load
from slimsr.model import SRModel

BUNDLED_DIR = Path(__file__).resolve().parent


def bundled_path(scale: int) -> Path:
    return BUNDLED_DIR / f"default_x{scale}.safetensors"


def bundled_scales() -> list[int]:
    return sorted(int(p.stem.split("_x")[-1]) for p in BUNDLED_DIR.glob("default_x*.safetensors"))


def default_model(scale: int | None = None) -> SRModel:
    """The bundled model for `scale` (default: x4 if bundled, else the first bundled scale).

    A scale that is not bundled is a clear error naming the scales that are.
    """
    if scale is None:
        have = bundled_scales()
        scale = 4 if 4 in have or not have else have[0]
    path = bundled_path(scale)
    if not path.is_file():
        have = ", ".join(f"x{s}" for s in bundled_scales()) or "none"
        raise SlimsrError(f"no bundled model for x{scale} (bundled: {have}); pass --weights")
    return load(path)
