"""scripts/ship_trained.py: a finished train run becomes a shipped model with its record."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch
import yaml

import slimsr
from slimsr.data.folders import dataset_from_root
from slimsr.errors import SlimsrError
from slimsr.evaluate import evaluate_dataset
from slimsr.train import load_config, train
from tests.train_utils import tiny_recipe, write_images

pytestmark = pytest.mark.usefixtures("one_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL_FMEN = {"n_feats": 8, "mid_feats": 6, "down_blocks": 1, "up_blocks": [1, 1]}


def load_script(name: str):
    """scripts/NAME.py as a module, with scripts/ on the path for its imports (shipping.py,
    campaign.py): the ship scripts are not part of the package."""
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO_ROOT / "scripts"))
    return module


def load_ship_trained():
    return load_script("ship_trained")


def small_shared(root: Path) -> Path:
    """A stand-in for ../shared: Set5, Set14 and B100 of two small HR images each."""
    for i, name in enumerate(("Set5", "Set14", "B100")):
        write_images(root / "datasets" / name / "HR", [(24, 20), (20, 28)], seed=10 + i)
    return root


def test_train_form_run_ships_its_deploy_form_with_record_and_metrics(tmp_path: Path) -> None:
    ship_trained = load_ship_trained()
    over = {"model__name": "fmen_s_train", "model__kwargs": SMALL_FMEN}
    run = train(load_config(tiny_recipe(tmp_path, "fmen", **over))).run_dir
    shared = small_shared(tmp_path / "shared")
    official = tmp_path / "official.safetensors"
    torch.manual_seed(0)
    slimsr.save(slimsr.create_model("fmen_s", 2, **SMALL_FMEN), official)

    dest = tmp_path / "trained"
    path = ship_trained.ship(run, dest, shared, "test run", reference=official, floor=31.8)
    metrics = json.loads(path.read_text())
    shipped = slimsr.load(dest / "fmen_s_x2.safetensors")
    # the deploy form, bit for bit the run's final_deploy, not the train-time form
    assert shipped.name == "fmen_s" and metrics["weights"] == "final_deploy.safetensors"
    deploy = slimsr.load(run / "weights" / "final_deploy.safetensors")
    for key, value in deploy.net.state_dict().items():
        assert torch.equal(shipped.net.state_dict()[key], value)
    # the metrics are what the shipped weights give, and the reference's are its own
    data = dataset_from_root(shared / "datasets" / "Set5", 2)
    assert metrics["results"]["Set5"]["psnr"] == pytest.approx(
        evaluate_dataset(shipped, data, 2).mean("psnr"), abs=1e-4
    )
    ref_psnr = metrics["reference"]["results"]["Set5"]["psnr"]
    assert ref_psnr == pytest.approx(
        evaluate_dataset(slimsr.load(official), data, 2).mean("psnr"), abs=1e-4
    )
    assert metrics["training"]["iterations"] == 8 and metrics["training"]["legs"] == 1
    assert 0 <= metrics["training"]["hours"] < 0.5 and metrics["training"]["it_per_s_mean"] > 0
    assert metrics["results"]["Set5"]["images"] == 2
    assert metrics["quality_floor_set5"] == 31.8 and metrics["params"] == shipped.num_parameters()
    assert yaml.safe_load((dest / "fmen_s_x2.config.yaml").read_text())["name"] == "fmen"
    assert (dest / "fmen_s_x2.json").is_file()


def stretch_log(run: Path, hours: float) -> None:
    """Move the run's last event `hours` after its first: a leg of known length."""
    lines = (run / "train.jsonl").read_text().splitlines()
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    start = datetime.fromisoformat(first["time"])
    last["time"] = (start + timedelta(hours=hours)).isoformat()
    (run / "train.jsonl").write_text("\n".join([*lines[:-1], json.dumps(last)]) + "\n")


def test_a_second_stage_ships_with_the_record_of_the_stage_it_continued(tmp_path: Path) -> None:
    ship_trained = load_ship_trained()
    first = train(load_config(tiny_recipe(tmp_path, "stage1"))).run_dir
    stretch_log(first, 2.0)
    start = first / "weights" / "final.safetensors"
    over = {"model__pretrained": str(start), "train__iterations": 4}
    second = train(load_config(tiny_recipe(tmp_path, "stage2", **over))).run_dir
    shared = small_shared(tmp_path / "shared")

    path = ship_trained.ship(second, tmp_path / "out", shared, "two stages", after=[first])
    training = json.loads(path.read_text())["training"]
    assert training["iterations"] == 4  # the last stage's own record stays as it was
    (earlier,) = training["after"]
    assert earlier["run"] == "stage1" and earlier["iterations"] == earlier["of"] == 8
    assert earlier["hours"] == pytest.approx(2.0, abs=0.01)
    assert training["total_iterations"] == 12
    assert training["total_hours"] == pytest.approx(2.0 + training["hours"], abs=0.01)
    assert "exact_hours" not in training and "exact_hours" not in earlier
    # a run the shipped one did not start from is not its earlier stage, even by the same name
    twin = train(load_config(tiny_recipe(tmp_path / "elsewhere", "stage1"))).run_dir
    unrelated = train(load_config(tiny_recipe(tmp_path, "other"))).run_dir
    for wrong, later in ((twin, second), (unrelated, second), (second, first)):
        with pytest.raises(SlimsrError, match="did not start from"):
            ship_trained.ship(later, tmp_path / "out2", shared, "t", after=[wrong])
    # nor is a run started from the earlier one's checkpoint rather than its final weights
    ckpt = sorted((first / "checkpoints").glob("*.pt"))[0]
    over = {"model__pretrained": str(ckpt), "train__iterations": 4}
    from_ckpt = train(load_config(tiny_recipe(tmp_path, "from_ckpt", **over))).run_dir
    with pytest.raises(SlimsrError, match="did not start from"):
        ship_trained.ship(from_ckpt, tmp_path / "out2", shared, "t", after=[first])
    assert not (tmp_path / "out2").exists()
    # an unreadable recipe or log is one line too, not a traceback
    (second / "config.yaml").write_text("model: [unclosed")
    with pytest.raises(SlimsrError, match="cannot be read as a run's recipe"):
        ship_trained.ship(second, tmp_path / "out2", shared, "t", after=[first])
    script = REPO_ROOT / "scripts" / "ship_trained.py"
    args = [
        str(second),
        "--after",
        str(first),
        "--produced-by",
        "t",
        "--to",
        str(tmp_path / "out2"),
    ]
    res = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "cannot be read as a run's recipe" in res.stderr
    assert not (tmp_path / "out2").exists()


def test_unfinished_run_or_other_reference_is_refused(tmp_path: Path) -> None:
    ship_trained = load_ship_trained()
    recipe = tiny_recipe(tmp_path, "edsr")
    run = train(load_config(recipe)).run_dir
    shared = small_shared(tmp_path / "shared")
    other = tmp_path / "other.safetensors"
    slimsr.save(slimsr.create_model("edsrmini", 3, num_feat=4, num_block=1), other)
    with pytest.raises(SlimsrError, match=r"reference .* is edsrmini x3"):
        ship_trained.ship(run, tmp_path / "out", shared, "t", reference=other)
    assert not (tmp_path / "out").exists()  # nothing half-shipped
    # an image that cannot be read stops the measurement before anything is written
    (shared / "datasets" / "Set14" / "HR" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(SlimsrError, match="Set14: 1 of 3 images failed"):
        ship_trained.ship(run, tmp_path / "out", shared, "t")
    assert not (tmp_path / "out").exists()
    (run / "weights" / "final.safetensors").unlink()
    with pytest.raises(SlimsrError, match="has not finished"):
        ship_trained.ship(run, tmp_path / "out", shared, "t")


def test_command_line_refuses_bad_input_in_one_line_with_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = REPO_ROOT / "scripts" / "ship_trained.py"
    for args in (
        [str(tmp_path / "no_run"), "--produced-by", "t", "--to", str(out)],
        [str(tmp_path), "--produced-by", "t", "--to", str(out)],  # a folder, not a run
    ):
        res = subprocess.run(
            [sys.executable, str(script), *args], capture_output=True, text=True, check=False
        )
        assert res.returncode == 2, res.stderr
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ")
        assert "not a slimsr run folder" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()
