"""`slimsr compress` end to end on a tiny model, stage skipping, bad input, exact resume."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import slimsr
from slimsr.compress import Dims, compact_dims
from slimsr.train import load_config, train
from slimsr.train.config import ConfigError
from tests.test_train_cli import assert_one_line_error, slimsr_here
from tests.test_train_resume import straight_and_resumed
from tests.train_utils import assert_same_optimizer, assert_same_tensors, write_images

REPO_ROOT = Path(__file__).resolve().parents[1]

ORIGINAL = {"num_feat": 8, "num_block": 4}


pytestmark = pytest.mark.usefixtures("one_thread")


def setup_recipe(tmp: Path, name: str = "cmp", **sections: Any) -> Path:
    """A tiny edsrmini (8 features, 4 blocks) x2 to compress, 6 small images, 2 val images."""
    if not (tmp / "hr").exists():
        write_images(tmp / "hr", [(40 + 4 * i, 36 + 2 * i) for i in range(6)], seed=1)
        write_images(tmp / "val", [(32, 32), (36, 28)], seed=2)
        torch.manual_seed(0)
        slimsr.save(slimsr.create_model("edsrmini", 2, **ORIGINAL), tmp / "orig.safetensors")
    recipe: dict[str, Any] = {
        "name": name,
        "output_dir": str(tmp / "runs"),
        "seed": 1,
        "device": "cpu",
        "model": {
            "name": "edsrmini",
            "scale": 2,
            "kwargs": ORIGINAL,
            "pretrained": str(tmp / "orig.safetensors"),
        },
        "data": {
            "train": {
                "sources": [{"hr": str(tmp / "hr")}],
                "patch_size": 8,
                "batch_size": 4,
                "num_workers": 0,
            },
            "val": {"hr": str(tmp / "val")},
        },
        # a strong lambda so that 4 steps prune about half of the deep feature module
        "prune": {"iterations": 4, "lr": 0.05, "lambda_l1": 0.3, "prox_steps": 1},
        "distill": {"train": {"iterations": 3, "lr": 1e-3}},
        "logging": {
            "print_every": 2,
            "val_every": 100,
            "checkpoint_every": 2,
            "tensorboard": False,
            "progress": "none",
        },
    }
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_three_stages_then_rerun_skips_them(tmp_path: Path) -> None:
    recipe = setup_recipe(tmp_path)
    out = slimsr_here("compress", str(recipe))
    assert out.returncode == 0, out.stderr
    run = tmp_path / "runs" / "cmp"

    density = json.loads((run / "density.json").read_text())
    d = density["density"]
    assert 0.2 < d < 0.9  # pruning produced exact zeros
    layers = density["layers"]
    assert [layer["name"] for layer in layers][-1] == "conv_after_body.weight"
    assert sum(layer["nonzero"] for layer in layers) == density["nonzero"]
    assert density["nonzero"] / density["total"] == d
    try:
        import matplotlib  # noqa: F401

        assert (run / "density.png").is_file()
    except ImportError:
        assert "matplotlib is not installed" in out.stdout
    # the density is that of the pruned weights the run exported
    pruned = slimsr.load(run / "prune" / "weights" / "final.safetensors")
    deep = [p for n, p in pruned.net.named_parameters() if n.startswith(("body.", "conv_after"))]
    deep = [p for p in deep if p.dim() > 1]
    assert sum(int((p != 0).sum()) for p in deep) == density["nonzero"]

    expected = compact_dims(Dims(8, 1, 4), d, layer_bounds=(1, 1)).compact
    assert expected != Dims(8, 1, 4)
    compact = json.loads((run / "compact.json").read_text())
    assert compact["sizing"]["compact"] == expected.as_dict()
    student = slimsr.load(run / "student.safetensors")
    assert student.name == "edsrmini"
    assert student.net.conv_first.out_channels == expected.channels
    assert len(student.net.body) == expected.blocks
    assert (run / "student.json").is_file()
    assert (run / "distill" / "weights" / "final.safetensors").is_file()

    report = json.loads((run / "report.json").read_text())
    rows = {row["role"]: row for row in report["models"]}
    assert set(rows) == {"original", "compact"}  # the teacher is the original here
    assert rows["compact"]["params"] == student.num_parameters()
    assert rows["original"]["params"] == slimsr.load(tmp_path / "orig.safetensors").num_parameters()
    assert rows["compact"]["flops"]["macs"] < rows["original"]["flops"]["macs"]
    assert rows["compact"]["psnr"] > 0 and report["validation"]["images"] == 2
    assert "compact" in out.stdout and "PSNR" in out.stdout

    artifacts = [run / n for n in ("density.json", "compact.json", "student.safetensors")]
    stamps = [p.stat().st_mtime_ns for p in artifacts]
    again = slimsr_here("compress", str(recipe))
    assert again.returncode == 0, again.stderr
    for stage in ("1/3 prune", "2/3 size", "3/3 distill"):
        assert f"stage {stage}: done before" in again.stdout
    assert [p.stat().st_mtime_ns for p in artifacts] == stamps

    # the run folder moves; the student is lost: the re-run (pointed at the new place) finds
    # its finished distillation there, trains nothing and writes the student again
    moved = tmp_path / "moved" / "cmp"
    moved.parent.mkdir()
    run.rename(moved)
    (moved / "student.safetensors").unlink()
    final = (moved / "distill" / "weights" / "final.json").read_bytes()
    out = slimsr_here("compress", str(recipe), "--set", f"output_dir={moved.parent}")
    assert out.returncode == 0, out.stderr
    assert "distill: finished before" in out.stdout
    assert (moved / "student.safetensors").is_file() and not run.exists()
    assert (moved / "distill" / "weights" / "final.json").read_bytes() == final


def test_given_density_and_a_teacher_of_another_architecture(tmp_path: Path) -> None:
    setup_recipe(tmp_path)
    teacher = tmp_path / "bsrn_teacher.safetensors"
    slimsr.save(slimsr.create_model("bsrn", 2, num_feat=16, num_block=1), teacher)
    recipe = setup_recipe(
        tmp_path,
        "given",
        model={"pretrained": None},
        prune={"density": 0.3},
        distill={"teacher": str(teacher), "train": {"iterations": 2, "lr": 1e-3}},
    )
    out = slimsr_here("compress", str(recipe))
    assert out.returncode == 0, out.stderr
    run = tmp_path / "runs" / "given"
    assert "density d = 0.3 given by the recipe" in out.stdout
    assert not (run / "prune").exists()
    expected = compact_dims(Dims(8, 1, 4), 0.3, layer_bounds=(1, 1)).compact
    student = slimsr.load(run / "student.safetensors")
    assert (student.net.conv_first.out_channels, len(student.net.body)) == (
        expected.channels,
        expected.blocks,
    )
    meta = json.loads((run / "student.json").read_text())
    assert meta["compression"]["teacher"] == str(teacher)
    rows = {r["role"]: r for r in json.loads((run / "report.json").read_text())["models"]}
    assert rows["teacher"]["model"] == "bsrn" and rows["original"]["psnr"] is None


@pytest.mark.parametrize(
    ("sections", "needles"),
    [
        ({"model": {"name": "abpn", "scale": 3, "kwargs": {}}}, ["declares no (N_c, N_l, N_b)"]),
        ({"prune": {"density": 0}}, ["prune.density", "greater than 0"]),
        ({"prune": {"density": 1.5}}, ["prune.density", "less than or equal to 1"]),
        ({"distill": {"teacher": "x3", "train": {"iterations": 2, "lr": 1e-3}}}, ["x3", "x2"]),
        ({"model": {"pretrained": None}}, ["model.pretrained is required"]),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, sections: dict, needles: list[str]
) -> None:
    setup_recipe(tmp_path)
    if sections.get("distill", {}).get("teacher") == "x3":
        x3 = tmp_path / "x3.safetensors"
        slimsr.save(slimsr.create_model("edsrmini", 3, **ORIGINAL), x3)
        sections["distill"]["teacher"] = str(x3)
    recipe = setup_recipe(tmp_path, "bad", **sections)
    out = slimsr_here("compress", str(recipe))
    assert_one_line_error(out, *needles)
    assert not (tmp_path / "runs" / "bad").exists()


def test_a_teacher_of_another_scale_is_refused_by_the_trainer(tmp_path: Path) -> None:
    recipe = yaml.safe_load(setup_recipe(tmp_path).read_text())
    x3 = tmp_path / "x3.safetensors"
    slimsr.save(slimsr.create_model("edsrmini", 3, **ORIGINAL), x3)
    cfg = load_config(
        {
            "name": "t",
            "output_dir": str(tmp_path / "train_runs"),
            "device": "cpu",
            "model": {"name": "edsrmini", "scale": 2, "kwargs": {"num_feat": 4, "num_block": 1}},
            "data": recipe["data"],
            "train": {"iterations": 2, "lr": 1e-3},
            "distill": {"teacher": str(x3)},
            "logging": recipe["logging"],
        }
    )
    with pytest.raises(ConfigError, match="x3 model"):
        train(cfg)
    assert not (tmp_path / "train_runs").exists()


def test_distillation_and_obproxsg_resume_bit_exactly(tmp_path: Path) -> None:
    teacher = tmp_path / "teacher.safetensors"
    slimsr.save(slimsr.create_model("edsrmini", 2, num_feat=6, num_block=1), teacher)
    a, b = straight_and_resumed(  # one thread (fixture): bit-exactness without BLAS variation
        tmp_path,
        signal.SIGTERM,
        0,
        distill={"teacher": str(teacher), "alpha": 0.1, "levels": 3},
        train__optimizer={"type": "obproxsg", "lambda_l1": 5.0, "prox_steps": 3},
        train__ema=None,
    )
    assert_same_tensors(a["params"], b["params"])
    assert_same_optimizer(a["optimizer"], b["optimizer"])
    assert a["optimizer"]["param_groups"][0]["step"] == 8
    assert a["teacher"]["sha256"] == b["teacher"]["sha256"]
    assert any(int((p == 0).sum()) for p in a["params"].values())  # OBProx-SG zeros


COMPRESS_RECIPES = sorted(
    str(p.relative_to(REPO_ROOT / "configs"))
    for p in [
        *(REPO_ROOT / "configs").glob("compress_*.yaml"),
        # campaigns of the compression workflow (the others are training recipes)
        *(
            p
            for p in (REPO_ROOT / "configs" / "campaign").glob("*.yaml")
            if "prune" in yaml.safe_load(p.read_text())
        ),
    ]
)


@pytest.mark.parametrize("recipe", COMPRESS_RECIPES)
def test_shipped_compress_recipes_validate(recipe: str) -> None:
    """Every shipped recipe parses strictly (unknown keys are errors) and sizes to its model;
    a campaign's run is named campaign_<recipe> (its saved progress: campaign/<run name>/)."""
    from slimsr.compress import load_compress_config

    cfg = load_compress_config(
        REPO_ROOT / "configs" / recipe, check_paths=False, base_dir=REPO_ROOT
    )
    stem = Path(recipe).stem
    assert cfg.name == (f"campaign_{stem}" if recipe.startswith("campaign/") else stem)
    assert cfg.distill.train.iterations > 0


def test_prune_images_cuts_stage_one_data_only(tmp_path: Path) -> None:
    """The paper prunes on 100 images and distils on all: `prune.images` cuts stage 1's data
    to the first N images (sources in order, names sorted) and leaves stage 3's alone."""
    from slimsr.compress.config import load_compress_config
    from slimsr.compress.prune import prune_train_config
    from slimsr.data import training_store

    cfg = load_compress_config(setup_recipe(tmp_path, prune={"images": 4}))
    prune = prune_train_config(cfg)
    assert prune.data.train.max_images == 4
    assert cfg.data.train.max_images is None
    source = prune.data.train.sources[0].hr
    every = training_store([(source, None)], 2, 8)
    first = training_store([(source, None)], 2, 8, max_images=4)
    assert len(every) == 6 and len(first) == 4
    assert first.pairs == every.pairs[:4]
