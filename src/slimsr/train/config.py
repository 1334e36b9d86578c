"""The training recipe as typed, strict pydantic models: one class per YAML section.

Every section forbids unknown keys, so a misspelt option is an error instead of a silently
ignored default (BasicSR's weakness). Pluggable parts (optimiser, schedule, losses) are tagged
unions on `type`, resolved when the file loads, so the trainer never sees an untyped dict.
Reading YAML with line numbers and `--set` overrides lives in `slimsr.train.recipe`.

Paths are checked for existence only when validation runs with the context
`{"check_paths": True}` (what `load_config` does for a real run); `--print-schema`, tests of
the recipes and resumes on another machine can validate without the data present.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from slimsr.errors import SlimsrError, UnknownModelError


class ConfigError(SlimsrError, ValueError):
    """A recipe that cannot be used: unknown key, bad value, missing file, YAML syntax."""


class Section(BaseModel):
    """Base of every section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def check_path(value: Path | None, info: ValidationInfo, kind: str) -> Path | None:
    if value is None or not (info.context or {}).get("check_paths"):
        return value
    if kind == "dir" and not value.is_dir():
        raise ValueError(f"folder not found: {value}")
    if kind == "file" and not value.is_file():
        raise ValueError(f"file not found: {value}")
    return value


def check_provided_scale(scale: int, info: ValidationInfo) -> int:
    """A `scale` validator: the model named in the same section must provide `scale`."""
    from slimsr.registry import get_model_info

    name = info.data.get("name")
    if name is not None and scale not in get_model_info(name).scales:
        scales = ", ".join(str(s) for s in get_model_info(name).scales)
        raise ValueError(f"{name} provides scales {scales}, not {scale}")
    return scale


# -- model ----------------------------------------------------------------------------------------


class ModelConfig(Section):
    """Which registered network to train, and from what weights."""

    name: str = Field(description="Registry name (`slimsr models`), e.g. bsrn_s or fmen_s_train.")
    scale: int = Field(description="Upscaling factor; one of the scales the model provides.")
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Hyper-parameters that differ from the variant's."
    )
    pretrained: Path | None = Field(
        None, description="Weights to start from (any format slimsr reads); strict load."
    )
    param_key: str | None = Field(
        None, description="Container to read from `pretrained` (e.g. params); default: EMA first."
    )
    pretrained_strict: bool = Field(
        True,
        description=(
            "false: copy only the tensors whose name and shape match (e.g. start x4 from an x2"
            " model's body); the counts copied and skipped are logged. true: every key must fit."
        ),
    )

    @field_validator("pretrained")
    @classmethod
    def _pretrained_exists(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return check_path(v, info, "file")

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        from slimsr.registry import get_model_info

        try:
            return get_model_info(v).name
        except UnknownModelError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("scale")
    @classmethod
    def _provided_scale(cls, v: int, info: ValidationInfo) -> int:
        return check_provided_scale(v, info)


# -- data -----------------------------------------------------------------------------------------


class SourceConfig(Section):
    """One training folder: HR images, with their LR partners or LR made on the fly."""

    hr: Path = Field(description="Folder of HR images.")
    lr: Path | None = Field(
        None,
        description="Folder of LR images paired by name (`<stem>.*` or `<stem>x<scale>.*`); "
        "omit to make LR from HR with MATLAB bicubic.",
    )

    @field_validator("hr", "lr")
    @classmethod
    def _folder_exists(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return check_path(v, info, "dir")


class TrainDataConfig(Section):
    """Random patches from the training folders."""

    sources: list[SourceConfig] = Field(min_length=1, description="Training folders.")
    patch_size: PositiveInt = Field(description="LR patch side in pixels (HR = x scale).")
    batch_size: PositiveInt = Field(
        description="Global batch (all processes together); split evenly across DDP ranks."
    )
    flip: bool = Field(True, description="Random horizontal flips.")
    rot90: bool = Field(True, description="Random vertical flips and transposes (90-degree turns).")
    lr_mode: Literal["float", "uint8"] = Field(
        "float",
        description="On-the-fly LR: MATLAB bicubic in float (BasicSR) or rounded like MATLAB's "
        "uint8 files.",
    )
    num_workers: NonNegativeInt = Field(2, description="DataLoader worker processes per rank.")
    cache: bool = Field(
        True, description="Decode every image once and keep it in RAM (else decode per patch)."
    )
    small_images: Literal["skip", "error"] = Field(
        "skip", description="What to do with an image smaller than one patch."
    )
    max_images: PositiveInt | None = Field(
        None,
        description="Train on the first N images only (the sources in order, each sorted by "
        "name), e.g. the 100 images the compression paper prunes on; default: all.",
    )


class ValDataConfig(Section):
    """Validation images, scored as the papers score them (default: Y PSNR/SSIM, border=scale)."""

    root: Path | None = Field(
        None, description="Benchmark folder with HR/ and LR_bicubic/X<s>/ (e.g. Set5)."
    )
    hr: Path | None = Field(None, description="HR folder (instead of root).")
    lr: Path | None = Field(None, description="LR folder paired with hr; omit to generate LR.")
    lr_mode: Literal["uint8", "float"] = Field(
        "uint8", description="Generated LR: MATLAB uint8 (like benchmark files) or float."
    )
    protocol: Literal["basicsr", "ntire", "rgb"] = Field(
        "basicsr", description="basicsr: Y, border=scale; ntire: RGB, border 4; rgb: RGB."
    )

    @field_validator("root", "hr", "lr")
    @classmethod
    def _folder_exists(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return check_path(v, info, "dir")

    @model_validator(mode="after")
    def _one_source(self) -> ValDataConfig:
        if (self.root is None) == (self.hr is None):
            raise ValueError("give exactly one of root and hr")
        if self.lr is not None and self.hr is None:
            raise ValueError("lr needs hr (with root, the LR folder is found inside it)")
        return self


class DataConfig(Section):
    train: TrainDataConfig
    val: ValDataConfig | None = None


# -- optimisation ---------------------------------------------------------------------------------

Betas = tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]]


class AdamConfig(Section):
    type: Literal["adam"]
    betas: Betas = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.0


class AdamWConfig(Section):
    type: Literal["adamw"]
    betas: Betas = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.01


class AdamaxConfig(Section):
    type: Literal["adamax"]
    betas: Betas = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.0


class OBProxSGConfig(Section):
    """OBProx-SG (Chen et al. 2020) for loss + lambda*||theta||_1: exact zeros, for pruning."""

    type: Literal["obproxsg"]
    lambda_l1: NonNegativeFloat = Field(
        1e-4, description="Weight of the L1 norm of all trainable parameters."
    )
    prox_steps: NonNegativeInt = Field(
        description="Proximal-SG steps at the start of each cycle (they find the support)."
    )
    orthant_steps: PositiveInt | None = Field(
        None,
        description="Orthant steps that follow in each cycle; null: orthant steps to the end "
        "(the paper's OBProx-SG+ schedule).",
    )
    eps: NonNegativeFloat = Field(
        0.0, description="Orthant step: entries whose magnitude would end at or below eps become 0."
    )


OptimizerConfig = Annotated[
    AdamConfig | AdamWConfig | AdamaxConfig | OBProxSGConfig, Field(discriminator="type")
]


class ConstantSchedule(Section):
    type: Literal["constant"]
    warmup_iters: NonNegativeInt = Field(0, description="Linear warm-up from 0 to lr.")


class MultiStepSchedule(Section):
    type: Literal["multistep"]
    milestones: list[PositiveInt] = Field(description="Iterations at which lr *= gamma.")
    gamma: PositiveFloat = 0.5
    warmup_iters: NonNegativeInt = 0

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(v)):
            raise ValueError("milestones must increase")
        return v


class CosineSchedule(Section):
    type: Literal["cosine"]
    periods: list[PositiveInt] | None = Field(
        None,
        description="Lengths of the cosine cycles (restarts between them); default: one "
        "cycle over all iterations.",
    )
    restart_weights: list[PositiveFloat] | None = Field(
        None, description="Peak of each cycle relative to lr (default 1 each)."
    )
    eta_min: NonNegativeFloat = Field(0.0, description="Learning rate at the end of a cycle.")
    warmup_iters: NonNegativeInt = 0

    @model_validator(mode="after")
    def _weights_match(self) -> CosineSchedule:
        weights, periods = self.restart_weights, self.periods
        if weights is not None and (periods is None or len(weights) != len(periods)):
            raise ValueError("restart_weights needs one weight per entry of periods")
        return self


ScheduleConfig = Annotated[
    ConstantSchedule | MultiStepSchedule | CosineSchedule, Field(discriminator="type")
]


class L1LossConfig(Section):
    type: Literal["l1"]
    weight: PositiveFloat = 1.0


class MSELossConfig(Section):
    type: Literal["mse"]
    weight: PositiveFloat = 1.0


class CharbonnierLossConfig(Section):
    type: Literal["charbonnier"]
    weight: PositiveFloat = 1.0
    eps: PositiveFloat = Field(1e-3, description="sqrt((x - y)^2 + eps^2), images in [0,1].")


LossConfig = Annotated[
    L1LossConfig | MSELossConfig | CharbonnierLossConfig, Field(discriminator="type")
]


class EMAConfig(Section):
    """Exponential moving average of the weights, saved as `params_ema`."""

    decay: float = Field(0.999, gt=0, lt=1)
    start_iter: NonNegativeInt = Field(
        0, description="Before this iteration the EMA copies the weights instead of averaging."
    )


class FastPathConfig(Section):
    """How the training step runs; "auto" takes the measured default for the model
    (slimsr.train.fastpath, docs/training.md). Every choice changes float rounding only."""

    memory_format: Literal["auto", "contiguous", "channels_last"] = Field(
        "auto", description="Layout of weights and batches (channels_last: NHWC convolutions)."
    )
    attention: Literal["auto", "math", "sdpa"] = Field(
        "auto",
        description="Window-attention kernel (SwinIR): matmul-softmax-matmul or "
        "F.scaled_dot_product_attention; ignored by networks without attention.",
    )
    optimizer_impl: Literal["auto", "foreach", "for_loop", "fused"] = Field(
        "auto", description="torch optimiser implementation (ignored by OBProx-SG)."
    )
    compile: Literal["auto"] | bool = Field(
        "auto",
        description="torch.compile the training forward: true/false (YAML's on/off too); "
        "auto: on for the models measured faster compiled, on CPU, in long runs (fastpath).",
    )
    online_fold: Literal["auto"] | bool = Field(
        "auto",
        description="Run re-parameterisable train-time blocks (FMEN RRRB, SPAN Conv3XC) as the "
        "one conv they equal, folded every step: true/false; auto: on where the network has "
        "them (same function and gradients, fewer FLOPs), except in a resumed run saved "
        "before this option existed.",
    )


class OptimConfig(Section):
    """The optimisation: iterations, learning rate and its schedule, losses, precision."""

    iterations: PositiveInt = Field(description="Total optimiser steps.")
    lr: PositiveFloat = Field(description="Base learning rate (the schedule scales it).")
    optimizer: OptimizerConfig = Field(default_factory=lambda: AdamConfig(type="adam"))
    scheduler: ScheduleConfig = Field(default_factory=lambda: ConstantSchedule(type="constant"))
    losses: list[LossConfig] = Field(
        default_factory=lambda: [L1LossConfig(type="l1")],
        min_length=1,
        description="Terms of the loss, each with its weight; computed on [0,1] images.",
    )
    grad_clip: PositiveFloat | None = Field(None, description="Max gradient L2 norm, or none.")
    ema: EMAConfig | None = None
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Autocast precision of forward/loss (fp16 adds a grad scaler)."
    )
    max_nonfinite_steps: PositiveInt = Field(
        10, description="Stop with an error after this many NaN/Inf steps in a row (each skipped)."
    )
    fast_path: FastPathConfig = Field(default_factory=FastPathConfig)


# -- distillation ---------------------------------------------------------------------------------


class DistillConfig(Section):
    """Teacher-student training (Jiang et al. 2024, eqs. 8-9).

    loss = alpha * (the `train.losses` against the ground truth)
         + L_lap(student, teacher) + L_lap(HF(student), HF(teacher)).
    The teacher is frozen (eval mode, no gradients) and may be any architecture of the same scale.
    """

    teacher: Path = Field(
        description="Teacher weights, any format `slimsr.load` reads (architecture detected)."
    )
    param_key: str | None = Field(
        None, description="Container to read from the teacher file (e.g. params)."
    )
    alpha: NonNegativeFloat = Field(
        0.1, description="Weight of the ground-truth losses (train.losses) in the total."
    )
    levels: PositiveInt = Field(5, description="Levels of the Laplacian pyramids.")
    cache: bool = Field(
        True,
        description="Compute the teacher's outputs once per training image (float16, "
        "memory-mapped) and crop each patch's target from them, instead of running the teacher "
        "on every batch (`slimsr.train.teacher_cache`).",
    )
    cache_dir: Path | None = Field(
        None,
        description="Folder of the teacher caches (one per teacher, data and LR mode); "
        "default: output_dir/teacher_cache.",
    )

    @field_validator("teacher")
    @classmethod
    def _teacher_exists(cls, v: Path, info: ValidationInfo) -> Path:
        checked = check_path(v, info, "file")
        assert checked is not None
        return checked


# -- quantisation ---------------------------------------------------------------------------------


class QuantConfig(Section):
    """Quantisation-aware training for full-integer INT8 deployment (`slimsr.quant.qat`).

    The network trains through fake quantisation: per-channel symmetric int8 weights, per-tensor
    8-bit activations, uint8 pixels in and out, as the INT8 TFLite file will compute. Ranges
    start from min/max calibration on training patches (PTQ quality), then follow an EMA of
    each batch's min/max. Exported weights are the float network with the ranges in their
    sidecar: `slimsr export tflite --qat-weights FILE` writes the INT8 file with those ranges.
    """

    qat: bool = Field(False, description="Train with fake quantisation (plain-conv models only).")
    calibration_batches: PositiveInt = Field(
        8, description="Batches of training patches (data.train sizes) for the initial ranges."
    )
    range_decay: float = Field(
        0.999, gt=0, lt=1, description="EMA decay of the activation ranges while training."
    )
    freeze_ranges_iter: NonNegativeInt | None = Field(
        None, description="Iteration from which the ranges stay fixed; null: never."
    )


# -- run ------------------------------------------------------------------------------------------


class LoggingConfig(Section):
    print_every: PositiveInt = Field(100, description="Iterations between log lines.")
    val_every: PositiveInt = Field(5000, description="Iterations between validations.")
    checkpoint_every: PositiveInt = Field(5000, description="Iterations between checkpoints.")
    keep_checkpoints: PositiveInt = Field(2, description="Newest training states kept.")
    tensorboard: bool = Field(True, description="TensorBoard scalars (if installed).")
    progress: Literal["auto", "bar", "lines", "none"] = Field(
        "auto", description="auto: a progress bar on a terminal, log lines otherwise."
    )


RUN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class TrainConfig(Section):
    """A complete training recipe (`slimsr train RECIPE.yaml`)."""

    name: str = Field(description="Run name; the run folder is output_dir/name.")
    output_dir: Path = Field(Path("runs"), description="Parent folder of run folders.")
    seed: NonNegativeInt = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    auto_resume: bool = Field(
        False, description="Continue from the newest checkpoint if the run folder has one."
    )
    model: ModelConfig
    data: DataConfig
    train: OptimConfig
    distill: DistillConfig | None = Field(
        None, description="Knowledge distillation from a frozen teacher (omit for plain training)."
    )
    quant: QuantConfig | None = Field(
        None, description="Quantisation-aware training (quant.qat: true); omit for float."
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not RUN_NAME_PATTERN.match(v):
            raise ValueError("use letters, digits and _ . + - only (it names a folder)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        from slimsr.registry import get_model_info

        info = get_model_info(self.model.name)
        patch = self.data.train.patch_size
        if patch % info.size_multiple:
            raise ValueError(
                f"data.train.patch_size {patch} must be a multiple of {info.size_multiple} "
                f"for {info.name} (its window)"
            )
        if patch < info.min_size:
            raise ValueError(
                f"data.train.patch_size {patch} is below {info.name}'s minimum input "
                f"{info.min_size}"
            )
        precision = self.train.precision
        if (precision == "fp16" and not info.supports_fp16) or (
            precision == "bf16" and not info.supports_bf16
        ):
            raise ValueError(f"train.precision {precision} is not supported by {info.name}")
        sched = self.train.scheduler
        if isinstance(sched, MultiStepSchedule) and sched.milestones[-1] > self.train.iterations:
            raise ValueError(
                f"train.scheduler.milestones go past train.iterations ({self.train.iterations})"
            )
        if self.quant is not None and self.quant.qat and self.train.precision != "fp32":
            # (that the network is a plain-conv graph needs it built: `recipe.check_model`)
            raise ValueError("quant.qat needs train.precision fp32 (fake quantisation is float32)")
        return self


def json_schema() -> dict[str, Any]:
    """The JSON schema of a recipe (`slimsr train --print-schema`)."""
    return TrainConfig.model_json_schema()
