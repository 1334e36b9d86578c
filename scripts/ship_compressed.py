"""Copy a finished `slimsr compress` run into the package, with its recipe, report and metrics.

    python scripts/ship_compressed.py RUN_DIR --produced-by TEXT [--shared ../shared]

Takes the run's stage-3 artifact `student.safetensors` (the final EMA weights of the
distillation; never a Set5-selected checkpoint) and writes, under
`src/slimsr/weights/compressed/`, `{model}_x{S}.safetensors` + `.json` (the weights and their
sidecar), `.compress.yaml` (the resolved recipe), `.density.json`, `.report.json` and
`.metrics.json`: Set5, Set14 and B100 Y-PSNR / SSIM under the BasicSR protocol (Set5 from its
MATLAB-made LR files, Set14 and B100 with LR made by slimsr's MATLAB-exact bicubic) next to the
paper's figures. Every file is written atomically, with the paths it records made portable (the shared
folder as `../shared`, files inside this repository relative to its root; see shipping.py).
Buffers that loading rebuilds from the architecture (SwinIR's shifted-window masks and position
indices) are left out of the shipped weights, after checking that the slim file reloads to
exactly the same state.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
from pathlib import Path

import torch
from shipping import REPO_ROOT, copy_portable, measure_y, portable_meta

import slimsr
from slimsr.fileio import atomic_write_text
from slimsr.weight_files import read_checkpoint, save_weights

COMPRESSED = REPO_ROOT / "src" / "slimsr" / "weights" / "compressed"

PAPER = {
    # Jiang et al. 2024, Table I (DIV2K, x2): Y-PSNR / SSIM.
    "edsrmini": {"Set5": [37.67, 0.9597], "Set14": [33.21, 0.9141]},
    "swinirmini": {"Set5": [37.88, 0.9601], "Set14": [33.60, 0.9187]},
}


_DESCRIPTION_KEYS = {
    "format",
    "version",
    "arch",
    "family",
    "scale",
    "kwargs",
    "input_range",
    "params",
}


def rebuildable_buffers(model: slimsr.SRModel) -> list[str]:
    """Buffers that `slimsr.load` regenerates exactly when they are missing from the file."""
    params = {name for name, _ in model.net.named_parameters()}
    stats = ("running_mean", "running_var", "num_batches_tracked")
    return [key for key in model.net.state_dict() if key not in params and not key.endswith(stats)]


def write_slim_weights(model: slimsr.SRModel, meta: dict, dst: Path) -> None:
    """Write the weights without rebuildable buffers, or whole if a reload would differ."""
    extra = {k: v for k, v in meta.items() if k not in _DESCRIPTION_KEYS}
    full = model.net.state_dict()
    exclude = rebuildable_buffers(model)
    write = functools.partial(
        save_weights,
        model.net,
        arch=model.name,
        scale=model.scale,
        kwargs=model.kwargs,
        extra=extra,
    )
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / dst.name
        write(trial, exclude=exclude)
        reloaded = slimsr.load(trial).net.state_dict()
    same = reloaded.keys() == full.keys() and all(torch.equal(reloaded[k], full[k]) for k in full)
    write(dst, exclude=exclude if same else ())
    print(f"{dst.name}: {len(exclude) if same else 0} rebuildable buffers left out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--produced-by", required=True, help="how the weights were made")
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    args = parser.parse_args()
    run = args.run_dir
    student = run / "student.safetensors"
    if not student.is_file():
        raise SystemExit(f"{student} does not exist: the run has not finished stage 3")
    model = slimsr.load(student)
    stem = f"{model.name}_x{model.scale}"
    COMPRESSED.mkdir(parents=True, exist_ok=True)
    meta = portable_meta(read_checkpoint(student).meta or {}, args.shared)
    write_slim_weights(model, meta, COMPRESSED / f"{stem}.safetensors")
    for suffix in ("compress.yaml", "density.json", "report.json"):
        copy_portable(run / suffix, COMPRESSED / f"{stem}.{suffix}", args.shared)
    metrics = {
        "model": model.name,
        "scale": model.scale,
        "params": model.num_parameters(),
        "produced_by": args.produced_by,
        "protocol": "basicsr (Y of BT.601, border = scale, SR as uint8); LR by MATLAB-exact bicubic",
        "results": measure_y(model, args.shared, model.scale),
        # Table I is x2 only: other scales have no published figure to stand beside.
        "paper (Jiang et al. 2024, Table I)": PAPER.get(model.name, {}) if model.scale == 2 else {},
    }
    atomic_write_text(COMPRESSED / f"{stem}.metrics.json", json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics["results"], indent=2))


if __name__ == "__main__":
    main()
