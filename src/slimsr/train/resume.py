"""What `--resume RUN_DIR` continues, what it may change, and when it has nothing to do.

The run folder named on the command line *is* the run: its `config.yaml` is read and its
location (`output_dir`, `name`) replaced by where the folder is now, so a folder that was moved
or renamed resumes in place instead of writing to the path it was first created at. The
location keys are therefore not "changes"; everything else is compared with the saved config,
and only what keeps the schedule (`RESUMABLE_CHANGES`) may differ.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slimsr.errors import SlimsrError
from slimsr.fileio import file_sha256
from slimsr.train.config import CosineSchedule, TrainConfig
from slimsr.train.recipe import config_changes, load_config, read_recipe
from slimsr.train.training_state import ResumeError, latest_checkpoint, list_checkpoints

#: Keys a resumed run may change without breaking "continues the same schedule".
RESUMABLE_CHANGES = (
    "auto_resume",
    "device",
    "train.iterations",
    "train.max_nonfinite_steps",
    "data.train.num_workers",
    "distill.cache_dir",
    "data.val.",
    "logging.",
    # the initial weights: a resumed run takes its weights from the checkpoint, so where the
    # file it started from lives now (a campaign restored on another machine) changes nothing
    "model.pretrained",
    "model.pretrained_strict",
    "model.param_key",
    # how a step computes, not what: the same maths, other float rounding (a resumed run that
    # changes one is no longer bit-exact against an uninterrupted run; the log records it)
    "train.fast_path.online_fold",
    "train.fast_path.compile",
)

LOCATION_KEYS = ("output_dir", "name")
"""Where the run folder is, not what it trains: taken from the folder itself on resume."""


class RunFolderError(SlimsrError):
    """The run folder exists (and resuming was not asked for), or is not a run folder."""


def _resumable(key: str) -> bool:
    return any(key == p.rstrip(".") or key.startswith(p) for p in RESUMABLE_CHANGES)


AUTOCAST_ONLY = frozenset({"fp32", "bf16"})
"""Precisions a resumed run may switch between: bf16 is autocast alone, so the weights, EMA,
optimiser moments and schedule stay the same fp32 tensors and neither keeps a grad scaler.
The steps after the switch round the forward to bf16 (not bit-exact against a run that did
not switch; the resume event records the precision), and a distillation teacher that runs in
the student's precision builds a new cache. fp16 is not among them: its grad scaler's state
would start afresh (or be dropped) mid-run."""


def _resumable_change(key: str, old: Any, new: Any) -> bool:
    if key == "train.precision":
        return {old, new} <= AUTOCAST_ONLY
    if key == "data.train.sources":
        return sources_moved(old, new)
    return _resumable(key)


def sources_moved(old: Any, new: Any) -> bool:
    """Training folders at other paths, in the same number and with LR files where they were:
    maybe the same images moved (a campaign restored on another machine, its data elsewhere).
    Allowed here; the trainer then compares the images' sha256 with the checkpoint's
    (`check_same_data`), so other images at the new paths are still refused."""
    if not (isinstance(old, list) and isinstance(new, list)) or len(old) != len(new):
        return False
    return all((a.get("lr") is None) == (b.get("lr") is None) for a, b in zip(old, new))


def data_moved(run_dir: Path, config: TrainConfig) -> bool:
    """Whether the run's training folders are named differently from its saved config.yaml."""
    saved = saved_config(run_dir)
    return saved is not None and saved.data.train.sources != config.data.train.sources


def resume_config(run_dir: Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """The config saved in a run folder, with `--set` overrides, located where the folder is."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise RunFolderError(f"{run_dir}: not a slimsr run folder (no config.yaml)")
    for text in overrides:
        key = text.partition("=")[0].strip()
        if key in LOCATION_KEYS:
            raise ResumeError(
                f"--set {key}: a resumed run stays in the folder given to --resume ({run_dir}); "
                "move or rename the folder instead"
            )
    doc = read_recipe(path, overrides, None, "a run's config.yaml is a YAML mapping")
    folder = run_dir.resolve()
    doc.data["output_dir"] = str(folder.parent)
    doc.data["name"] = folder.name
    return doc.validate(TrainConfig, True)


def saved_config(run_dir: Path) -> TrainConfig | None:
    """The run folder's config.yaml as it was written (paths not checked), or None."""
    path = Path(run_dir) / "config.yaml"
    return load_config(path, check_paths=False) if path.is_file() else None


def resume_changes(saved: TrainConfig, config: TrainConfig, run_dir: Path) -> list[str]:
    """`key: old -> new` for each change a resume would make; `ResumeError` for a change that
    would not continue the same run (one line naming the keys)."""
    changed = [c for c in config_changes(saved, config) if c[0] not in LOCATION_KEYS]
    changed = [c for c in changed if not _same_teacher_moved(c, run_dir)]
    keys = [key for key, _, _ in changed]
    bad = [key for key, old, new in changed if not _resumable_change(key, old, new)]
    if bad:
        raise ResumeError(
            f"{run_dir}: the recipe differs from the run's config.yaml in {', '.join(bad)}; a "
            "resumed run must continue the same schedule (start a new run with another name, "
            "or model.pretrained)"
        )
    sched = config.train.scheduler
    if "train.iterations" in keys and isinstance(sched, CosineSchedule) and sched.periods is None:
        raise ResumeError(
            f"{run_dir}: changing train.iterations would reshape the cosine schedule (one cycle "
            "over the whole run); keep the original iterations, or use a schedule with fixed "
            "periods or milestones"
        )
    return [f"{key}: {_show(old)} -> {_show(new)}" for key, old, new in changed]


def _same_teacher_moved(change: tuple[str, Any, Any], run_dir: Path) -> bool:
    """A teacher file at a new path with the bytes the run recorded (train.jsonl's start
    event holds its sha256) is the same teacher, moved: not a change."""
    key, _, new = change
    if key != "distill.teacher" or new is None or not Path(new).is_file():
        return False
    log = Path(run_dir) / "train.jsonl"
    if not log.is_file():
        return False
    with log.open() as f:
        start = json.loads(f.readline() or "{}")
    recorded = (start.get("teacher") or {}).get("sha256")
    return recorded is not None and recorded == file_sha256(Path(new))


def _show(value: Any) -> str:
    return "(unset)" if value is None else str(value)


def checkpoint_iteration(run_dir: Path) -> int | None:
    """The iteration of the newest training state in the run folder, from its file name."""
    found = list_checkpoints(Path(run_dir) / "checkpoints")
    return found[-1][0] if found else None


def finished_weights(run_dir: Path) -> list[Path]:
    """The final weights a finished run wrote (empty: the run did not finish exporting)."""
    weights = Path(run_dir) / "weights"
    final = weights / "final.safetensors"
    if not final.is_file():
        return []
    deploy = weights / "final_deploy.safetensors"
    return [final, deploy] if deploy.is_file() else [final]


def find_resume_state(run_dir: Path, config: TrainConfig, resume: bool | None) -> Path | None:
    """The training state a run continues from, or None for a new run.

    `resume`: None follows `config.auto_resume`; True requires a state. Errors for a recipe
    that changed what a resume may not change, and for a folder that is not this run's to
    start (it exists and holds something)."""
    run_dir = Path(run_dir)
    latest = latest_checkpoint(run_dir / "checkpoints")
    want = config.auto_resume if resume is None else resume
    if want and latest is not None:
        saved = saved_config(run_dir)
        if saved is not None:
            resume_changes(saved, config, run_dir)
        return latest
    if resume:
        raise ResumeError(f"{run_dir}: no training state to resume (no checkpoints/)")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunFolderError(
            f"run folder {run_dir} already exists; resume it with `slimsr train --resume "
            f"{run_dir}` (or auto_resume: true), or choose another name (--set name=...)"
        )
    return None


def finished_run(run_dir: Path, total: int) -> tuple[int, list[Path]] | None:
    """(iteration, final weights) of a run that reached `total` iterations and wrote its
    weights, so resuming has nothing to do; None while there is work left (including a run
    stopped between its last checkpoint and its weights). A run past `total` cannot be
    resumed at all (`ResumeError`)."""
    at = checkpoint_iteration(run_dir)
    if at is None or at < total:
        return None
    if at > total:
        raise ResumeError(past_end_message(Path(run_dir), at, total))
    weights = finished_weights(run_dir)
    return (at, weights) if weights else None


def check_same_data(
    path: Path, state: dict[str, Any], num_images: int, images_sha256: str, moved: bool
) -> None:
    """The data folders must give the images the run trained on, in the same order (same data
    stream): as many, and, where the checkpoint records it, with the same bytes (size and
    sha256 of each file).
    Folders that `moved` need that record: a count alone cannot tell the images are the same."""
    data = state.get("data", {})
    saved = data.get("num_images")
    if saved != num_images:
        raise ResumeError(
            f"{path}: the run trained on {saved} images, the data folders "
            f"now give {num_images}; resuming would not continue the same data stream"
        )
    recorded = data.get("images_sha256")
    if recorded is not None and recorded != images_sha256:
        raise ResumeError(
            f"{path}: the data folders hold other images than the run trained on (images "
            f"sha256 {images_sha256[:12]}, the run's {recorded[:12]}); resuming would not "
            "continue the same data stream"
        )
    if recorded is None and moved:
        raise ResumeError(
            f"{path}: the training folders moved (data.train.sources) and this checkpoint "
            "predates the images' sha256, so nothing shows the images are the same; put the "
            "folders back at the paths in the run's config.yaml"
        )


def check_same_teacher(path: Path, state: dict[str, Any], teacher: dict[str, Any] | None) -> None:
    """A distilled run continues with the teacher it started with (by sha256 of its file)."""
    saved = state.get("teacher") or {}
    current = teacher or {}
    if saved.get("sha256") != current.get("sha256"):
        raise ResumeError(
            f"{path}: the run was distilled from a teacher with sha256 "
            f"{str(saved.get('sha256'))[:12]}, the recipe's teacher now has "
            f"{str(current.get('sha256'))[:12]}; resuming would change the targets"
        )


def plan_resume(run_dir: Path, config: TrainConfig) -> list[str]:
    """What `--resume RUN_DIR ... --check` reports: the changes and where the run stands."""
    run_dir = Path(run_dir)
    saved = saved_config(run_dir)
    assert saved is not None  # resume_config found it
    lines = resume_changes(saved, config, run_dir)
    at = checkpoint_iteration(run_dir)
    total = config.train.iterations
    if at is None:
        raise ResumeError(f"{run_dir}: no training state to resume (no checkpoints/)")
    if at > total:
        raise ResumeError(past_end_message(run_dir, at, total))
    if at == total and finished_weights(run_dir):
        lines.append(f"{run_dir}: finished at iteration {at} of {total}; resuming does nothing")
    else:
        lines.append(f"{run_dir}: would continue from iteration {at} to {total}")
    if len(lines) == 1:
        lines.insert(0, "no changes to the run's config.yaml")
    return lines


def past_end_message(run_dir: Path, at: int, total: int) -> str:
    return (
        f"{run_dir}: the run is at iteration {at}, past train.iterations {total}; nothing to "
        f"resume (a longer run: --set train.iterations=N with N > {at})"
    )
