"""Training throughput of every recipe's model on this machine: iterations/s, samples/s and the
share of each step spent waiting for data.

Runs the real trainer (data pipeline, loss, optimiser, logging) on synthetic 8-bit images for a
few iterations per recipe and reads its JSONL log; the first report window is warm-up and is
left out. On CPU the recipes' batches (up to 256 patches of 64 px) would take minutes per step,
so the batch defaults to 8 there; on CUDA the recipe's own batch and patch are used.

    python benchmarks/bench_train.py                       # all recipes in configs/
    python benchmarks/bench_train.py bsrn_s_x4 fmen_s_x4 --iters 20 --batch 16 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from slimsr.train import load_config, train

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = [
    "edsr_baseline_x2",
    "swinir_s_x2",
    "fmen_x4",
    "fmen_s_x4",
    "bsrn_x2",
    "bsrn_s_x4",
    "abpn_x3",
    "e_rfdn_x4",
]


def synthetic_images(folder: Path, count: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        small = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((size, size), Image.BICUBIC).save(folder / f"{i:03d}.png")


def bench_recipe(
    name: str, images: Path, out: Path, iters: int, warmup: int, batch: int | None, workers: int
) -> dict:
    cfg_path = REPO / "configs" / f"{name}.yaml"
    base = load_config(cfg_path, check_paths=False, base_dir=REPO)
    batch = batch or base.data.train.batch_size
    total = warmup * (1 + -(-iters // warmup))
    overrides = [
        f"output_dir={out}",
        f"name={name}",
        f"data.train.sources=[{{hr: {images}}}]",
        "data.val=null",
        f"data.train.batch_size={batch}",
        f"data.train.num_workers={workers}",
        f"train.iterations={total}",
        f"logging.print_every={warmup}",
        f"logging.val_every={total}",
        f"logging.checkpoint_every={total}",
        "logging.tensorboard=false",
        "logging.progress=none",
        "train.scheduler={type: constant}",  # the recipes' milestones lie past a short run
    ]
    cfg = load_config(cfg_path, overrides, base_dir=REPO)
    result = train(cfg)
    log = [json.loads(x) for x in (result.run_dir / "train.jsonl").read_text().splitlines()]
    windows = [e for e in log if e["event"] == "train"][1:]  # the first window is warm-up
    it_s = statistics.fmean(e["it_per_s"] for e in windows)
    start = next(e for e in log if e["event"] == "start")
    return {
        "recipe": name,
        "model": cfg.model.name,
        "scale": cfg.model.scale,
        "params": start["params"],
        "batch": batch,
        "recipe_batch": base.data.train.batch_size,
        "patch": cfg.data.train.patch_size,
        "workers": workers,
        "timed_iterations": total - warmup,
        "it_per_s": it_s,
        "samples_per_s": it_s * batch,
        "data_wait_frac": statistics.fmean(e["data_wait_frac"] for e in windows),
        "device": start["device"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="*", default=PUBLISHED)
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per recipe")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first iterations")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default: 8 on CPU)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    batch = args.batch or (None if cuda else 8)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        synthetic_images(images, 24, 320)
        for name in args.recipes:
            rows.append(
                bench_recipe(
                    name, images, Path(tmp) / "runs", args.iters, args.warmup, batch, args.workers
                )
            )
            print(json.dumps(rows[-1]), file=sys.stderr)
    device = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    table = Table(title=f"slimsr training throughput, {device}, torch {torch.__version__}")
    for col in ("recipe", "params", "batch x patch", "it/s", "samples/s", "data wait"):
        table.add_column(col, justify="right" if col != "recipe" else "left")
    for r in rows:
        table.add_row(
            r["recipe"],
            f"{r['params']:,}",
            f"{r['batch']} x {r['patch']}px"
            + ("" if r["batch"] == r["recipe_batch"] else f" (recipe {r['recipe_batch']})"),
            f"{r['it_per_s']:.2f}",
            f"{r['samples_per_s']:.1f}",
            f"{100 * r['data_wait_frac']:.1f}%",
        )
    Console(width=140).print(table)
    if args.json is not None:
        args.json.write_text(json.dumps({"device": device, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
