"""Copy a finished `slimsr train` or `slimsr compress` run into the package as a bundled default.

    python scripts/bundle_weights.py RUN_DIR --scale S [--shared ../shared] [--note TEXT]

Takes a train run's `weights/final.safetensors` and its `config.yaml`, or a compress run's
`student.safetensors` (its distillation's final weights) and its `compress.yaml` (the EMA
weights when the run kept an EMA; never the Set5-selected "best", which would be tuning on the
test set), writes
`src/slimsr/weights/default_x{S}.{safetensors,json,config.yaml}` and measures
`default_x{S}.metrics.json`: Set5 (MATLAB-made LR files) and Set14 / B100 (LR made with slimsr's
MATLAB-exact bicubic), Y-PSNR / SSIM under the BasicSR protocol, with bicubic and reference
figures from the literature alongside. Recorded paths are made portable (see shipping.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from shipping import copy_portable, copy_portable_weights, measure_y

import slimsr
from slimsr.fileio import atomic_write_text

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "slimsr" / "weights"

FLOOR = {2: 37.0, 3: 33.3, 4: 31.0}
"""Set5 Y-PSNR the bundled model must reach (issue #7)."""

REFERENCES = {
    # Jiang et al. 2024, Table I (DIV2K, distilled from EDSR-baseline); x2 only in the paper.
    "EDSRmini (Jiang et al. 2024, DIV2K + distillation)": {
        2: {"Set5": (37.67, 0.9597), "Set14": (33.21, 0.9141)},
    },
    # Dong et al. 2016 as re-reported by later work (e.g. CARN, IMDN tables); 12K parameters.
    "FSRCNN (Dong et al. 2016, 91 images + General-100)": {
        2: {"Set5": (37.05, 0.9560), "Set14": (32.66, 0.9090), "B100": (31.53, 0.8920)},
        3: {"Set5": (33.18, 0.9140), "Set14": (29.37, 0.8240), "B100": (28.53, 0.7910)},
        4: {"Set5": (30.72, 0.8660), "Set14": (27.61, 0.7550), "B100": (26.98, 0.7150)},
    },
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--scale", type=int, required=True)
    p.add_argument("--shared", type=Path, default=Path("../shared"))
    p.add_argument("--note", default="")
    args = p.parse_args()
    s = args.scale
    compressed = (args.run_dir / "student.safetensors").is_file()
    src = args.run_dir / ("student.safetensors" if compressed else "weights/final.safetensors")
    recipe = args.run_dir / ("compress.yaml" if compressed else "config.yaml")
    model = slimsr.load(src)
    if model.scale != s:
        raise SystemExit(f"{src} is x{model.scale}, not x{s}")
    dst = WEIGHTS / f"default_x{s}.safetensors"
    copy_portable_weights(src, dst, args.shared)
    copy_portable(src.with_suffix(".json"), dst.with_suffix(".json"), args.shared)
    copy_portable(recipe, WEIGHTS / f"default_x{s}.config.yaml", args.shared)
    meta = json.loads(src.with_suffix(".json").read_text())
    iterations = (
        yaml.safe_load(recipe.read_text())["distill"]["train"]["iterations"]
        if compressed
        else meta["training"]["iteration"]
    )
    metrics = {
        "model": model.info.name,
        "scale": s,
        "params": model.num_parameters(),
        "iterations": iterations,
        "protocol": "basicsr (Y of BT.601, border = scale, SR as uint8)",
        "results": measure_y(model.eval(), args.shared, s),
        "references": {
            name: {d: list(v) for d, v in table[s].items()}
            for name, table in REFERENCES.items()
            if s in table
        },
        "quality_floor_set5": FLOOR[s],
    }
    if args.note:
        metrics["note"] = args.note
    atomic_write_text(WEIGHTS / f"default_x{s}.metrics.json", json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics["results"], indent=2))


if __name__ == "__main__":
    main()
