"""Running a stage's training on the shared engine (`slimsr.train.Trainer`), resumably.

Each training stage is an ordinary run folder under the compression run (`prune/`,
`distill/`) with `auto_resume`, so running `slimsr compress` again continues it from its newest
checkpoint, exactly as `slimsr train --resume` would.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from slimsr.train import TrainConfig, TrainResult, train
from slimsr.train.trainer import Callback
from slimsr.train.training_state import latest_checkpoint

Log = Callable[[str], None]


class StageInterrupted(Exception):
    """A stage stopped on Ctrl-C / SIGTERM with its state saved (not an error: rerun resumes)."""

    def __init__(self, stage: str, result: TrainResult) -> None:
        super().__init__(f"{stage} interrupted at iteration {result.iteration}")
        self.stage = stage
        self.result = result


def stage_dir(config: TrainConfig) -> Path:
    return Path(config.output_dir) / config.name


def run_stage(
    stage: str, config: TrainConfig, log: Log, callbacks: Sequence[Callback] = ()
) -> TrainResult:
    """Train `config` to the end (resuming a previous attempt); raise if interrupted."""
    folder = stage_dir(config)
    if folder.exists() and latest_checkpoint(folder / "checkpoints") is None:
        # an attempt stopped before its first checkpoint: nothing to resume, nothing to keep
        shutil.rmtree(folder)
        log(f"{stage}: removed {folder}, an earlier attempt that saved no checkpoint")
    result = train(config, callbacks=callbacks)
    if result.finished_before:
        log(f"{stage}: finished before ({folder}), nothing to train")
    if result.interrupted:
        raise StageInterrupted(stage, result)
    return result
