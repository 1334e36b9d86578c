"""`slimsr train` as a user runs it: bad input is one line, exit 2, and nothing written."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from tests.train_utils import tiny_recipe


def slimsr(*args: str) -> subprocess.CompletedProcess:
    """`python -m slimsr ARGS` in a new process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "slimsr", *args], capture_output=True, text=True, timeout=120
    )


def slimsr_here(*args: str) -> subprocess.CompletedProcess:
    """The same entry point (`slimsr.cli.main`) in this process: no interpreter start-up."""
    from slimsr.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["slimsr", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def assert_one_line_error(out: subprocess.CompletedProcess, *needles: str) -> str:
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    for needle in needles:
        assert needle in out.stderr, out.stderr
    return out.stderr


def write_cfg(tmp: Path, recipe: dict) -> Path:
    path = tmp / f"{recipe['name']}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_unknown_key_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, "typo")
    recipe["train"]["ema"] = {"decay": 0.9, "start_itr": 5}
    path = write_cfg(tmp_path, recipe)
    assert_one_line_error(
        slimsr("train", str(path)), f"{path}:", "train.ema.start_itr: unknown key"
    )
    assert not (tmp_path / "runs").exists()


def test_missing_dataset_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, "nodata")
    recipe["data"]["train"]["sources"].append({"hr": str(tmp_path / "DIV2K_missing")})
    path = write_cfg(tmp_path, recipe)
    assert_one_line_error(
        slimsr_here("train", str(path)),
        "data.train.sources[1].hr: folder not found",
        "DIV2K_missing",
    )
    assert not (tmp_path / "runs").exists()


def test_wrong_size_pair_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, "badpair")
    hr_dir, lr_dir = tmp_path / "HR", tmp_path / "LR"
    hr_dir.mkdir()
    lr_dir.mkdir()
    for name, (h, w), (lh, lw) in [("ok", (20, 20), (10, 10)), ("bad", (20, 20), (10, 9))]:
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(hr_dir / f"{name}.png")
        Image.fromarray(np.zeros((lh, lw, 3), np.uint8)).save(lr_dir / f"{name}x2.png")
    recipe["data"]["train"]["sources"] = [{"hr": str(hr_dir), "lr": str(lr_dir)}]
    out = slimsr_here("train", str(write_cfg(tmp_path, recipe)))
    assert_one_line_error(out, "bad pair bad.png / badx2.png", "LR is 9x10", "needs LR 10x10")
    assert not (tmp_path / "runs").exists()


def test_existing_run_folder_is_left_alone(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, "taken")
    run_dir = tmp_path / "runs" / "taken"
    run_dir.mkdir(parents=True)
    (run_dir / "notes.txt").write_text("mine")
    out = slimsr_here("train", str(write_cfg(tmp_path, recipe)))
    assert_one_line_error(out, "already exists", "--resume")
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]
    assert_one_line_error(slimsr_here("train", "--resume", str(run_dir)), "not a slimsr run folder")


def test_print_schema() -> None:
    out = slimsr_here("train", "--print-schema")
    assert out.returncode == 0, out.stderr
    schema = json.loads(out.stdout)
    assert schema["title"] == "TrainConfig" and schema["additionalProperties"] is False
    assert {"model", "data", "train"} <= set(schema["required"])
