"""Copy a finished ABPN float run and its QAT run into the package, with INT8 files and metrics.

    python scripts/ship_abpn.py FLOAT_RUN QAT_RUN --produced-by TEXT [--shared ../shared]
        [--calib ../shared/datasets/T91/HR]

Takes each run's `weights/final.safetensors` (never a Set5-selected snapshot) and writes, under
`src/slimsr/weights/abpn/`: `abpn_x3.{safetensors,json,config.yaml}` (float),
`abpn_x3_qat.{safetensors,json,config.yaml}` (the QAT weights with the INT8 ranges they
learned), `abpn_x3_int8_ptq.tflite` (full-integer, ranges calibrated on 64 LR-like crops of
`--calib`) and `abpn_x3_int8_qat.tflite` (the QAT ranges), each TFLite file verified against
PyTorch before it is written. `abpn_x3.metrics.json` gets the RGB PSNR / SSIM of the three on
Set5 / Set14 / B100 under the MAI protocol ABPN is measured with (border = scale, LR by
MATLAB-exact bicubic), keeping the official files' figures already recorded there. Recorded
paths are made portable (see shipping.py).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from shipping import REPO_ROOT, copy_portable, copy_portable_weights

import slimsr
from campaign import fail
from slimsr.data.folders import dataset_from_root
from slimsr.errors import SlimsrError
from slimsr.evaluate import evaluate_dataset
from slimsr.export.calibration import calibration_crops
from slimsr.export.runners import load_runner
from slimsr.export.tflite import export_tflite
from slimsr.fileio import atomic_path, atomic_write_text
from slimsr.quant.qat import ranges_from_weights_file

ABPN = REPO_ROOT / "src" / "slimsr" / "weights" / "abpn"
SCALE = 3
SETS = ("Set5", "Set14", "B100")
OFFICIAL_KEY = "official (same protocol, measured by slimsr eval)"


def measure(upscale: Any, shared: Path) -> dict[str, dict[str, float]]:
    """RGB PSNR / SSIM (MAI protocol) with LR made by slimsr's MATLAB-exact bicubic."""
    out = {}
    for name in SETS:
        data = dataset_from_root(shared / "datasets" / name, SCALE, generate_lr=True)
        res = evaluate_dataset(upscale, data, SCALE, protocol="rgb")
        out[name] = {"psnr": round(res.mean("psnr"), 4), "ssim": round(res.mean("ssim"), 4)}
    return out


def ship_run(run: Path, stem: str, shared: Path) -> Path:
    """Copy a run's final weights, sidecar and resolved recipe as `abpn/<stem>.*`."""
    final = run / "weights" / "final.safetensors"  # checked by main() before anything is written
    dst = ABPN / f"{stem}.safetensors"
    copy_portable_weights(final, dst, shared)
    copy_portable(final.with_suffix(".json"), dst.with_suffix(".json"), shared)
    copy_portable(run / "config.yaml", ABPN / f"{stem}.config.yaml", shared)
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("float_run", type=Path)
    parser.add_argument("qat_run", type=Path)
    parser.add_argument("--produced-by", required=True, help="how the weights were made")
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--calib", type=Path, default=None, help="default: shared T91/HR")
    args = parser.parse_args()
    shared = args.shared
    runs_final = [run / "weights" / "final.safetensors" for run in (args.float_run, args.qat_run)]
    for final in runs_final:
        if not final.is_file():
            fail(f"{final} does not exist: the run has not finished")
    ranges = ranges_from_weights_file(runs_final[1])
    if ranges is None:
        fail(f"{runs_final[1]} carries no INT8 ranges: was it trained with quant.qat?")
    calib = args.calib or shared / "datasets" / "T91" / "HR"
    crops = calibration_crops(calib, 64, 48, downscale=SCALE)
    # both INT8 files are converted and verified before anything reaches the package: a file
    # that fails its check leaves the shipped set as it was, not half replaced
    with tempfile.TemporaryDirectory() as tmp:
        trials = []
        for variant, kwargs in (
            ("ptq", {"model": slimsr.load(runs_final[0]), "calibration": crops}),
            ("qat", {"model": slimsr.load(runs_final[1]), "ranges": ranges}),
        ):
            trial = Path(tmp) / f"abpn_x3_int8_{variant}.tflite"
            try:
                export_tflite(kwargs.pop("model"), trial, int8=True, **kwargs)
            except SlimsrError as exc:  # a file that fails its check: nothing is shipped
                fail(str(exc))
            trials.append(trial)
        model = slimsr.load(ship_run(args.float_run, "abpn_x3", shared))
        ship_run(args.qat_run, "abpn_x3_qat", shared)
        for trial in trials:
            with atomic_path(ABPN / trial.name) as dst:
                dst.write_bytes(trial.read_bytes())
    results = {"float (PyTorch)": measure(model, shared)}
    for variant, label in (("ptq", "PTQ (64 T91 crops, LR-like)"), ("qat", "QAT")):
        runner = load_runner(ABPN / f"abpn_x3_int8_{variant}.tflite", SCALE, tflite_io="uint8")
        results[f"INT8 TFLite, {label}"] = measure(runner, shared)
    metrics_path = ABPN / "abpn_x3.metrics.json"
    old = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics = {
        "model": model.name,
        "scale": SCALE,
        "params": model.num_parameters(),
        "protocol": "rgb (MAI: RGB PSNR, border = scale); LR by MATLAB-exact bicubic",
        "produced_by": args.produced_by,
        "results": results,
        OFFICIAL_KEY: old.get(OFFICIAL_KEY, {}),
    }
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
