"""Copy a finished `slimsr compress` run into the package, with its recipe, report and metrics.

    python scripts/ship_compressed.py RUN_DIR --produced-by TEXT [--name NAME]
        [--shared ../shared] [--to DIR]

Takes the run's stage-3 artifact `student.safetensors` (the final EMA weights of the
distillation; never a Set5-selected checkpoint) and writes, under
`src/slimsr/weights/compressed/` (or `--to`), `{name}_x{S}.safetensors` + `.json` (the weights
and their sidecar), `.compress.yaml` (the resolved recipe), `.density.json`, `.report.json` and
`.metrics.json`: Set5, Set14 and B100 Y-PSNR / SSIM under the BasicSR protocol (Set5 from its
MATLAB-made LR files, Set14 and B100 with LR made by slimsr's MATLAB-exact bicubic) next to the
paper's figures. Every file is written atomically, with the paths it records made portable (the shared
folder as `../shared`, files inside this repository relative to its root; see shipping.py).
Buffers that loading rebuilds from the architecture (SwinIR's shifted-window masks and position
indices) are left out of the shipped weights, after checking that the slim file reloads to
exactly the same state.

`{name}` is the student's registered name (edsrmini, swinirmini) unless `--name` says
otherwise: a compact model of the original's own family (BSRN sized down to BSRNmini) is
registered under the original's name with smaller kwargs, and ships as `--name bsrnmini`.
Bad input (an unfinished run or one missing its records, a name that is not a plain file stem
or is another registered model's, an image that fails) is one line on stderr and exit 2;
everything is measured before anything is written.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import tempfile
from pathlib import Path

import torch
from shipping import REPO_ROOT, copy_portable, measure_y, portable_meta

import slimsr
from campaign import fail
from slimsr.errors import SlimsrError
from slimsr.fileio import atomic_write_text
from slimsr.weight_files import read_checkpoint, save_weights

COMPRESSED = REPO_ROOT / "src" / "slimsr" / "weights" / "compressed"

PAPER = {
    # Jiang et al. 2024, Table I (DIV2K, x2): Y-PSNR / SSIM.
    "edsrmini": {"Set5": [37.67, 0.9597], "Set14": [33.21, 0.9141]},
    "swinirmini": {"Set5": [37.88, 0.9601], "Set14": [33.60, 0.9187]},
}


RECORDS = ("compress.yaml", "density.json", "report.json")
"""The run's records shipped beside the weights: its resolved recipe, measured density, report."""

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


def ship(run: Path, dest: Path, shared: Path, produced_by: str, name: str | None = None) -> Path:
    """Ship `run`'s distilled student into `dest` as `{name}_x{S}.*`; the metrics file written."""
    student = run / "student.safetensors"
    if not student.is_file():
        raise SlimsrError(f"{student} does not exist: the run has not finished stage 3")
    missing = [s for s in RECORDS if not (run / s).is_file()]
    if missing:
        raise SlimsrError(f"{run} lacks {', '.join(missing)}: not a whole compress run")
    if name is not None and not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise SlimsrError(f"--name {name!r} is not a plain lower-case file stem")
    if name is not None and re.search(r"_x\d+$", name):
        raise SlimsrError(f"--name {name!r} ends in a scale: the _x<scale> suffix is added")
    model = slimsr.load(student)
    if name is not None and name != model.name and name in slimsr.list_models():
        # shipping under another registered model's name would overwrite that model's files
        raise SlimsrError(
            f"--name {name!r} is another registered model; the student is {model.name}"
        )
    stem = f"{name or model.name}_x{model.scale}"
    meta = portable_meta(read_checkpoint(student).meta or {}, shared)
    metrics = {
        "model": model.name,
        "shipped_as": stem,
        "kwargs": model.kwargs,
        "scale": model.scale,
        "params": model.num_parameters(),
        "produced_by": produced_by,
        "protocol": "basicsr (Y of BT.601, border = scale, SR as uint8); LR by MATLAB-exact bicubic",
        "results": measure_y(model, shared, model.scale),
    }
    # Table I is x2 only and has no BSRNmini: other models get no entry, not an empty one.
    paper = PAPER.get(name or model.name) if model.scale == 2 else None
    if paper:
        metrics["paper (Jiang et al. 2024, Table I)"] = paper
    # everything measured: only now is anything written, so a failure leaves no half-ship
    dest.mkdir(parents=True, exist_ok=True)
    write_slim_weights(model, meta, dest / f"{stem}.safetensors")
    for suffix in RECORDS:
        copy_portable(run / suffix, dest / f"{stem}.{suffix}", shared)
    path = dest / f"{stem}.metrics.json"
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--produced-by", required=True, help="how the weights were made")
    parser.add_argument("--name", default=None, help="file stem (default: the student's name)")
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--to", type=Path, default=COMPRESSED)
    args = parser.parse_args()
    try:
        path = ship(args.run_dir, args.to, args.shared, args.produced_by, args.name)
    except (SlimsrError, OSError) as exc:  # bad input: one line, exit 2, nothing written
        fail(str(exc))
    print(json.dumps(json.loads(path.read_text())["results"], indent=2))


if __name__ == "__main__":
    main()
