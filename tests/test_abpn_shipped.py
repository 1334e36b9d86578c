"""The ABPN x3 shipped with the package: float, PTQ and QAT INT8 files and their recorded PSNR."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import slimsr
from slimsr.data.folders import dataset_from_root
from slimsr.evaluate import evaluate_dataset
from tests.conftest import shared_file

ABPN = Path(slimsr.__file__).resolve().parent / "weights" / "abpn"
METRICS = json.loads((ABPN / "abpn_x3.metrics.json").read_text())["results"]


def set5_rgb(upscale) -> float:
    data = dataset_from_root(shared_file("datasets", "Set5"), 3, generate_lr=True)
    return evaluate_dataset(upscale, data, 3, protocol="rgb").mean("psnr")


def test_float_weights_reproduce_their_metrics() -> None:
    model = slimsr.load(ABPN / "abpn_x3.safetensors")
    assert model.info.name == "abpn" and model.scale == 3
    assert set5_rgb(model) == pytest.approx(METRICS["float (PyTorch)"]["Set5"]["psnr"], abs=2e-3)


@pytest.mark.parametrize("variant", ["ptq", "qat"])
def test_int8_tflite_files_lose_at_most_005_db_against_float(variant: str) -> None:
    pytest.importorskip("ai_edge_litert", reason="needs the tflite extra (ai-edge-litert)")
    from slimsr.export.runners import load_runner

    runner = load_runner(ABPN / f"abpn_x3_int8_{variant}.tflite", 3, tflite_io="uint8")
    psnr = set5_rgb(runner)
    label = next(k for k in METRICS if variant.upper() in k)
    assert psnr == pytest.approx(METRICS[label]["Set5"]["psnr"], abs=2e-3)
    # issue 18's bound for the INT8 loss (measured: QAT 0.033, PTQ 0.047 dB)
    assert METRICS["float (PyTorch)"]["Set5"]["psnr"] - psnr <= 0.05
