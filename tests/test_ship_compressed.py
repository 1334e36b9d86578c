"""scripts/ship_compressed.py: a finished `slimsr compress` run becomes a shipped model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import slimsr
from slimsr.data.folders import dataset_from_root
from slimsr.errors import SlimsrError
from slimsr.evaluate import evaluate_dataset
from tests.test_compress_cli import setup_recipe
from tests.test_ship_trained import load_script, small_shared
from tests.test_train_cli import slimsr_here

pytestmark = pytest.mark.usefixtures("one_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "ship_compressed.py"


def load_ship_compressed():
    return load_script("ship_compressed")


@pytest.fixture(scope="module")
def compressed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny compress run (prune, size, distill), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("compress")
    out = slimsr_here("compress", str(setup_recipe(tmp)))
    assert out.returncode == 0, out.stderr
    return tmp / "runs" / "cmp"


def test_a_run_ships_under_the_name_asked_with_its_record(
    compressed_run: Path, tmp_path: Path
) -> None:
    ship = load_ship_compressed().ship
    shared = small_shared(tmp_path / "shared")
    dest = tmp_path / "compressed"
    # a compact model of the original's own family ships under its own name (BSRN -> bsrnmini)
    path = ship(compressed_run, dest, shared, "test run", name="tinymini")
    assert path == dest / "tinymini_x2.metrics.json"
    for suffix in ("safetensors", "json", "compress.yaml", "density.json", "report.json"):
        assert (dest / f"tinymini_x2.{suffix}").is_file(), suffix
    student = slimsr.load(compressed_run / "student.safetensors")
    shipped = slimsr.load(dest / "tinymini_x2.safetensors")
    assert shipped.name == student.name == "edsrmini" and shipped.kwargs == student.kwargs
    for key, value in student.net.state_dict().items():
        assert torch.equal(shipped.net.state_dict()[key], value)
    metrics = json.loads(path.read_text())
    assert metrics["shipped_as"] == "tinymini_x2" and metrics["params"] == shipped.num_parameters()
    # no paper figure for a model outside Table I: no entry at all, not an empty one
    assert not any(key.startswith("paper") for key in metrics)
    data = dataset_from_root(shared / "datasets" / "Set5", 2)
    assert metrics["results"]["Set5"]["psnr"] == pytest.approx(
        evaluate_dataset(shipped, data, 2).mean("psnr"), abs=1e-4
    )
    density = json.loads((dest / "tinymini_x2.density.json").read_text())
    assert density == json.loads((compressed_run / "density.json").read_text())
    # without --name the stem is the student's registered name
    path = ship(compressed_run, dest, shared, "t")
    assert path.name == "edsrmini_x2.metrics.json"
    assert json.loads(path.read_text())["paper (Jiang et al. 2024, Table I)"]["Set5"] == [
        37.67,
        0.9597,
    ]


def test_bad_input_is_refused_before_anything_is_written(
    compressed_run: Path, tmp_path: Path
) -> None:
    ship = load_ship_compressed().ship
    shared = small_shared(tmp_path / "shared")
    out = tmp_path / "out"
    for name in ("../escape", "Big", "a/b"):
        with pytest.raises(SlimsrError, match="not a plain lower-case file stem"):
            ship(compressed_run, out, shared, "t", name=name)
    with pytest.raises(SlimsrError, match="ends in a scale"):
        ship(compressed_run, out, shared, "t", name="tiny_x2")
    # the EDSRmini student must not overwrite the shipped SwinIRmini's files
    with pytest.raises(SlimsrError, match="'swinirmini' is another registered model"):
        ship(compressed_run, out, shared, "t", name="swinirmini")
    (shared / "datasets" / "B100" / "HR" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(SlimsrError, match="B100: 1 of 3 images failed"):
        ship(compressed_run, out, shared, "t")
    assert not out.exists()
    (compressed_run / "report.json").rename(tmp_path / "report.json")
    try:
        with pytest.raises(SlimsrError, match=r"lacks report\.json: not a whole compress run"):
            ship(compressed_run, out, shared, "t")
    finally:
        (tmp_path / "report.json").rename(compressed_run / "report.json")
    assert not out.exists()
    res = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), "--produced-by", "t", "--to", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "has not finished stage 3" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()
