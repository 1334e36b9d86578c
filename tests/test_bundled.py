"""The weights shipped in the package: present, self-describing, better than bicubic, tileable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimsr.data.folders import dataset_from_root
from slimsr.evaluate import evaluate_dataset
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
        if "compression" in meta:  # made by `slimsr compress`: its recipe and teacher
            assert meta["compression"]["recipe"] and meta["compression"]["teacher"]
        else:  # made by `slimsr train`: the recipe's hash and the run's own validation
            assert meta["training"]["config_sha256"]
            assert meta["training"]["validation"]["psnr"] > 30
        assert path.with_name(f"default_x{scale}.config.yaml").is_file()
        assert path.with_name(f"default_x{scale}.metrics.json").is_file()


QUALITY_FLOOR = {2: 37.0, 3: 33.3, 4: 31.0}
"""Set5 Y-PSNR each bundled model must reach (issue 7)."""


@pytest.mark.parametrize("scale", bundled_scales())
def test_bundled_model_reaches_its_floor_and_its_recorded_metrics_on_set5(scale: int) -> None:
    model = default_model(scale)
    res = evaluate_dataset(model, dataset_from_root(shared_file("datasets", "Set5"), scale), scale)
    recorded = json.loads(
        bundled_path(scale).with_name(f"default_x{scale}.metrics.json").read_text()
    )
    assert res.mean("psnr") >= QUALITY_FLOOR[scale]
    assert res.mean("psnr") > res.mean("bicubic_psnr") + 2.5
    # the metrics file shipped beside the weights is what the weights give (golden values)
    assert res.mean("psnr") == pytest.approx(recorded["results"]["Set5"]["psnr"], abs=2e-3)
    assert res.mean("ssim") == pytest.approx(recorded["results"]["Set5"]["ssim"], abs=2e-4)


def test_the_three_scales_are_bundled() -> None:
    assert bundled_scales() == [2, 3, 4]


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
