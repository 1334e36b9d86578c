"""Stage 3: train the compact student with the teacher's guidance (eqs. 8-9 of Jiang et al.).

    L = alpha * L1(student, GT) + L_lap(student, teacher) + L_lap(HF(student), HF(teacher))

with alpha = 0.1, HF(x) = x - GaussianBlur5x5(x) and L_lap the Laplacian-pyramid L1 loss
(`slimsr.train.losses`). The training itself is the ordinary engine (`slimsr.train`) with a
`distill:` section: the teacher is loaded with `slimsr.load` (any supported checkpoint, any
architecture of the same scale) and frozen; its outputs on the whole training images are
computed once and cropped per patch (`slimsr.train.teacher_cache`; `distill.cache: false` runs
it on each batch instead). The student starts from scratch, as the paper's (or from `distill.student_init`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimsr.compress.config import CompressConfig
from slimsr.compress.runs import Log, run_stage, stage_dir
from slimsr.factory import load, save
from slimsr.train import TrainConfig, load_config
from slimsr.train.config import ConfigError
from slimsr.train.losses import DistillationLoss, LaplacianLoss, high_frequency, laplacian_pyramid

STUDENT_FILE = "student.safetensors"

__all__ = [
    "STUDENT_FILE",
    "DistillationLoss",
    "LaplacianLoss",
    "distill_train_config",
    "high_frequency",
    "laplacian_pyramid",
    "run_distill",
]


def distill_train_config(
    cfg: CompressConfig, student: str, kwargs: dict[str, Any], *, check_paths: bool = True
) -> TrainConfig:
    """The training recipe of stage 3 (a run folder `distill/` inside the compression run)."""
    d = cfg.distill
    recipe = {
        "name": "distill",
        "output_dir": str(cfg.run_dir),
        "seed": cfg.seed,
        "device": cfg.device,
        "auto_resume": True,
        "model": {
            "name": student,
            "scale": cfg.model.scale,
            "kwargs": kwargs,
            "pretrained": None if d.student_init is None else str(d.student_init),
        },
        "data": cfg.data.model_dump(mode="json"),
        "train": d.train.model_dump(mode="json"),
        "distill": {
            "teacher": str(cfg.teacher),
            "param_key": cfg.teacher_param_key,
            "alpha": d.alpha,
            "levels": d.levels,
            "cache": d.cache,
            "cache_dir": None if d.cache_dir is None else str(d.cache_dir),
        },
        "logging": cfg.logging.model_dump(mode="json"),
    }
    try:
        return load_config(recipe, check_paths=check_paths)
    except ConfigError as exc:
        raise ConfigError(f"distill stage: {exc}") from None


def run_distill(
    cfg: CompressConfig, student: str, kwargs: dict[str, Any], log: Log, extra: dict[str, Any]
) -> Path:
    """Stage 3 (resumable); writes the student as `student.safetensors` + sidecar."""
    config = distill_train_config(cfg, student, kwargs)
    run_stage("distill", config, log)
    final = stage_dir(config) / "weights" / "final.safetensors"
    target = cfg.run_dir / STUDENT_FILE
    save(load(final), target, extra={"compression": {**extra, "trained_weights": str(final)}})
    return target
