"""The loop's parts: schedules, losses, EMA, RNG states, NaN guard, AMP, exports, pretrained."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import slimsr
from slimsr.train import Trainer, TrainingDivergedError, load_config, train
from slimsr.train.config import (
    CharbonnierLossConfig,
    ConstantSchedule,
    CosineSchedule,
    L1LossConfig,
    MSELossConfig,
    MultiStepSchedule,
    TrainConfig,
)
from slimsr.train.ema import EMA
from slimsr.train.losses import WeightedLoss
from slimsr.train.schedules import build_schedule
from slimsr.train.training_state import (
    ResumeError,
    load_state,
    rng_state,
    save_state,
    set_rng_state,
)
from tests.train_utils import final_state, tiny_recipe


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train.jsonl").read_text().splitlines()]


# -- units --------------------------------------------------------------------------------------


def test_schedules_are_functions_of_the_iteration() -> None:
    step = build_schedule(
        MultiStepSchedule(type="multistep", milestones=[3, 5], gamma=0.1), 8, 1e-3
    )
    assert [step(t) for t in range(7)] == pytest.approx([1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    warm = build_schedule(ConstantSchedule(type="constant", warmup_iters=4), 8, 1e-3)
    assert [warm(t) for t in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cfg = CosineSchedule(type="cosine", periods=[4, 6], restart_weights=[1.0, 0.5], eta_min=1e-4)
    cos = build_schedule(cfg, 10, 1e-3)
    floor = 0.1
    expected = [floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    expected += [
        floor + 0.5 * (1 - floor) * 0.5 * (1 + math.cos(math.pi * t / 6)) for t in range(6)
    ]
    assert [cos(t) for t in range(10)] == pytest.approx(expected)
    assert cos(10) == pytest.approx(floor) and cos(50) == pytest.approx(floor)
    whole = build_schedule(CosineSchedule(type="cosine"), 100, 1e-3)
    assert whole(0) == 1.0 and whole(50) == pytest.approx(0.5) and whole(99) < 1e-3


def test_weighted_losses() -> None:
    sr, hr = torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.5)
    loss = WeightedLoss(
        [
            L1LossConfig(type="l1", weight=2.0),
            MSELossConfig(type="mse", weight=1.0),
            CharbonnierLossConfig(type="charbonnier", weight=1.0, eps=0.1),
        ]
    )
    total, terms = loss(sr, hr)
    charb = math.sqrt(0.25 + 0.01)
    assert terms["l1"] == pytest.approx(0.5) and terms["mse"] == pytest.approx(0.25)
    assert terms["charbonnier"] == pytest.approx(charb)
    assert float(total) == pytest.approx(2 * 0.5 + 0.25 + charb)


def test_ema_update_and_start_iter() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.BatchNorm2d(1))
    ema = EMA(net, decay=0.9, start_iter=2)
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[1].running_mean.fill_(3.0)
    ema.update(net, iteration=0)  # before start_iter: copy
    assert float(ema.net[0].weight) == 1.0
    with torch.no_grad():
        net[0].weight.fill_(2.0)
    ema.update(net, iteration=2)
    assert float(ema.net[0].weight) == pytest.approx(0.9 * 1.0 + 0.1 * 2.0)
    assert float(ema.net[1].running_mean) == 3.0  # buffers are copied
    assert not any(p.requires_grad for p in ema.net.parameters())


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    path = save_state({"iteration": 3, "rng": [rng_state()]}, tmp_path / "iter_00000003.pt")
    expected = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    state = load_state(path)  # torch.load(weights_only=True) inside
    set_rng_state(state["rng"][0])
    assert (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist()) == expected
    (tmp_path / "iter_00000004.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ResumeError, match="unreadable training state"):
        load_state(tmp_path / "iter_00000004.pt")


# -- the loop -----------------------------------------------------------------------------------


def test_nan_steps_are_skipped_then_stop_with_a_clear_error(tmp_path: Path) -> None:
    cfg = load_config(tiny_recipe(tmp_path, "nan", train__max_nonfinite_steps=3))

    def poison(event: str, trainer: Trainer) -> None:
        if event == "step" and trainer.iteration == 5:
            with torch.no_grad():
                next(trainer.model.net.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingDivergedError, match="NaN/Inf for 3 steps in a row"):
        train(cfg, callbacks=[poison])
    log = events(tmp_path / "runs" / "nan")
    assert [e["iter"] for e in log if e["event"] == "skip"] == [6, 7, 8]
    assert log[-1]["event"] == "diverged"
    # the state saved before the NaNs is the newest: none was written while steps were skipped
    state = final_state(tmp_path / "runs" / "nan")
    assert state["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in state["params"].values())


def test_one_nan_step_is_skipped_and_training_goes_on(tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    original = WeightedLoss.forward

    def flaky(self, sr, hr):
        calls["n"] += 1
        total, terms = original(self, sr, hr)
        return (total * float("nan"), terms) if calls["n"] == 3 else (total, terms)

    monkeypatch.setattr(WeightedLoss, "forward", flaky)
    result = train(load_config(tiny_recipe(tmp_path, "flaky")))
    assert result.iteration == 8 and not result.interrupted
    state = final_state(result.run_dir)
    assert all(torch.isfinite(v).all() for v in state["params"].values())
    assert int(state["optimizer"]["state"][0]["step"]) == 7  # one of 8 steps skipped
    assert [e["iter"] for e in events(result.run_dir) if e["event"] == "skip"] == [3]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_and_keeps_fp32_weights(tmp_path: Path, precision: str) -> None:
    result = train(load_config(tiny_recipe(tmp_path, precision, train__precision=precision)))
    assert result.iteration == 8
    state = final_state(result.run_dir)
    assert all(v.dtype == torch.float32 for v in state["params"].values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in state["params"].values())
    assert ("scale" in state["scaler"]) == (precision == "fp16")


def test_fmen_exports_train_time_and_deploy_weights(tmp_path: Path) -> None:
    kwargs = {"n_feats": 8, "mid_feats": 8, "down_blocks": 1, "up_blocks": [1, 1]}
    recipe = tiny_recipe(
        tmp_path,
        "fmen",
        model={"name": "fmen_s_train", "scale": 2, "kwargs": kwargs},
        train__iterations=3,
    )
    result = train(load_config(recipe))
    names = sorted(p.name for p in result.weights)
    assert names == ["final.safetensors", "final_deploy.safetensors"]
    train_model = slimsr.load(result.run_dir / "weights" / "final.safetensors")
    deploy = slimsr.load(result.run_dir / "weights" / "final_deploy.safetensors")
    assert (train_model.name, deploy.name) == ("fmen_s_train", "fmen_s")
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        torch.testing.assert_close(deploy(x), train_model(x), atol=1e-4, rtol=0)
    meta = json.loads((result.run_dir / "weights" / "final.json").read_text())
    training = meta["training"]
    assert training["iteration"] == 3 and len(training["config_sha256"]) == 64
    assert training["validation"]["protocol"] == "basicsr" and "psnr" in training["validation"]
    assert (result.run_dir / "weights" / "best_deploy.safetensors").is_file()


def test_pretrained_weights_are_the_starting_point(tmp_path: Path) -> None:
    first = train(load_config(tiny_recipe(tmp_path, "first", train__ema=None)))
    weights = first.run_dir / "weights" / "final.safetensors"
    cfg = load_config(
        tiny_recipe(
            tmp_path,
            "second",
            model__pretrained=str(weights),
            model__kwargs={"num_feat": 4, "num_block": 1},
        )
    )
    trainer = Trainer(cfg)
    from slimsr.train import distributed

    trainer.dist = distributed.setup("cpu")
    trainer._build()
    start = trainer.model.net.state_dict()
    saved = slimsr.load(weights).net.state_dict()
    assert all(torch.equal(start[k], saved[k]) for k in saved)
    assert trainer.model.training  # create_model returns eval mode; training needs train mode


def built(cfg: TrainConfig) -> Trainer:
    """A trainer with its model, data and optimiser set up, before any step."""
    from slimsr.train import distributed

    trainer = Trainer(cfg)
    trainer.dist = distributed.setup("cpu")
    trainer._build()
    return trainer


def test_partial_pretrained_carries_the_body_to_another_scale(tmp_path: Path) -> None:
    first = train(load_config(tiny_recipe(tmp_path, "x2", train__ema=None)))
    weights = first.run_dir / "weights" / "final.safetensors"
    over = {"model__pretrained": str(weights), "model__scale": 4}
    with pytest.raises(slimsr.CheckpointError):  # strict by default: the x4 tail does not fit
        built(load_config(tiny_recipe(tmp_path, "strict", **over)))
    trainer = built(
        load_config(tiny_recipe(tmp_path, "x4", model__pretrained_strict=False, **over))
    )
    start = trainer.model.net.state_dict()
    saved = slimsr.load(weights).net.state_dict()
    same = {k for k in saved if k in start and start[k].shape == saved[k].shape}
    # body, head and the first x2 upsampling stage carry over; the second stage is new
    assert "body.0.conv1.weight" in same and "upsample.0.weight" in same
    assert "upsample.2.weight" in start and "upsample.2.weight" not in saved
    assert all(torch.equal(start[k], saved[k]) for k in same)
    assert trainer.init_report == {
        "copied_tensors": len(same),
        "skipped_tensors": len(start) - len(same) + len(set(saved) - same),
    }


def test_jsonl_log_and_best_tracking(tmp_path: Path) -> None:
    result = train(load_config(tiny_recipe(tmp_path, "log")))
    log = events(result.run_dir)
    kinds = [e["event"] for e in log]
    assert kinds[0] == "start" and kinds[-1] == "end"
    vals = [e for e in log if e["event"] == "val"]
    assert vals[0]["model"] == "bicubic" and [v["iter"] for v in vals[1:]] == [4, 8]
    best = max(vals[1:], key=lambda v: v["psnr"])
    assert result.best == {"iter": best["iter"], "psnr": best["psnr"], "ssim": best["ssim"]}
    train_lines = [e for e in log if e["event"] == "train"]
    assert [e["iter"] for e in train_lines] == [2, 4, 6, 8]
    assert all(0 <= e["data_wait_frac"] <= 1 and e["it_per_s"] > 0 for e in train_lines)
    assert (result.run_dir / "config.yaml").is_file()
    assert load_config(result.run_dir / "config.yaml") == load_config(tiny_recipe(tmp_path, "log"))
    # a training state is also a weights file: slimsr.load takes its params_ema (BasicSR layout)
    from slimsr.train.training_state import latest_checkpoint

    ckpt = latest_checkpoint(result.run_dir / "checkpoints")
    loaded = slimsr.load(ckpt).net.state_dict()
    ema = final_state(result.run_dir)["params_ema"]
    assert all(torch.equal(loaded[k], ema[k]) for k in ema)


def test_tensorboard_scalars_when_installed(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is optional (pip install slimsr[train])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(load_config(tiny_recipe(tmp_path, "tb", logging__tensorboard=True)))
    acc = EventAccumulator(str(result.run_dir / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/psnr", "val/ssim"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6, 8]
