"""torchrun DDP on CPU (gloo): 2 processes == 1 process with the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from slimsr.train import load_config, train
from tests.train_utils import final_state, tiny_recipe, train_with_torchrun


def test_torchrun_two_processes_match_one(tmp_path: Path) -> None:
    over = {"train__iterations": 6, "data__train__batch_size": 4, "data__train__num_workers": 0}
    single = train(load_config(tiny_recipe(tmp_path, "single", **over)))
    assert single.iteration == 6

    train_with_torchrun(tiny_recipe(tmp_path, "ddp", **over), tmp_path)
    run_dir = tmp_path / "runs" / "ddp"
    a, b = final_state(tmp_path / "runs" / "single"), final_state(run_dir)
    assert b["world_size"] == 2 and len(b["rng"]) == 2
    for key in a["params"]:
        torch.testing.assert_close(b["params"][key], a["params"][key], rtol=0, atol=1e-6)
        torch.testing.assert_close(b["params_ema"][key], a["params_ema"][key], rtol=0, atol=1e-6)
    # one rank logs: the start event reports the global batch and both processes
    events = [json.loads(line) for line in (run_dir / "train.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    assert (start["global_batch"], start["world_size"]) == (4, 2)
    assert sum(e["event"] == "start" for e in events) == 1
    # the data stream position is global (iterations x global batch), whatever the world size
    assert a["data"] == b["data"]
