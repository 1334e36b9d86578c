"""Benchmark evaluation: run a model on HR/LR pairs, score it the way the papers do.

The protocol details that decide whether a number compares with a paper live in
`slimsr.metrics` (quantisation, border crop, Y of BT.601) and `slimsr.imaging.resize` (MATLAB
bicubic); pairing files in folders lives in `slimsr.data.folders`. This module only runs the
model on the pairs and collects rows; a pair that does not
fit (missing LR, sizes that disagree with the scale) becomes a row with an error, never a silent
skip, so a table always accounts for every HR image.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from slimsr.data.folders import DataError, ImagePair, PairedFolder
from slimsr.errors import SlimsrError
from slimsr.imaging import imresize, modcrop, read_image, write_image
from slimsr.metrics import evaluate_pair

Upscaler = Callable[[Tensor], Tensor]
"""(1,3,h,w) float in [0,1] -> (1,3,h*s,w*s): a model, an ensemble, or bicubic."""


@dataclass
class Row:
    dataset: str
    image: str
    psnr: float | None = None
    ssim: float | None = None
    bicubic_psnr: float | None = None
    bicubic_ssim: float | None = None
    error: str | None = None


@dataclass
class DatasetResult:
    dataset: str
    lr_source: str
    rows: list[Row] = field(default_factory=list)

    @property
    def ok_rows(self) -> list[Row]:
        return [r for r in self.rows if r.error is None]

    def mean(self, key: str) -> float | None:
        values = [getattr(r, key) for r in self.ok_rows]
        values = [v for v in values if v is not None and math.isfinite(v)]
        return sum(values) / len(values) if values else None

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "lr_source": self.lr_source,
            "images": len(self.rows),
            "failed": len(self.rows) - len(self.ok_rows),
            "mean": {k: self.mean(k) for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")},
            "rows": [asdict(r) for r in self.rows],
        }


# -- running ------------------------------------------------------------------------------------


def self_ensemble(upscale: Upscaler) -> Upscaler:
    """x8 geometric self-ensemble: average over the 8 flips/rotations, each undone."""

    def run(x: Tensor) -> Tensor:
        total = None
        for k in range(4):
            for flip in (False, True):
                t = torch.rot90(x, k, (-2, -1))
                t = t.flip(-1) if flip else t
                y = upscale(t)
                y = y.flip(-1) if flip else y
                y = torch.rot90(y, -k, (-2, -1))
                total = y.float() if total is None else total + y.float()
        assert total is not None
        return total / 8

    return run


def bicubic_upscaler(scale: int) -> Upscaler:
    """MATLAB bicubic upscaling (float, no rounding): the baseline row of every SR table."""
    return lambda x: imresize(x, scale)


def model_upscaler(
    model: torch.nn.Module,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    fuse: bool | None = None,
) -> Upscaler:
    """An `SRModel` on the fast inference path (`slimsr.inference_form`): fused form and memory
    format as measured fastest, inputs converted to the model's device, dtype and layout.
    Outputs equal the plain model's to float rounding (PSNR unchanged to 0.01 dB)."""
    from slimsr.inference_form import prepare_for_inference, run_inference

    fast = prepare_for_inference(model, device, dtype, fuse=fuse)
    return lambda x: run_inference(fast, x)


def safe_file_name(name: str) -> str:
    """`name` with every run of characters other than letters, digits, `.`, `-`, `_` made `_`."""
    return re.sub(r"[^\w.-]+", "_", name)


def evaluate_dataset(
    upscale: Upscaler,
    dataset: PairedFolder,
    scale: int,
    *,
    protocol: str = "basicsr",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    save_dir: Path | None = None,
    on_image: Callable[[Row], None] | None = None,
    on_output: Callable[[str, Tensor, Tensor, Tensor], None] | None = None,
) -> DatasetResult:
    """Score `upscale` on every pair of `dataset`; bicubic is scored on the same pairs.

    `on_output(image, sr, bicubic, hr)` sees each scored image's (C,H,W) tensors (the report's
    crops are cut there), so no caller has to keep whole images of a dataset in memory.
    """
    result = DatasetResult(dataset.name, dataset.lr_source)
    bicubic = bicubic_upscaler(scale)
    for pair in dataset.pairs:
        row = Row(dataset.name, pair.name)
        try:
            hr, lr = _load_pair(pair, scale)
            with torch.inference_mode():
                sr = upscale(lr.to(device=device, dtype=dtype)[None]).float().cpu()[0]
                bic = bicubic(lr[None])[0]
            metrics = evaluate_pair(sr, hr, scale, protocol=protocol)  # type: ignore[arg-type]
            base = evaluate_pair(bic, hr, scale, protocol=protocol)  # type: ignore[arg-type]
            row.psnr, row.ssim = metrics["psnr"], metrics["ssim"]
            row.bicubic_psnr, row.bicubic_ssim = base["psnr"], base["ssim"]
            if save_dir is not None:
                _save_outputs(save_dir / safe_file_name(dataset.name), pair.name, sr, bic, hr)
            if on_output is not None:
                on_output(pair.name, sr, bic, hr)
        except SlimsrError as exc:  # this image is reported as failed; the others still run
            row.error = str(exc)
        result.rows.append(row)
        if on_image is not None:
            on_image(row)
    return result


def _load_pair(pair: ImagePair, scale: int) -> tuple[Tensor, Tensor]:
    """HR modcropped to the scale, and its LR (read or generated); sizes checked."""
    hr = modcrop(read_image(pair.hr).rgb, scale)
    if pair.lr is None:
        return hr, imresize(hr, 1.0 / scale, mode="uint8")
    if not pair.lr.exists():
        raise DataError(f"no LR image for {pair.hr.name} (looked for {pair.lr.name})")
    lr = read_image(pair.lr).rgb
    expected = (hr.shape[-2] // scale, hr.shape[-1] // scale)
    if tuple(lr.shape[-2:]) != expected:
        raise DataError(
            f"{pair.lr.name} is {lr.shape[-1]}x{lr.shape[-2]}, but {pair.hr.name} modcropped to "
            f"x{scale} needs {expected[1]}x{expected[0]}"
        )
    return hr, lr


def _save_outputs(folder: Path, name: str, sr: Tensor, bic: Tensor, hr: Tensor) -> None:
    """SR image, plus a side-by-side crop (bicubic | SR | HR) around the most detailed area."""
    write_image(sr.clamp(0, 1), folder / f"{name}.png")
    write_image(comparison_strip([bic, sr, hr]), folder / f"{name}_compare.png")


def detail_window(hr: Tensor, size: int) -> tuple[int, int]:
    """Top-left of the `size` window with the most gradient energy (where SR differs most)."""
    gray = hr.mean(0, keepdim=True)[None]
    grad = (gray[..., 1:, :-1] - gray[..., :-1, :-1]).abs() + (
        gray[..., :-1, 1:] - gray[..., :-1, :-1]
    ).abs()
    k = min(size, grad.shape[-2], grad.shape[-1])
    energy = torch.nn.functional.avg_pool2d(grad, k, stride=max(1, k // 4))
    idx = int(energy.flatten().argmax())
    cols = energy.shape[-1]
    stride = max(1, k // 4)
    return (idx // cols) * stride, (idx % cols) * stride


def comparison_strip(images: Iterable[Tensor], size: int = 128, gap: int = 4) -> Tensor:
    """Crops of the same window from each (C,H,W) image, side by side with white gaps."""
    images = [im.clamp(0, 1) for im in images]
    ref = images[-1]
    size = min(size, ref.shape[-2], ref.shape[-1])
    top, left = detail_window(ref, size)
    crops = [im[:, top : top + size, left : left + size] for im in images]
    spacer = torch.ones(3, size, gap)
    parts: list[Tensor] = []
    for i, crop in enumerate(crops):
        parts += [crop] if i == 0 else [spacer, crop]
    return torch.cat(parts, dim=-1)
