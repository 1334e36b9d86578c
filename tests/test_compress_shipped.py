"""The compressed model shipped with the package: it loads, has the sized shape and its metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import slimsr
from slimsr.evaluate import dataset_from_root, evaluate_dataset
from tests.conftest import shared_file

COMPRESSED = Path(slimsr.__file__).resolve().parent / "weights" / "compressed"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_shipped_edsrmini_has_the_sized_shape_and_reproduces_its_metrics() -> None:
    model = slimsr.load(COMPRESSED / "edsrmini_x2.safetensors")
    assert model.info.name == "edsrmini" and model.scale == 2
    assert model.num_parameters() == 49_603  # (N_c, N_l, N_b) = (16, 1, 8) at x2
    compact = json.loads((COMPRESSED / "edsrmini_x2.report.json").read_text())
    assert "edsrmini" in json.dumps(compact)
    metrics = json.loads((COMPRESSED / "edsrmini_x2.metrics.json").read_text())
    res = evaluate_dataset(model, dataset_from_root(shared_file("datasets", "Set5"), 2), 2)
    assert res.mean("psnr") == pytest.approx(metrics["results"]["Set5"]["psnr"], abs=2e-3)
    assert res.mean("ssim") == pytest.approx(metrics["results"]["Set5"]["ssim"], abs=2e-4)
