"""Helpers for the training tests: tiny synthetic image folders and tiny recipes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from slimsr.train.training_state import latest_checkpoint, load_state


def write_images(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[Path]:
    """Smooth-ish random RGB PNGs (h, w) so a tiny model can learn something."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (h, w) in enumerate(sizes):
        base = rng.random((h // 4 + 2, w // 4 + 2, 3))
        img = Image.fromarray((base * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
        path = folder / f"img{i:02d}.png"
        img.save(path)
        paths.append(path)
    return paths


def tiny_recipe(tmp: Path, name: str = "run", **over: Any) -> dict[str, Any]:
    """An edsrmini (4 features, 1 block) x2 recipe on 6 small images, as a dict."""
    hr = tmp / "train_hr"
    if not hr.exists():
        write_images(hr, [(40 + 4 * i, 36 + 2 * i) for i in range(6)], seed=1)
    val = tmp / "val_hr"
    if not val.exists():
        write_images(val, [(32, 32), (36, 28)], seed=2)
    recipe: dict[str, Any] = {
        "name": name,
        "output_dir": str(tmp / "runs"),
        "seed": 3,
        "device": "cpu",
        "model": {"name": "edsrmini", "scale": 2, "kwargs": {"num_feat": 4, "num_block": 1}},
        "data": {
            "train": {
                "sources": [{"hr": str(hr)}],
                "patch_size": 8,
                "batch_size": 4,
                "num_workers": 0,
            },
            "val": {"hr": str(val)},
        },
        "train": {
            "iterations": 8,
            "lr": 1e-3,
            "scheduler": {"type": "cosine", "warmup_iters": 2},
            "ema": {"decay": 0.9},
        },
        "logging": {
            "print_every": 2,
            "val_every": 4,
            "checkpoint_every": 4,
            "keep_checkpoints": 5,
            "tensorboard": False,
            "progress": "none",
        },
    }
    for dotted, value in over.items():
        node = recipe
        *parents, last = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return recipe


def final_state(run_dir: Path) -> dict[str, Any]:
    path = latest_checkpoint(run_dir / "checkpoints")
    assert path is not None, f"no checkpoint in {run_dir}"
    return load_state(path)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs (max {float((a[k] - b[k]).abs().max())})"


def assert_same_optimizer(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for k, v in a["state"][i].items():
            assert torch.equal(v, b["state"][i][k]), f"optimizer state {i}.{k} differs"


def train_with_torchrun(recipe: dict[str, Any], tmp: Path, procs: int = 2) -> None:
    """`torchrun --standalone --nproc-per-node N -m slimsr train` on `recipe`, 1 thread each
    (two 2-thread ranks on 2 cores stall); fails the test with the ranks' stderr."""
    cfg = tmp / f"{recipe['name']}.yaml"
    cfg.write_text(yaml.safe_dump(recipe))
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    out = subprocess.run(
        [*run, "--nproc-per-node", str(procs), "-m", "slimsr", "train", str(cfg)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=tmp,
    )
    assert out.returncode == 0, out.stderr[-3000:]
