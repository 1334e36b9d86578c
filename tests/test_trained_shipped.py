"""Models slimsr trained and ships beside the defaults (src/slimsr/weights/trained/): each loads
in its deploy form, reproduces its recorded metrics, and `-m NAME` finds it without --weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import slimsr
from slimsr.data.folders import dataset_from_root
from slimsr.evaluate import evaluate_dataset
from slimsr.weights import shipped_path
from tests.conftest import shared_file

TRAINED = Path(slimsr.__file__).resolve().parent / "weights" / "trained"
BUNDLED_X4 = Path(slimsr.__file__).resolve().parent / "weights" / "default_x4.metrics.json"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fmen_s_x4_is_the_folded_form_of_a_finished_run_and_reproduces_its_metrics() -> None:
    path = TRAINED / "fmen_s_x4.safetensors"
    model = slimsr.load(path)
    # the deploy form: RRRBs and BatchNorm folded into plain convs (FMEN paper sec. 3.1)
    assert (model.info.name, model.scale, model.num_parameters()) == ("fmen_s", 4, 341_066)
    assert shipped_path("fmen_s", None) == path  # `slimsr upscale -m fmen_s` needs no --weights
    metrics = json.loads((TRAINED / "fmen_s_x4.metrics.json").read_text())
    training = metrics["training"]
    # two finished runs, not a snapshot: stage 2 (LR patch 64) continued stage 1's final weights
    assert training["iterations"] == training["of"] == 10_000
    (stage1,) = training["after"]
    assert stage1["iterations"] == stage1["of"] == 50_000
    assert training["total_iterations"] == 60_000
    config = (TRAINED / "fmen_s_x4.config.yaml").read_text()
    assert "name: fmen_s_train" in config  # trained in its train-time form
    assert "pretrained: campaign/campaign_fmen_s_x4_bf16/weights/final.safetensors" in config
    res = evaluate_dataset(model, dataset_from_root(shared_file("datasets", "Set5"), 4), 4)
    recorded = metrics["results"]["Set5"]
    assert res.mean("psnr") == pytest.approx(recorded["psnr"], abs=2e-3)
    assert res.mean("ssim") == pytest.approx(recorded["ssim"], abs=2e-4)
    # issue 18: better than the bundled default x4 it would stand beside
    bundled = json.loads(BUNDLED_X4.read_text())["results"]["Set5"]["psnr"]
    assert res.mean("psnr") > bundled + 0.3
    # the official weights of the same network, measured the same way, stay the target
    reference = metrics["reference"]["results"]["Set5"]["psnr"]
    assert reference > 32.0 and res.mean("psnr") < reference
