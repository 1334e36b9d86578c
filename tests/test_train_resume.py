"""Exact resume: N straight iterations == N/2, a hard kill, then N/2 more, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimsr.train import Trainer, load_config, resume_config, train
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


def straight_and_resumed(tmp: Path, sig: int, workers: int, **over) -> tuple[dict, dict]:
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

    resumed = train(resume_config(run_dir), resume=True)
    assert resumed.iteration == n and not resumed.interrupted
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
    from slimsr.train.checkpoint import ResumeError

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
    from slimsr.train.trainer import RunFolderError

    with pytest.raises(RunFolderError, match="already exists"):
        train(load_config(recipe))
    recipe["auto_resume"] = True
    recipe["train"]["iterations"] = 7
    assert train(load_config(recipe)).iteration == 7
