"""Training: typed recipes, the loop (EMA, AMP with a NaN guard, validation, exact resume,
torchrun DDP), losses, optimisers and schedules. `slimsr train` is the command-line front."""

from __future__ import annotations

from slimsr.train.config import ConfigError, TrainConfig, json_schema
from slimsr.train.recipe import config_hash, dump_config, load_config
from slimsr.train.resume import resume_config
from slimsr.train.trainer import (
    Trainer,
    TrainingDivergedError,
    TrainResult,
    train,
)

__all__ = [
    "ConfigError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDivergedError",
    "config_hash",
    "dump_config",
    "json_schema",
    "load_config",
    "resume_config",
    "train",
]
