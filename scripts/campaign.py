"""Carry a long training run (a campaign) across sessions and machines, through git.

A campaign is one `slimsr train` or `slimsr compress` run trained in legs: a leg runs in the
background until the session ends; the next session, maybe on a fresh machine, continues it
exactly. What must survive is small: the run's recipe, its log and its newest training state.
This script copies those between the run folder (`runs/<name>/`, not committed) and
`campaign/<name>/` (committed):

    python scripts/campaign.py save runs/campaign_edsrmini_x2      # end of a session; then commit
    python scripts/campaign.py restore campaign/campaign_edsrmini_x2  # fresh machine -> runs/...
    python scripts/campaign.py status runs/campaign_edsrmini_x2    # where the run stands

`save` keeps, for the run and for each training stage of a compression run (`prune/`,
`distill/`): the recipe as the run resolved it (`config.yaml`, `compress.yaml`), the stage
artefacts (`density.json` and its per-layer plot, `compact.json`, `student.safetensors`), the
whole `train.jsonl`, the newest checkpoint (the complete training state: weights, EMA,
optimiser, schedule, data stream position, random generators) and the best validated snapshot
(`weights/best.*`); for a finished stage, its final weights (`weights/final*.safetensors`, the
start of a next stage and what `scripts/ship_trained.py` ships) instead of a training state,
which nothing needs any more, and of the best snapshot's weights (its `best.json` record stays). It leaves
out what is rebuilt on demand (the teacher cache, tensorboard files, older checkpoints) and
writes `PROGRESS.md`, the run's curve in a table; sections written by hand into the saved
`PROGRESS.md` (e.g. "## State and next step") are kept at its end by the next `save`, so the
notes travel with the run; text written inside a generated section (one named after a stage)
or above the first section is rewritten. Every file is written atomically.
`restore` copies it back (refusing to overwrite a run folder that already has a newer
checkpoint), after which the leg's own command continues the run: `slimsr compress RECIPE`
again, or `slimsr train --resume RUN_DIR` (with the thread count the run started with, for a
bit-exact continuation).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from slimsr.fileio import atomic_path, atomic_write_text
from slimsr.train.resume import finished_weights
from slimsr.train.training_state import latest_checkpoint, list_checkpoints

RUN_FILES = (
    "config.yaml",
    "compress.yaml",
    "density.json",
    "density.png",
    "compact.json",
    "student.safetensors",
    "student.json",
    "report.json",
)
STAGES = ("prune", "distill")


def fail(message: str) -> NoReturn:
    """One line on stderr, exit 2 (the project's convention for bad input)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def training_folders(run: Path) -> list[Path]:
    """The folders that hold a `train.jsonl`: the run itself, or its compression stages."""
    folders = [run] if (run / "train.jsonl").exists() else []
    return folders + [run / s for s in STAGES if (run / s / "train.jsonl").exists()]


def copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def events(folder: Path) -> list[dict[str, Any]]:
    lines = (folder / "train.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if x.strip()]


def event_time(event: dict[str, Any]) -> float | None:
    """The event's time stamp in seconds, or None when it has none that parses."""
    try:
        return datetime.fromisoformat(event["time"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def leg_hours(log: list[dict[str, Any]]) -> float:
    """Hours of training in the log: each leg from its start (or resume) event, written once
    the data (and a teacher cache) is ready, to its last event; set-up time is not counted."""
    total, first, last = 0.0, None, None
    for e in log:
        t = event_time(e)
        if e["event"] in ("start", "resume"):
            if first is not None and last is not None:
                total += last - first
            first = last = t
        elif t is not None:
            first = t if first is None else first
            last = t
    if first is not None and last is not None:
        total += last - first
    return total / 3600


def summary(folder: Path) -> dict[str, Any]:
    """Iteration, validation curve, speed and wall time of one training folder."""
    log = events(folder)
    vals = [e for e in log if e["event"] == "val" and e.get("model") != "bicubic"]
    trains = [e for e in log if e["event"] == "train"]
    starts = [e for e in log if e["event"] in ("start", "resume")]
    total = next((e.get("iterations") for e in reversed(starts) if e.get("iterations")), None)
    newest = latest_checkpoint(folder / "checkpoints")
    saved_at = list_checkpoints(folder / "checkpoints")[-1][0] if newest else 0
    return {
        "stage": folder.name,
        "iteration": max([e.get("iter", 0) for e in log] + [0]),
        "checkpoint_iteration": saved_at,
        "iterations": total,
        "legs": len(starts),
        "hours": round(leg_hours(log), 2),
        "it_per_s_mean": (sum(e["it_per_s"] for e in trains) / len(trains)) if trains else None,
        "val": [(e["iter"], e["psnr"], e["ssim"]) for e in vals],
        "best": max(vals, key=lambda e: e["psnr"]) if vals else None,
    }


def progress_markdown(run: Path, parts: list[dict[str, Any]]) -> str:
    lines = [f"# Progress of `{run.name}`", ""]
    lines += [
        "Written by `python scripts/campaign.py save`; the numbers come from train.jsonl.",
        "",
    ]
    for p in parts:
        of = f" of {p['iterations']:,}" if p["iterations"] else ""
        speed = (
            f"{p['it_per_s_mean']:.2f} it/s on average" if p["it_per_s_mean"] else "no speed yet"
        )
        lines += [
            f"## {p['stage']}",
            "",
            f"- iteration {p['iteration']:,}{of} (newest checkpoint: {p['checkpoint_iteration']:,}),"
            f" {p['legs']} leg(s), {p['hours']:.1f} h, {speed}",
        ]
        if p["best"]:
            b = p["best"]
            lines.append(
                f"- best validation: {b['psnr']:.4f} dB / {b['ssim']:.4f} at {b['iter']:,}"
            )
        if p["val"]:
            lines += ["", "| iteration | PSNR (dB) | SSIM |", "|---|---|---|"]
            lines += [f"| {i:,} | {psnr:.4f} | {ssim:.4f} |" for i, psnr, ssim in p["val"]]
        lines.append("")
    return "\n".join(lines)


def sections(markdown: str) -> list[tuple[str, str]]:
    """The `## ` sections of a Markdown text: (title, whole section text), in order. A `## `
    line inside a fenced code block (a shell comment in a resume command) starts nothing."""
    found: list[tuple[str, list[str]]] = []
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if line.startswith("## ") and not fenced:
            found.append((line[3:].strip(), [line]))
        elif found:
            found[-1][1].append(line)
    return [(title, "\n".join(lines).rstrip("\n") + "\n") for title, lines in found]


def with_kept_notes(generated: str, previous: str | None, stages: set[str]) -> str:
    """`generated` followed by the sections of `previous` that `save` does not write itself
    (those not named after a stage): hand-written notes survive each save."""
    if previous is None:
        return generated
    kept = [text for title, text in sections(previous) if title not in stages]
    return generated.rstrip("\n") + "\n\n" + "\n".join(kept) if kept else generated


def save(run: Path, dest: Path) -> None:
    folders = training_folders(run)
    if not folders and not any((run / f).exists() for f in RUN_FILES):
        fail(f"{run} is not a slimsr run folder (no train.jsonl, no recipe)")
    for name in RUN_FILES:
        if (run / name).exists():
            copy_file(run / name, dest / name)
    for folder in folders:
        rel = folder.relative_to(run)
        for name in (*RUN_FILES, "train.jsonl"):
            if (folder / name).exists():
                copy_file(folder / name, dest / rel / name)
        newest = latest_checkpoint(folder / "checkpoints")
        old = dest / rel / "checkpoints"
        final = finished_weights(folder)
        for weights in final:  # a finished stage: its result, the start of any next stage
            for path in (weights, weights.with_suffix(".json")):
                if path.is_file():
                    copy_file(path, dest / rel / "weights" / path.name)
        keep = None if final or newest is None else newest.name
        if keep is not None:
            copy_file(newest, old / keep)
        for stale in old.glob("iter_*.pt"):  # one state per unfinished stage is all a resume
            if stale.name != keep:  # needs; a finished one needs none (megabytes in git)
                stale.unlink()
        for best in sorted((folder / "weights").glob("best.*")):
            if final and best.suffix != ".json":  # a finished stage ships and continues from
                (dest / rel / "weights" / best.name).unlink(missing_ok=True)  # its final
                continue  # weights, never the Set5-selected best: its record stays, not its MB
            copy_file(best, dest / rel / "weights" / best.name)
    parts = [summary(f) for f in folders]
    progress = dest / "PROGRESS.md"
    previous = progress.read_text() if progress.is_file() else None
    stages = {p["stage"] for p in parts}
    atomic_write_text(progress, with_kept_notes(progress_markdown(run, parts), previous, stages))
    for p in parts:
        print(
            f"{p['stage']}: iteration {p['iteration']:,}, checkpoint {p['checkpoint_iteration']:,}"
        )
    print(f"saved {run} -> {dest} (commit it)")


def restore(src: Path, run: Path) -> None:
    if not src.is_dir():
        fail(f"{src} is not a saved campaign folder")
    for folder in [src, *(src / s for s in STAGES)]:
        saved = latest_checkpoint(folder / "checkpoints")
        here = latest_checkpoint(run / folder.relative_to(src) / "checkpoints")
        if saved is not None and here is not None and here.name > saved.name:
            fail(f"{here} is newer than the saved {saved.name}; nothing restored")
    for path in sorted(src.rglob("*")):
        if path.is_file() and path.name != "PROGRESS.md":
            copy_file(path, run / path.relative_to(src))
    print(f"restored {src} -> {run}; run the leg's command again to continue")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_save = sub.add_parser("save", help="run folder -> campaign/<name>/")
    p_save.add_argument("run", type=Path)
    p_save.add_argument("--to", type=Path, default=None, help="default: campaign/<run name>")
    p_restore = sub.add_parser("restore", help="campaign/<name>/ -> runs/<name>/")
    p_restore.add_argument("saved", type=Path)
    p_restore.add_argument("--to", type=Path, default=None, help="default: runs/<name>")
    p_status = sub.add_parser("status", help="print a run's progress")
    p_status.add_argument("run", type=Path)
    args = parser.parse_args()
    if args.command == "save":
        save(args.run, args.to or Path("campaign") / args.run.name)
    elif args.command == "restore":
        restore(args.saved, args.to or Path("runs") / args.saved.name)
    else:
        folders = training_folders(args.run)
        if not folders:
            fail(f"{args.run} is not a slimsr run folder (no train.jsonl)")
        print(progress_markdown(args.run, [summary(f) for f in folders]))


if __name__ == "__main__":
    main()
