"""Provenance records that read the same on every clone: shared helpers of the ship scripts.

A run records the absolute paths of the machine that made it (`/work/shared/datasets/T91/HR`,
`/work/main/runs/...`). Shipped files keep that provenance but spell it as a fresh clone would:
the shared folder as `../shared`, files inside this repository relative to its root. Paths
elsewhere (a scratch folder the run lived in) are left as they were: they are still the truth.

Run directly, it rewrites already-shipped files in place (atomically; tensors untouched):

    python scripts/shipping.py src/slimsr/weights/**/*.{json,yaml,safetensors} [--shared ../shared]
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

import slimsr
from slimsr.data.folders import DataError, dataset_from_root
from slimsr.evaluate import evaluate_dataset
from slimsr.fileio import atomic_path, atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]


def _spellings(folder: Path) -> list[str]:
    """The absolute forms a run may have recorded: through symlinks and resolved, longest first."""
    return sorted({os.path.abspath(folder), str(folder.resolve())}, key=len, reverse=True)


def portable(text: str, shared: Path, repo_root: Path = REPO_ROOT) -> str:
    """`text` with the shared folder spelled `../shared` and repository paths made relative.

    Only whole path components match: `/work/shared2` is not the shared folder `/work/shared`.
    """
    for spelling in _spellings(shared):
        text = re.sub(re.escape(spelling) + r"(?![\w.-])", "../shared", text)
    for spelling in _spellings(repo_root):
        text = text.replace(f"{spelling}/", "")
    return text


def portable_meta(meta: dict, shared: Path) -> dict:
    return json.loads(portable(json.dumps(meta), shared))


def copy_portable(src: Path, dst: Path, shared: Path) -> None:
    """Copy a text file (JSON, YAML) with its recorded paths made portable."""
    atomic_write_text(dst, portable(src.read_text(), shared))


def copy_portable_weights(src: Path, dst: Path, shared: Path) -> None:
    """Copy a safetensors file with portable metadata; the tensors are copied bit for bit."""
    with safe_open(str(src), framework="pt") as f:
        metadata = {k: portable(v, shared) for k, v in (f.metadata() or {}).items()}
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    with atomic_path(dst) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def measure_y(model: slimsr.SRModel, shared: Path, scale: int) -> dict[str, dict]:
    """Set5 / Set14 / B100 Y-PSNR / SSIM (BasicSR protocol) of a model to ship, bicubic beside.

    Set5 from its own LR files where the scale has them, Set14 and B100 (and Set5 otherwise)
    with LR made by slimsr's MATLAB-exact bicubic; `lr_source` says which. An image that fails
    stops the measurement: a shipped mean is over the whole set or not recorded at all."""
    results = {}
    for name, generate in (("Set5", False), ("Set14", True), ("B100", True)):
        root = shared / "datasets" / name
        res = evaluate_dataset(model, dataset_from_root(root, scale, generate_lr=generate), scale)
        failed = [r for r in res.rows if r not in res.ok_rows]
        if failed or not res.rows:
            raise DataError(f"{name}: {len(failed)} of {len(res.rows)} images failed to evaluate")
        results[name] = {
            "psnr": round(res.mean("psnr"), 4),
            "ssim": round(res.mean("ssim"), 4),
            "bicubic_psnr": round(res.mean("bicubic_psnr"), 4),
            "bicubic_ssim": round(res.mean("bicubic_ssim"), 4),
            "images": len(res.rows),
            "lr_source": portable(res.lr_source, shared),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    args = parser.parse_args()
    for path in args.files:
        if path.suffix == ".safetensors":
            copy_portable_weights(path, path, args.shared)
        else:
            copy_portable(path, path, args.shared)
        print(f"{path}: recorded paths made portable")


if __name__ == "__main__":
    main()
