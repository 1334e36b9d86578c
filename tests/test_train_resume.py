"""Exact resume: N straight iterations == N/2, a hard kill, then N/2 more, bit for bit."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import slimsr
from slimsr.train import Trainer, load_config, resume_config, train
from slimsr.train.training_state import ResumeError
from tests.test_train_cli import assert_one_line_error, slimsr_here
from tests.train_utils import assert_same_optimizer, assert_same_tensors, final_state, tiny_recipe

# A child process that trains and kills itself (SIGKILL) right after the state at iteration
# `at` is written: nothing after the checkpoint survives.
CHILD = """
import json, os, signal, sys
import torch
torch.set_num_threads(int(sys.argv[3]))
from slimsr.train import load_config, Trainer
cfg = load_config(json.loads(open(sys.argv[1]).read()))
at = int(sys.argv[2])
def hook(event, trainer):
    if event == "checkpoint" and trainer.iteration == at:
        os.kill(os.getpid(), signal.SIGKILL)
Trainer(cfg, callbacks=[hook]).run()
"""


pytestmark = pytest.mark.usefixtures("one_thread")


def run_child(recipe: dict, tmp: Path, at: int) -> subprocess.CompletedProcess:
    path = tmp / f"{recipe['name']}.json"
    path.write_text(json.dumps(recipe))
    threads = str(torch.get_num_threads())
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(at), threads],
        capture_output=True,
        text=True,
        timeout=120,
    )


def straight_and_resumed(
    tmp: Path,
    sig: int,
    workers: int,
    move_to: Path | None = None,
    move_data_to: Path | None = None,
    **over,
) -> tuple[dict, dict]:
    n = 8
    common = {"data__train__num_workers": workers, "train__iterations": n, **over}
    straight = load_config(tiny_recipe(tmp, "straight", **common))
    result = train(straight)
    assert result.iteration == n and not result.interrupted

    recipe = tiny_recipe(tmp, "killed", **common)
    run_dir = Path(recipe["output_dir"]) / "killed"
    if sig == signal.SIGKILL:  # in a child process, which dies without any clean-up
        child = run_child(recipe, tmp, n // 2)
        assert child.returncode == -signal.SIGKILL, child.stderr
    else:  # here: the trainer's handler saves and stops; pytest's own handlers come back after

        def send(event: str, trainer: Trainer) -> None:
            if event == "step" and trainer.iteration == n // 2:
                os.kill(os.getpid(), sig)

        stopped = Trainer(load_config(recipe), callbacks=[send]).run()
        assert (stopped.iteration, stopped.interrupted) == (n // 2, True)
    assert final_state(run_dir)["iteration"] == n // 2
    assert not (run_dir / "weights" / "final.safetensors").exists()
    if move_to is not None:  # the folder moves (and is renamed) between the two halves
        move_to.parent.mkdir(parents=True, exist_ok=True)
        run_dir = run_dir.rename(move_to)
    sets = []
    if move_data_to is not None:  # so do the training images (../shared on another machine)
        move_data_to.parent.mkdir(parents=True, exist_ok=True)
        (tmp / "train_hr").rename(move_data_to)
        sets.append(f"data.train.sources=[{{hr: '{move_data_to}'}}]")

    resumed = train(resume_config(run_dir, sets), resume=True)
    assert resumed.iteration == n and not resumed.interrupted
    assert resumed.run_dir == run_dir.resolve()
    return final_state(Path(recipe["output_dir"]) / "straight"), final_state(run_dir)


@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_then_resume_is_bit_exact(tmp_path: Path, workers: int) -> None:
    a, b = straight_and_resumed(tmp_path, signal.SIGKILL, workers)
    assert_same_tensors(a["params"], b["params"])
    assert_same_tensors(a["params_ema"], b["params_ema"])
    assert_same_optimizer(a["optimizer"], b["optimizer"])
    assert a["data"] == b["data"]
    assert a["best"] == b["best"]
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])


def test_sigterm_saves_and_resume_is_bit_exact(tmp_path: Path) -> None:
    # MultiStep + grad clipping + Charbonnier: other schedule/loss paths through a resume
    a, b = straight_and_resumed(
        tmp_path,
        signal.SIGTERM,
        0,
        train__scheduler={"type": "multistep", "milestones": [3, 6], "gamma": 0.5},
        train__grad_clip=0.05,
        train__losses=[{"type": "charbonnier", "weight": 1.0}, {"type": "mse", "weight": 0.5}],
        train__optimizer={"type": "adamax", "betas": [0.9, 0.99]},
    )
    assert_same_tensors(a["params"], b["params"])
    assert_same_optimizer(a["optimizer"], b["optimizer"])


def test_resume_refuses_a_changed_schedule(tmp_path: Path) -> None:
    from slimsr.train.training_state import ResumeError

    recipe = tiny_recipe(tmp_path, "r", train__iterations=4)
    train(load_config(recipe))
    run_dir = Path(recipe["output_dir"]) / "r"
    # a cosine over the whole run would change shape if the run got longer
    with pytest.raises(ResumeError, match="reshape the cosine"):
        train(resume_config(run_dir, ["train.iterations=6"]), resume=True)
    recipe = tiny_recipe(tmp_path, "r2", train__iterations=4)
    recipe["train"]["scheduler"] = {"type": "multistep", "milestones": [3], "warmup_iters": 2}
    train(load_config(recipe))
    run_dir = Path(recipe["output_dir"]) / "r2"
    # extending the run is fine ...
    longer = train(resume_config(run_dir, ["train.iterations=6"]), resume=True)
    assert longer.iteration == 6
    # ... changing the learning rate is not the same run
    with pytest.raises(ResumeError, match=r"train\.lr"):
        train(resume_config(run_dir, ["train.lr=0.5", "train.iterations=8"]), resume=True)
    # auto_resume with an unchanged recipe continues; a new run over a used folder is refused
    from slimsr.train.resume import RunFolderError

    with pytest.raises(RunFolderError, match="already exists"):
        train(load_config(recipe))
    recipe["auto_resume"] = True
    recipe["train"]["iterations"] = 7
    assert train(load_config(recipe)).iteration == 7


def test_a_moved_run_folder_resumes_in_place_bit_exactly(tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "renamed"
    a, b = straight_and_resumed(tmp_path, signal.SIGTERM, 0, move_to=moved)
    assert_same_tensors(a["params"], b["params"])
    assert_same_optimizer(a["optimizer"], b["optimizer"])
    assert not (tmp_path / "runs" / "killed").exists()  # nothing written where it used to be
    assert (moved / "weights" / "final.safetensors").is_file()
    saved = load_config(moved / "config.yaml", check_paths=False)
    assert (saved.output_dir, saved.name) == (moved.parent.resolve(), "renamed")


def test_a_run_resumes_bit_exactly_from_moved_training_folders(tmp_path: Path) -> None:
    """A campaign restored where ../shared has another path: the same images, moved."""
    a, b = straight_and_resumed(
        tmp_path, signal.SIGTERM, 0, move_data_to=tmp_path / "elsewhere" / "T91"
    )
    assert_same_tensors(a["params"], b["params"])
    assert_same_optimizer(a["optimizer"], b["optimizer"])
    assert a["data"] == b["data"] and len(a["data"]["images_sha256"]) == 64


def test_moved_training_folders_with_other_images_or_no_record_are_refused(
    tmp_path: Path,
) -> None:
    import shutil

    from slimsr.train.training_state import load_state, save_state

    recipe = tiny_recipe(tmp_path, "r", train__iterations=4)
    recipe["train"]["scheduler"] = {"type": "multistep", "milestones": [3]}
    train(load_config(recipe))
    run_dir = Path(recipe["output_dir"]) / "r"
    events = [json.loads(x) for x in (run_dir / "train.jsonl").read_text().splitlines()]
    checkpoint = run_dir / "checkpoints" / "iter_00000004.pt"
    state = load_state(checkpoint)
    assert events[0]["train_images_sha256"] == state["data"]["images_sha256"]

    def resume_from(folder: Path) -> int:
        sets = [f"data.train.sources=[{{hr: '{folder}'}}]", "train.iterations=6"]
        assert any("data.train.sources" in c for c in resume_changes_of(run_dir, *sets))
        return train(resume_config(run_dir, sets), resume=True).iteration

    # the same count of images, one of them another picture: refused, nothing trained
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "train_hr", other)
    first, second = sorted(other.iterdir())[:2]
    first.write_bytes(second.read_bytes())
    with pytest.raises(ResumeError, match="other images than the run trained on"):
        resume_from(other)
    # a checkpoint written before the images were recorded: moved folders cannot be trusted
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "train_hr", moved)
    old = {**state, "data": {k: v for k, v in state["data"].items() if k != "images_sha256"}}
    save_state({k: v for k, v in old.items() if k not in ("format", "version")}, checkpoint)
    with pytest.raises(ResumeError, match="predates the images' sha256"):
        resume_from(moved)
    assert final_state(run_dir)["iteration"] == 4
    # ... while at the recorded paths such a checkpoint still resumes (as before)
    assert train(resume_config(run_dir, ["train.iterations=6"]), resume=True).iteration == 6


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_resuming_a_finished_run_is_a_no_op(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, "done", train__iterations=4)
    train(load_config(recipe))
    run_dir = Path(recipe["output_dir"]) / "done"
    final = json.loads((run_dir / "weights" / "final.json").read_text())
    assert final["training"]["validation"]["psnr"] > 0
    before = _hashes(run_dir)
    result = train(resume_config(run_dir), resume=True)
    assert result.finished_before and result.iteration == 4
    assert result.weights == [run_dir / "weights" / "final.safetensors"]
    out = slimsr_here("train", "--resume", str(run_dir))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1 and "finished at iteration 4" in out.stdout
    assert _hashes(run_dir) == before  # final.json keeps its metrics, train.jsonl untouched


def test_resume_check_says_what_would_change_and_writes_nothing(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, "chk", train__iterations=4)
    recipe["train"]["scheduler"] = {"type": "multistep", "milestones": [3]}
    train(load_config(recipe))
    run_dir = Path(recipe["output_dir"]) / "chk"
    before = _hashes(run_dir)
    out = slimsr_here("train", "--resume", str(run_dir), "--set", "train.iterations=6", "--check")
    assert out.returncode == 0, out.stderr
    assert "train.iterations: 4 -> 6" in out.stdout
    assert "would continue from iteration 4 to 6" in out.stdout
    out = slimsr_here("train", "--resume", str(run_dir), "--check")
    assert (
        out.returncode == 0 and "no changes" in out.stdout and "resuming does nothing" in out.stdout
    )
    for bad, key in (
        ("model.kwargs.num_feat=8", "model.kwargs.num_feat"),
        ("train.lr=0.5", "train.lr"),
    ):
        for extra in (["--check"], []):
            out = slimsr_here("train", "--resume", str(run_dir), "--set", bad, *extra)
            assert_one_line_error(out, key, "continue the same schedule")
    out = slimsr_here("train", "--resume", str(run_dir), "--set", "train.iterations=3")
    assert_one_line_error(out, "at iteration 4, past train.iterations 3")
    out = slimsr_here("train", "--resume", str(run_dir), "--set", f"output_dir={tmp_path}")
    assert_one_line_error(out, "--set output_dir", "stays in the folder")
    assert _hashes(run_dir) == before


def test_a_resumed_run_may_switch_the_online_fold_and_follows_the_same_path(
    tmp_path: Path,
) -> None:
    """The fold is the same function of the same parameters: a run that switches it on when
    resumed lands where the unswitched run lands, up to float rounding, and records the switch."""
    tiny_fmen = {
        "name": "fmen_s_train",
        "scale": 2,
        "kwargs": {"n_feats": 8, "mid_feats": 6, "down_blocks": 1, "up_blocks": [1, 1]},
    }
    over = {"model": tiny_fmen, "train__fast_path": {"online_fold": False}}
    straight = train(load_config(tiny_recipe(tmp_path, "straight", **over)))
    assert straight.iteration == 8

    recipe = tiny_recipe(tmp_path, "switched", **over)

    def stop(event: str, trainer: Trainer) -> None:
        if event == "step" and trainer.iteration == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    assert Trainer(load_config(recipe), callbacks=[stop]).run().interrupted
    run_dir = Path(recipe["output_dir"]) / "switched"
    resumed = train(resume_config(run_dir, ["train.fast_path.online_fold=on"]), resume=True)
    assert resumed.iteration == 8
    events = [json.loads(x) for x in (run_dir / "train.jsonl").read_text().splitlines()]
    assert events[0]["fast_path"]["online_fold"] is False
    assert [e for e in events if e["event"] == "resume"][-1]["fast_path"]["online_fold"] is True
    a, b = final_state(Path(recipe["output_dir"]) / "straight"), final_state(run_dir)
    # weights, not BN statistics: rounding moves them ~1e-6, a different gradient ~lr (1e-3)
    # per step; biases that feed a BatchNorm have float-noise gradients far below Adam's eps
    weights = {
        k: v for k, v in a["params"].items() if "running_" not in k and "num_batches" not in k
    }
    assert weights
    for key, value in weights.items():
        assert float((b["params"][key] - value).abs().max()) < 1e-4, key
    # the other way round as well: a resume may switch it off again
    assert "train.fast_path.online_fold" in " ".join(
        resume_changes_of(run_dir, "train.fast_path.online_fold=off")
    )


def test_a_resumed_run_may_switch_between_fp32_and_bf16_but_not_to_fp16(tmp_path: Path) -> None:
    """bf16 is autocast alone (fp32 weights, moments and schedule, no grad scaler): a campaign
    leg may continue in it on a CPU where it pays; fp16 would need a grad scaler mid-run."""
    recipe = tiny_recipe(tmp_path, "switched")

    def stop(event: str, trainer: Trainer) -> None:
        if event == "step" and trainer.iteration == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    assert Trainer(load_config(recipe), callbacks=[stop]).run().interrupted
    run_dir = Path(recipe["output_dir"]) / "switched"
    assert resume_changes_of(run_dir, "train.precision=bf16") == ["train.precision: fp32 -> bf16"]
    with pytest.raises(ResumeError, match=r"train\.precision"):
        resume_changes_of(run_dir, "train.precision=fp16")
    out = slimsr_here("train", "--resume", str(run_dir), "--set", "train.precision=fp16")
    assert_one_line_error(out, "train.precision", "continue the same schedule")
    resumed = train(resume_config(run_dir, ["train.precision=bf16"]), resume=True)
    assert resumed.iteration == 8
    events = [json.loads(x) for x in (run_dir / "train.jsonl").read_text().splitlines()]
    assert events[0]["precision"] == "fp32"
    assert [e for e in events if e["event"] == "resume"][-1]["precision"] == "bf16"
    final = slimsr.load(run_dir / "weights" / "final.safetensors")
    assert all(bool(torch.isfinite(v).all()) for v in final.net.state_dict().values())


def resume_changes_of(run_dir: Path, *sets: str) -> list[str]:
    from slimsr.train.resume import resume_changes, saved_config

    saved = saved_config(run_dir)
    assert saved is not None
    return resume_changes(saved, resume_config(run_dir, list(sets)), run_dir)
