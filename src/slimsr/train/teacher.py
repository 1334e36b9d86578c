"""The frozen teacher of a distillation run (`distill:`), as the `Trainer` holds it.

Loaded once and checked against the student's scale; it runs under the student's autocast
unless its registry entry says it is unsafe in that precision. With `distill.cache` it runs once
over every whole training image (`teacher_cache.py` stores the outputs, larger images go through
`tiling.upscale_tiled`) and the network is then released: the targets come from the cache.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from slimsr.data import PairStore
from slimsr.errors import SlimsrError
from slimsr.factory import load
from slimsr.fileio import file_sha256
from slimsr.model import SRModel
from slimsr.registry import ModelInfo
from slimsr.tiling import upscale_tiled
from slimsr.train import distributed as ddp
from slimsr.train.config import ConfigError, DistillConfig
from slimsr.train.losses import DistillationLoss
from slimsr.train.teacher_cache import TeacherOutputs, cache_key, ensure_cache, open_cache
from slimsr.upscale import activation_bytes_per_pixel, auto_tile_for_budget

TEACHER_BUILD_BUDGET_MB = 2048
"""Working memory of one teacher forward while the teacher cache is built: a larger training
image is run in overlapping tiles (`slimsr.tiling.upscale_tiled`)."""

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def teacher_precision(info: ModelInfo, precision: str) -> str:
    """The student's `precision` if the teacher is safe in it, else "fp32"."""
    dtype = _AMP_DTYPES.get(precision)
    if (dtype == torch.bfloat16 and info.supports_bf16) or (
        dtype == torch.float16 and info.supports_fp16
    ):
        return precision
    return "fp32"


class Teacher:
    """The teacher model, the precision it runs in, what the run records of it, the
    distillation loss against it and, once `prepare_cache` ran, its cached outputs."""

    def __init__(
        self, config: DistillConfig, scale: int, precision: str, device: torch.device
    ) -> None:
        model = load(config.teacher, param_key=config.param_key)
        if model.scale != scale:
            raise ConfigError(
                f"distill.teacher {config.teacher} is a x{model.scale} model ({model.name}); "
                f"it cannot teach a x{scale} student"
            )
        for p in model.parameters():
            p.requires_grad_(False)
        self.config = config
        self.device = device
        self.scale = model.scale
        self.model: SRModel | None = model.to(device).eval()
        """None once the cache holds the outputs."""
        self.precision = teacher_precision(model.info, precision)
        self.record: dict[str, Any] = {
            "path": str(config.teacher),
            "sha256": file_sha256(config.teacher),
            "model": model.name,
            "params": model.num_parameters(),
        }
        self.loss = DistillationLoss(config.levels)
        self.outputs: TeacherOutputs | None = None
        self.cache_report: dict[str, Any] | None = None

    def autocast(self) -> AbstractContextManager[Any]:
        dtype = _AMP_DTYPES.get(self.precision, torch.float32)
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.precision != "fp32")

    def run(self, lr_img: Tensor) -> Tensor:
        """The frozen teacher's raw output (eval mode, unclamped, no gradients)."""
        assert self.model is not None
        with torch.no_grad(), self.autocast():
            return self.model.raw(lr_img)

    def target(self, lr_img: Tensor, cached: Tensor | None) -> Tensor:
        """The teacher's output for a batch: its cached patches (float16) if given, else a run."""
        if cached is not None:
            return cached.to(self.device, non_blocking=True).float()
        return self.run(lr_img)

    def prepare_cache(
        self,
        store: PairStore,
        output_dir: Path | str,
        lr_mode: str,
        dist: ddp.DistInfo,
        progress: bool,
    ) -> None:
        """`distill.cache`: the teacher's outputs on every whole training image, built once
        (rank 0; the other ranks wait) or reused; the teacher network is then released."""
        if not self.config.cache:
            return
        assert self.model is not None
        folder = self.config.cache_dir or Path(output_dir) / "teacher_cache"
        key = cache_key(
            teacher_sha256=self.record["sha256"],
            param_key=self.config.param_key,
            precision=self.precision,
            scale=self.scale,
            lr_mode=lr_mode,
            images=store.identities,
        )
        bpp = activation_bytes_per_pixel(self.model.net)
        tile = auto_tile_for_budget(bpp, TEACHER_BUILD_BUDGET_MB, self.model.info.size_multiple)

        def run(x: Tensor) -> Tensor:
            x = x.to(self.device)
            if x.shape[-2] * x.shape[-1] * bpp <= TEACHER_BUILD_BUDGET_MB * 2**20:
                return self.run(x)
            return upscale_tiled(self.run, x, self.scale, tile)

        failure: SlimsrError | None = None
        if dist.is_main:
            try:
                outputs, report = ensure_cache(
                    folder,
                    key,
                    lambda i: store[i].float_pair()[1],
                    run,
                    progress=progress,
                )
                self.outputs = outputs
                self.cache_report = report.as_dict()
            except SlimsrError as exc:
                failure = exc
        if ddp.any_rank(failure is not None, dist):  # also the others' wait for rank 0
            raise failure or SlimsrError("the first process could not build the teacher cache")
        if not dist.is_main:
            self.outputs = open_cache(folder, key)
            if self.outputs is None:
                raise SlimsrError(f"teacher cache in {folder}: not readable by every process")
        self.model = None  # the targets come from the cache from now on
