"""The weights shipped in the package: present, self-describing, better than bicubic, tileable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimsr.evaluate import dataset_from_root, evaluate_dataset
from slimsr.imaging import read_image
from slimsr.tiling import upscale_tiled
from slimsr.weights import bundled_path, bundled_scales, default_model
from tests.conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "src" / "slimsr" / "assets" / "example.png"


def test_at_least_one_model_is_bundled_with_its_training_record() -> None:
    scales = bundled_scales()
    assert scales, "no bundled weights: `slimsr upscale` would have no default model"
    for scale in scales:
        path = bundled_path(scale)
        assert path.stat().st_size < 1_000_000  # small enough to ship in the wheel
        meta = json.loads(path.with_suffix(".json").read_text())
        assert meta["scale"] == scale and meta["arch"] == "edsrmini"
        assert meta["training"]["config_sha256"]
        assert meta["training"]["validation"]["psnr"] > 30
        assert path.with_name(f"default_x{scale}.config.yaml").is_file()
        assert path.with_name(f"default_x{scale}.metrics.json").is_file()


@pytest.mark.parametrize("scale", bundled_scales())
def test_bundled_model_beats_bicubic_on_set5(scale: int) -> None:
    model = default_model(scale)
    res = evaluate_dataset(model, dataset_from_root(shared_file("datasets", "Set5"), scale), scale)
    assert res.mean("psnr") > res.mean("bicubic_psnr") + 1.5


@pytest.mark.parametrize("scale", bundled_scales())
def test_bundled_model_tiles_without_seams(scale: int) -> None:
    model = default_model(scale)
    x = read_image(EXAMPLE).rgb[None]
    with torch.inference_mode():
        whole = model(x).clamp(0, 1)
        tiled = upscale_tiled(model, x, scale, 48, 16).clamp(0, 1)
    assert ((whole - tiled).abs() <= 1 / 255).float().mean().item() >= 0.999


def test_readme_main_job_runs_offline(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "slimsr", "upscale", str(EXAMPLE), "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (result,) = tmp_path.iterdir()
    scale = default_model().scale
    assert read_image(result).tensor.shape == (3, 128 * scale, 192 * scale)
