"""Periodic validation: PSNR/SSIM on a folder, scored with `slimsr.metrics` like a paper table."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from slimsr.data import ValImage
from slimsr.evaluate import bicubic_upscaler
from slimsr.metrics import evaluate_pair
from slimsr.model import SRModel


def _mean(rows: Sequence[dict[str, float]], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


@torch.no_grad()
def evaluate_images(
    model: SRModel | None,
    images: Sequence[ValImage],
    scale: int,
    protocol: str = "basicsr",
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Mean PSNR/SSIM over `images` (model=None scores MATLAB bicubic, the baseline row).

    Runs in fp32, one image at a time, the network in eval mode; its mode is restored after.
    """
    upscale = bicubic_upscaler(scale) if model is None else model
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    try:
        rows = []
        for image in images:
            sr = upscale(image.lr[None].to(device)).float().cpu()[0]
            rows.append(evaluate_pair(sr, image.hr, scale, protocol=protocol))  # type: ignore[arg-type]
    finally:
        if model is not None and was_training:
            model.train()
    return {"psnr": _mean(rows, "psnr"), "ssim": _mean(rows, "ssim")}
