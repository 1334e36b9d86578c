"""Copy a finished `slimsr train` run into the package as a shipped model, with its record.

    python scripts/ship_trained.py RUN_DIR --produced-by TEXT [--reference FILE]
        [--floor DB] [--after EARLIER_RUN ...] [--shared ../shared] [--to DIR]

For models trained by slimsr itself (issue 18: FMEN-S x4 in its train-time form, shipped
re-parameterised). Takes the run's final weights (the EMA when the run kept one; never the
Set5-selected "best", which would be tuning on the test set), in their deploy form when the
run wrote one (`final_deploy.safetensors`: FMEN's RRRBs and BatchNorm folded into plain
convs), and writes, under `src/slimsr/weights/trained/` (or `--to`):

- `{model}_x{S}.safetensors` + `.json`: the weights and their sidecar;
- `{model}_x{S}.config.yaml`: the run's resolved recipe;
- `{model}_x{S}.metrics.json`: Set5 / Set14 / B100 Y-PSNR / SSIM (shipping.measure_y), the
  training record from train.jsonl (iterations, legs, hours, it/s), the floor the issue set,
  and `--reference` (e.g. the official weights of the same network) measured the same way.

A model trained in stages (a run whose `model.pretrained` is another run's final weights) names
the earlier runs with `--after`, oldest first: their training records go into the metrics too,
so the budget shipped is the whole one, not the last stage's. Each must be the run the next one
started from (that run's `model.pretrained` is `<its folder>/weights/final*.safetensors`, the
same bytes where the file is still there), or it is refused.

Recorded paths are made portable (shipping.py); every file is written atomically, and only
after everything is measured. A reference registered under another model name or scale than
the run's is refused: the comparison must be like for like. Bad input (an unfinished run, a
missing or mismatched reference, an earlier stage the run did not continue, an unreadable
recipe or log, an image that fails) is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

import yaml
from shipping import REPO_ROOT, copy_portable, copy_portable_weights, measure_y, portable

import slimsr
from campaign import events, fail, leg_hours, summary
from slimsr.errors import SlimsrError
from slimsr.fileio import atomic_write_text, file_sha256
from slimsr.train.resume import finished_weights

TRAINED = REPO_ROOT / "src" / "slimsr" / "weights" / "trained"


def training_record(run: Path) -> dict[str, Any]:
    """Iterations, legs, wall hours, mean speed and best validation of one run's train.jsonl."""
    try:
        record = summary(run)
        exact_hours = leg_hours(events(run))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SlimsrError(
            f"{run / 'train.jsonl'} cannot be read as a training log: {exc}"
        ) from None
    speed = record["it_per_s_mean"]
    return {
        "iterations": record["iteration"],
        "of": record["iterations"],
        "legs": record["legs"],
        "hours": record["hours"],
        "exact_hours": exact_hours,  # unrounded, for totals; not written
        "it_per_s_mean": None if speed is None else round(speed, 3),
        "best_validation": record["best"]
        and {k: record["best"][k] for k in ("iter", "psnr", "ssim")},
    }


def started_from(run: Path) -> Path | None:
    """The `model.pretrained` file the run's resolved recipe started from, if any."""
    path = run / "config.yaml"
    try:
        model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
        pretrained = model.get("pretrained")
    except yaml.MarkedYAMLError as exc:  # its own message spans lines: the gist and the line
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        why = f"{exc.problem} (line {line})"
        raise SlimsrError(f"{path} cannot be read as a run's recipe: {why}") from None
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        why = " ".join(str(exc).split())
        raise SlimsrError(f"{path} cannot be read as a run's recipe: {why}") from None
    return None if pretrained is None else Path(pretrained)


def continues(later: Path, earlier: Path) -> bool:
    """Whether `later` started from `earlier`'s final weights (train or deploy form).

    The recorded path must be `<earlier's folder>/weights/final*.safetensors`; where that file
    still exists here (the same machine), it must also be byte for byte the earlier run's own.
    A checkpoint or best snapshot as the start is not "the earlier stage, finished".
    """
    start = started_from(later)
    if start is None or not (start.name.startswith("final") and start.suffix == ".safetensors"):
        return False
    folder = start.parent.parent
    if start.parent.name != "weights" or folder.name not in {earlier.name, earlier.resolve().name}:
        return False
    own = earlier / "weights" / start.name
    if not own.is_file():
        return False
    return not start.is_file() or file_sha256(start) == file_sha256(own)


def earlier_stages(run: Path, after: list[Path]) -> list[dict[str, Any]]:
    """Records of the runs `run` continues, oldest first, each checked to be the one it did."""
    for earlier, later in itertools.pairwise([*after, run]):
        if not (earlier / "train.jsonl").is_file():
            raise SlimsrError(f"{earlier} is not a slimsr run folder (no train.jsonl)")
        if not continues(later, earlier):
            raise SlimsrError(
                f"{later} did not start from {earlier}'s final weights: its model.pretrained is "
                f"{started_from(later)}"
            )
    return [{"run": earlier.resolve().name, **training_record(earlier)} for earlier in after]


def ship(
    run: Path,
    dest: Path,
    shared: Path,
    produced_by: str,
    reference: Path | None = None,
    floor: float | None = None,
    after: list[Path] | None = None,
) -> Path:
    """Ship `run`'s final weights into `dest`; the metrics file written."""
    if not (run / "train.jsonl").is_file():
        raise SlimsrError(f"{run} is not a slimsr run folder (no train.jsonl)")
    stages = earlier_stages(run, after or [])
    written = finished_weights(run)
    if not written:
        raise SlimsrError(f"{run} has no weights/final.safetensors: the run has not finished")
    weights = written[-1]  # the deploy form when there is one
    model = slimsr.load(weights)
    ref_model = slimsr.load(reference) if reference is not None else None
    if ref_model is not None and (ref_model.name, ref_model.scale) != (model.name, model.scale):
        raise SlimsrError(
            f"reference {reference} is {ref_model.name} x{ref_model.scale}, "
            f"the run shipped {model.name} x{model.scale}"
        )
    training = training_record(run)
    if stages:
        training["after"] = stages
        training["total_iterations"] = training["iterations"] + sum(s["iterations"] for s in stages)
        hours = training["exact_hours"] + sum(s["exact_hours"] for s in stages)
        training["total_hours"] = round(hours, 2)
    for record in (training, *stages):
        del record["exact_hours"]
    metrics = {
        "model": model.name,
        "scale": model.scale,
        "params": model.num_parameters(),
        "weights": weights.name,
        "produced_by": produced_by,
        "training": training,
        "protocol": "basicsr (Y of BT.601, border = scale, SR as uint8)",
        "results": measure_y(model.eval(), shared, model.scale),
        "quality_floor_set5": floor,
    }
    if ref_model is not None:
        metrics["reference"] = {
            "file": portable(str(reference.absolute()), shared),
            "results": measure_y(ref_model.eval(), shared, ref_model.scale),
        }
    # everything measured: only now is anything written, so a failure leaves no half-ship
    stem = f"{model.name}_x{model.scale}"
    dest.mkdir(parents=True, exist_ok=True)
    copy_portable_weights(weights, dest / f"{stem}.safetensors", shared)
    copy_portable(weights.with_suffix(".json"), dest / f"{stem}.json", shared)
    copy_portable(run / "config.yaml", dest / f"{stem}.config.yaml", shared)
    path = dest / f"{stem}.metrics.json"
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--produced-by", required=True, help="how the weights were made")
    parser.add_argument("--reference", type=Path, default=None, help="weights to compare with")
    parser.add_argument("--floor", type=float, default=None, help="Set5 PSNR the issue asks")
    parser.add_argument(
        "--after",
        type=Path,
        action="append",
        default=[],
        help="an earlier stage this run continues (repeat, oldest first)",
    )
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--to", type=Path, default=TRAINED)
    args = parser.parse_args()
    try:
        path = ship(
            args.run_dir,
            args.to,
            args.shared,
            args.produced_by,
            args.reference,
            args.floor,
            args.after,
        )
    except (SlimsrError, OSError) as exc:  # bad input: one line, exit 2, nothing written
        fail(str(exc))
    print(path.read_text())


if __name__ == "__main__":
    main()
