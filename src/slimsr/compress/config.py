"""The compression recipe (`slimsr compress RECIPE.yaml`): typed, strict, one section per stage.

    name / output_dir / seed / device      as in a training recipe; the run folder is
                                           output_dir/name
    model:    the original (large) model: registry name, scale, kwargs, pre-trained weights
    data:     training patches and validation images (the `data` section of a training recipe),
              shared by the pruning and the distillation runs
    prune:    stage 1, OBProx-SG fine-tuning; or `density: d` to skip it
    distill:  stage 3, teacher (default: the pre-trained original), alpha, and the `train`
              section of a training recipe (AdaMax (0.9, 0.99) unless another optimiser is given)
    logging:  as in a training recipe, for both runs

Stage 2 (sizing) has nothing to configure: eqs. 5-7 and the architecture's spec decide.
Relative paths are resolved against the working directory, as in training recipes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from slimsr.errors import UnknownModelError
from slimsr.train.config import (
    RUN_NAME_PATTERN,
    ConstantSchedule,
    DataConfig,
    LoggingConfig,
    OptimConfig,
    ScheduleConfig,
    Section,
    check_path,
    check_provided_scale,
)
from slimsr.train.recipe import read_recipe


class CompressModelConfig(Section):
    """The original model: what is pruned, sized down and (by default) the teacher."""

    name: str = Field(description="Registry name of the original model, e.g. edsr_baseline.")
    scale: int = Field(description="Upscaling factor.")
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Hyper-parameters that differ from the variant's."
    )
    pretrained: Path | None = Field(
        None,
        description="Pre-trained weights of the original (needed to prune; the default teacher).",
    )
    param_key: str | None = Field(None, description="Container to read from `pretrained`.")

    @field_validator("pretrained")
    @classmethod
    def _exists(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return check_path(v, info, "file")

    @field_validator("name")
    @classmethod
    def _compressible(cls, v: str) -> str:
        from slimsr.compress.specs import CompressionError, spec_for
        from slimsr.registry import get_model_info

        try:
            name = get_model_info(v).name
            spec_for(name)
        except (UnknownModelError, CompressionError) as exc:
            raise ValueError(str(exc)) from None
        return name

    @field_validator("scale")
    @classmethod
    def _provided_scale(cls, v: int, info: ValidationInfo) -> int:
        return check_provided_scale(v, info)


class PruneStageConfig(Section):
    """Stage 1: fine-tune with Charbonnier + lambda*||theta||_1 by OBProx-SG (eq. 1)."""

    density: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Skip pruning and size with this density (e.g. the paper's 0.03 / 0.089).",
    )
    iterations: PositiveInt | None = Field(
        None, description="Pruning iterations (required unless density is given)."
    )
    images: PositiveInt | None = Field(
        None,
        description="Prune on the first N training images only (the paper prunes on 100 DIV2K "
        "images and distils on all); default: all of data.train.",
    )
    lr: PositiveFloat = Field(5e-3, description="OBProx-SG step size (the authors': 5e-3).")
    lambda_l1: NonNegativeFloat = Field(1e-4, description="lambda of eq. 1 (the paper: 1e-4).")
    prox_steps: NonNegativeInt | None = Field(
        None,
        description="Proximal-SG steps before the orthant steps; default: a tenth of the "
        "iterations (the OBProx-SG authors' N_P = epochs / 10).",
    )
    orthant_steps: PositiveInt | None = Field(
        None, description="Orthant steps per cycle; null: orthant steps to the end."
    )
    eps: NonNegativeFloat = Field(0.0, description="OBProx-SG orthant projection threshold.")
    charbonnier_eps: PositiveFloat = Field(1e-3, description="epsilon of eq. 1 (1e-3).")
    scheduler: ScheduleConfig = Field(default_factory=lambda: ConstantSchedule(type="constant"))
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_clip: PositiveFloat | None = None


class DistillStageConfig(Section):
    """Stage 3: train the compact student from scratch with eq. 8-9 and a frozen teacher."""

    teacher: Path | None = Field(
        None,
        description="Teacher weights (any supported file, any architecture of the same scale); "
        "default: model.pretrained.",
    )
    param_key: str | None = Field(None, description="Container to read from the teacher file.")
    student_init: Path | None = Field(
        None,
        description="Weights to start the student from instead of random (strict load; e.g. a "
        "model of the compact shape trained without a teacher); default: from scratch.",
    )
    alpha: NonNegativeFloat = Field(0.1, description="Weight of the ground-truth loss (eq. 8).")
    levels: PositiveInt = Field(5, description="Laplacian pyramid levels.")
    cache: bool = Field(
        True,
        description="Teacher outputs computed once per training image and cropped per patch "
        "(as a training recipe's distill.cache).",
    )
    cache_dir: Path | None = Field(
        None, description="Folder of the teacher caches; default: the run folder's teacher_cache."
    )
    train: OptimConfig = Field(description="As a training recipe's `train` section.")

    @model_validator(mode="before")
    @classmethod
    def _adamax_default(cls, data: Any) -> Any:
        """The paper distils with AdaMax (0.9, 0.99); a recipe may name another optimiser."""
        if isinstance(data, dict) and isinstance(data.get("train"), dict):
            data["train"].setdefault("optimizer", {"type": "adamax", "betas": [0.9, 0.99]})
        return data

    @field_validator("teacher", "student_init")
    @classmethod
    def _exists(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return check_path(v, info, "file")


class CompressConfig(Section):
    """A complete compression recipe (`slimsr compress RECIPE.yaml`)."""

    name: str = Field(description="Run name; the run folder is output_dir/name.")
    output_dir: Path = Field(Path("runs"), description="Parent folder of run folders.")
    seed: NonNegativeInt = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    model: CompressModelConfig
    data: DataConfig
    prune: PruneStageConfig = Field(default_factory=PruneStageConfig)
    distill: DistillStageConfig
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not RUN_NAME_PATTERN.match(v):
            raise ValueError("use letters, digits and _ . + - only (it names a folder)")
        return v

    @model_validator(mode="after")
    def _stages_have_inputs(self) -> CompressConfig:
        if self.prune.density is None:
            if self.model.pretrained is None:
                raise ValueError(
                    "model.pretrained is required to prune (stage 1); or give prune.density "
                    "to size the model with a known density"
                )
            if self.prune.iterations is None:
                raise ValueError(
                    "prune.iterations is required unless prune.density is given (skips pruning)"
                )
        if self.distill.teacher is None and self.model.pretrained is None:
            raise ValueError(
                "distill.teacher is required when model.pretrained is not given (the default "
                "teacher is the pre-trained original)"
            )
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def teacher(self) -> Path:
        teacher = self.distill.teacher or self.model.pretrained
        assert teacher is not None
        return teacher

    @property
    def teacher_param_key(self) -> str | None:
        return self.distill.param_key if self.distill.teacher else self.model.param_key


def load_compress_config(
    source: str | Path | Mapping[str, Any],
    overrides: Sequence[str] = (),
    *,
    check_paths: bool = True,
    base_dir: Path | None = None,
) -> CompressConfig:
    """A validated `CompressConfig` from YAML (or a dict) plus `--set` overrides.

    Errors are one-line `ConfigError`s naming the file, line and key, as for training recipes.
    """
    doc = read_recipe(
        source, overrides, base_dir, "a compression recipe is a YAML mapping of sections"
    )
    return doc.validate(CompressConfig, check_paths)
