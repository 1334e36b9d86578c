"""scripts/campaign.py: a run saved at a session's end and restored elsewhere continues exactly."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
from pathlib import Path

import pytest

from slimsr.train import Trainer, load_config, train
from tests.train_utils import assert_same_optimizer, assert_same_tensors, final_state, tiny_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_campaign():
    spec = importlib.util.spec_from_file_location("campaign", REPO_ROOT / "scripts" / "campaign.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_saved_run_restored_in_a_new_place_continues_bit_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    campaign = load_campaign()
    over = {"train__iterations": 8, "logging__checkpoint_every": 2, "logging__keep_checkpoints": 3}
    straight = train(load_config(tiny_recipe(tmp_path, "straight", **over)))

    def stop(event: str, trainer: Trainer) -> None:
        if event == "step" and trainer.iteration == 6:
            os.kill(os.getpid(), signal.SIGTERM)  # the session ends: the trainer saves and stops

    recipe = tiny_recipe(tmp_path, "leg", **over)
    first = Trainer(load_config(recipe), callbacks=[stop]).run()
    assert first.interrupted and first.iteration == 6
    saved = tmp_path / "repo" / "campaign" / "leg"
    campaign.save(first.run_dir, saved)
    # one training state (the newest), the log, the recipe, the best snapshot, the progress
    assert [p.name for p in (saved / "checkpoints").iterdir()] == ["iter_00000006.pt"]
    assert {"config.yaml", "train.jsonl", "PROGRESS.md"} <= {p.name for p in saved.iterdir()}
    assert (saved / "weights" / "best.safetensors").is_file()
    progress = (saved / "PROGRESS.md").read_text()
    assert "iteration 6 of 8" in progress and "| 4 |" in progress  # the validation at 4
    shutil.rmtree(first.run_dir)  # a fresh machine: no run folder

    # restored into another folder, the leg's own command continues it
    campaign.restore(saved, first.run_dir)
    recipe["auto_resume"] = True
    resumed = train(load_config(recipe))
    assert resumed.iteration == 8 and not resumed.interrupted
    a, b = final_state(straight.run_dir), final_state(resumed.run_dir)
    assert_same_tensors(a["params"], b["params"])
    assert_same_optimizer(a["optimizer"], b["optimizer"])

    # a finished run keeps its final weights (a next stage starts there), no training state
    done = tmp_path / "repo" / "campaign" / "straight"
    campaign.save(straight.run_dir, done)
    assert not list((done / "checkpoints").glob("*.pt"))
    final = done / "weights" / "final.safetensors"
    assert final.read_bytes() == (straight.run_dir / "weights" / "final.safetensors").read_bytes()
    assert (done / "weights" / "final.json").is_file()

    # a restore never replaces a newer state with an older one
    with pytest.raises(SystemExit) as stop:
        campaign.restore(saved, resumed.run_dir)
    assert stop.value.code == 2
    assert "newer" in capsys.readouterr().err

    # saved again once finished, the leg's folder drops its state and its best snapshot's
    # weights (megabytes nothing reads: the final weights are shipped), keeping the record
    campaign.save(resumed.run_dir, saved)
    assert not list((saved / "checkpoints").glob("*.pt"))
    assert not (saved / "weights" / "best.safetensors").exists()
    assert (saved / "weights" / "best.json").is_file()
    assert (saved / "weights" / "final.safetensors").is_file()


def test_save_keeps_hand_written_sections_and_rewrites_its_own(tmp_path: Path) -> None:
    """The notes a session adds to PROGRESS.md (the state, the resume command) survive the next
    session's save, once; the generated curve is replaced by the new one."""
    campaign = load_campaign()
    run = tmp_path / "runs" / "camp"
    run.mkdir(parents=True)
    log = run / "train.jsonl"

    def write_log(vals: list[tuple[int, float]]) -> None:
        lines = ['{"event": "start", "iter": 0, "iterations": 100}']
        lines += [f'{{"event": "val", "iter": {i}, "psnr": {p}, "ssim": 0.9}}' for i, p in vals]
        log.write_text("\n".join(lines) + "\n")

    saved = tmp_path / "campaign" / "camp"
    write_log([(10, 30.0)])
    campaign.save(run, saved)
    progress = saved / "PROGRESS.md"
    notes = (
        "## State and next step\n\nResume with the leg's command; 1 thread.\n\n"
        "```\n## a shell comment, not a section\nslimsr train RECIPE\n```\n"
    )
    progress.write_text(progress.read_text() + "\n" + notes)

    write_log([(10, 30.0), (20, 31.5)])
    campaign.save(run, saved)
    campaign.save(run, saved)
    text = progress.read_text()
    assert text.count("## State and next step") == 1 and "1 thread." in text
    assert "## a shell comment, not a section\nslimsr train RECIPE\n```" in text
    assert text.count("## camp") == 1 and "| 20 | 31.5000 |" in text
    assert text.index("## camp") < text.index("## State and next step")


def test_leg_hours_sum_each_leg_and_skip_missing_or_odd_times() -> None:
    campaign = load_campaign()
    log = [
        {"event": "start", "time": "2026-12-06T10:00:00+00:00"},
        {"event": "train", "time": "2026-12-06T10:30:00+00:00"},
        {"event": "val", "time": None},
        {"event": "train", "time": "2026-12-06T11:00:00+00:00"},
        {"event": "resume", "time": "2026-12-07T09:00:00+00:00"},  # the night between: no
        {"event": "train"},
        {"event": "train", "time": "not a time"},
        {"event": "train", "time": "2026-12-07T09:30:00+00:00"},
    ]
    assert campaign.leg_hours(log) == pytest.approx(1.5)
    assert campaign.leg_hours([{"event": "start"}]) == 0.0


def test_status_of_a_folder_that_is_no_run_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign = load_campaign()
    monkeypatch.setattr("sys.argv", ["campaign.py", "status", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        campaign.main()
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a slimsr run folder" in err
