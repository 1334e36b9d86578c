"""Training throughput of every recipe's model on this machine: iterations/s, samples/s and the
share of each step spent waiting for data; with --models, the efficiency of each model's step.

Runs the real trainer (data pipeline, loss, optimiser, logging) on synthetic 8-bit images for a
few iterations per recipe and reads its JSONL log; the first report window is warm-up and is
left out. On CPU the recipes' batches (up to 256 patches of 64 px) would take minutes per step,
so the batch defaults to 8 there; on CUDA the recipe's own batch and patch are used.

--models runs one small fixed recipe for every model named (x4, batch 8 of 32 px LR patches
unless --batch/--patch/--scale say otherwise; the rest from configs/bsrn_s_x4_quick_cpu.yaml,
constant learning rate) and reports, besides the trainer's step time, samples/s and LR pixels/s,
the arithmetic rate the step achieves and its share of a peak measured in the same run:

    GFLOP/s = 3 x 2 x MACs(forward of one LR patch) x samples/s / 1e9

FLOPs = 2 x MACs (a multiply-accumulate is two floating-point operations); a training step
costs about 3 forwards (the forward, and twice its work in the backward: gradients of the
inputs and of the weights). MACs are `slimsr.profile`'s `macs` convention (conv, linear and
attention matmuls, no bias) at the run's LR patch size, so element-wise work (activations,
norms, the loss, the optimiser) is not counted: the rate is a lower bound of the work done.
The peak is the best of a few 3072 x 3072 fp32 `torch.mm` (2 x 3072^3 FLOPs) at the same
thread count, measured before and after the models (the higher is used).

    python benchmarks/bench_train.py                       # all recipes in configs/
    python benchmarks/bench_train.py bsrn_s_x4 fmen_s_x4 --iters 20 --batch 16 --json out.json
    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --models --threads 1 \
        --json benchmarks/results/train_efficiency_cpu1.json   # the table in docs/training.md
    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --models edsrmini swinirmini --compile \
        --threads 1 --json benchmarks/results/train_compile_cpu1.json  # eager vs torch.compile
    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --models fmen_s_train span_train \
        --online-fold --threads 1 --batch 16 --json benchmarks/results/train_online_fold_cpu1.json
    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --models bsrn edsrmini --bf16 --scale 2 \
        --threads 1 --batch 16   # fp32 vs train.precision=bf16, side by side

--distill compares, in one run and on the same recipe (EDSRmini x2 student, batch 16 of 32 px
LR patches unless --batch/--patch say otherwise), a plain step, a distillation step whose
targets come from the teacher cache (`distill.cache: true`, the default) and one that runs the
teacher on every batch (`distill.cache: false`); the teacher is the official BSRN x2
(../shared/weights/official/bsrn_x2.pth, or --teacher). It also measures how exact the cache
is on real training images (--exactness-images from ../shared/datasets/BSD200/HR): the float16
rounding, the flip/rotation of the output against the teacher on the flipped input, and a
crop of the whole-image output against the teacher run on the LR patch alone (border ring and
interior, and the distillation loss of a stand-in student, bicubic, on both targets).

    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --distill --threads 1 --workers 1 \
        --iters 20 --warmup 4 --json benchmarks/results/distill_cost_cpu1.json  # docs table
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from slimsr.archs.blocks import has_foldable_convs
from slimsr.factory import create_model
from slimsr.profile import complexity
from slimsr.registry import get_model_info
from slimsr.train import TrainConfig, TrainResult, load_config, train

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
MODELS = ["edsrmini", "swinirmini", "fmen_s_train", "bsrn_s", "bsrn", "abpn", "e_rfdn"]
VARIANTS: dict[str, list[str]] = {
    "": [],
    "compiled": ["train.fast_path.compile=on"],
    "unfolded": ["train.fast_path.online_fold=off"],
    "folded": ["train.fast_path.online_fold=on"],
    "bf16": ["train.precision=bf16"],
}
"""Fast-path settings a --models row runs with (--compile, --online-fold compare two)."""
MODEL_BASE = "bsrn_s_x4_quick_cpu"  # the fixed recipe of --models: its loss, optimiser, data
TEACHER = REPO.parent / "shared" / "weights" / "official" / "bsrn_x2.pth"
EXACTNESS_DATA = REPO.parent / "shared" / "datasets" / "BSD200" / "HR"
GEMM_N = 3072


def synthetic_images(folder: Path, count: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        small = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((size, size), Image.BICUBIC).save(folder / f"{i:03d}.png")


def gemm_peak(threads: int, n: int = GEMM_N, repeats: int = 3) -> float:
    """GFLOP/s of the best of `repeats` n x n fp32 matrix products at `threads` threads: what
    this machine's BLAS reaches on the most favourable work, the yardstick of the table."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.rand(n, n, generator=gen)
        b = torch.rand(n, n, generator=gen)
        torch.mm(a, b)  # warm-up: page faults, BLAS thread pool
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return 2 * n**3 / best / 1e9


def load_1m() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def bench_recipe(
    name: str,
    images: Path,
    out: Path,
    iters: int,
    warmup: int,
    batch: int | None,
    workers: int,
    *,
    recipe: str | None = None,
    extra: list[str] | None = None,
    run: Callable[[TrainConfig], TrainResult] = train,
) -> dict:
    """Train `recipe` (default: `name`) for a few iterations; `name` names the run and the row.

    `run` trains the resolved config (default `slimsr.train.train`); gpu_check.py passes a
    trainer with a compiled forward.
    """
    cfg_path = REPO / "configs" / f"{recipe or name}.yaml"
    base = load_config(cfg_path, check_paths=False, base_dir=REPO)
    batch = batch or base.data.train.batch_size
    total = warmup * (1 + -(-iters // warmup))
    overrides = [
        *(extra or []),
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
    result = run(cfg)
    log = [json.loads(x) for x in (result.run_dir / "train.jsonl").read_text().splitlines()]
    windows = [e for e in log if e["event"] == "train"][1:]  # the first window is warm-up
    it_s = statistics.fmean(e["it_per_s"] for e in windows)
    # equal windows: the mean step time is the mean of the windows' 1/it_per_s
    step_s = statistics.fmean(1 / e["it_per_s"] for e in windows)
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
        "step_s": step_s,
        "samples_per_s": it_s * batch,
        "data_wait_frac": statistics.fmean(e["data_wait_frac"] for e in windows),
        "device": start["device"],
    }


def bench_model(
    name: str,
    images: Path,
    out: Path,
    args: argparse.Namespace,
    batch: int,
    peak: float,
    variant: str = "",
) -> dict:
    """One model on the fixed recipe, with its arithmetic rate and share of `peak`; `variant`
    (a key of VARIANTS): with its fast-path settings (a compilation falls in the untimed
    warm-up)."""
    extra = [
        f"model.name={name}",
        f"model.scale={args.scale}",
        f"data.train.patch_size={args.patch}",
        *VARIANTS[variant],
    ]
    t0 = time.perf_counter()
    row = bench_recipe(
        f"{name}_{variant}" if variant else name,
        images,
        out,
        args.iters,
        args.warmup,
        batch,
        args.workers,
        recipe=MODEL_BASE,
        extra=extra,
    )
    # a folded step runs the deploy form's convolutions: count those, not the branches' (a
    # new run folds on "auto" wherever the network has blocks to fold)
    folds = variant == "folded" or (
        variant != "unfolded" and has_foldable_convs(create_model(name, args.scale).net)
    )
    counted = (get_model_info(name).deploy_form or name) if folds else name
    macs = complexity(create_model(counted, args.scale).net, (args.patch, args.patch)).flops["macs"]
    samples_s = batch / row["step_s"]
    gflops = 3 * 2 * macs * samples_s / 1e9
    row.update(
        recipe=f"{MODEL_BASE} (model {name})",
        samples_per_s=samples_s,
        lr_pixels_per_s=samples_s * args.patch**2,
        macs_per_sample=macs,
        macs_counted_on=counted,
        train_gflop_per_sample=3 * 2 * macs / 1e9,
        gflop_per_s=gflops,
        peak_fraction=gflops / peak,
        load_1m_after=load_1m(),
        compiled=variant == "compiled",
        variant=variant,
        run_wall_s=time.perf_counter() - t0,
    )
    return row


def print_models(rows: list[dict], meta: dict) -> None:
    table = Table(
        title=f"slimsr training efficiency, {meta['device']}, torch {meta['torch']}; "
        f"x{meta['scale']}, batch {meta['batch']} of {meta['patch']} px LR patches; "
        f"GFLOP/s = 3 x 2 x forward MACs x samples/s; peak = fp32 {GEMM_N}^2 GEMM "
        f"{meta['gemm_peak_gflop_per_s']:.1f} GFLOP/s; 1-min load {meta['load_1m_before']} "
        f"before, {meta['load_1m_end']} after"
    )
    cols = ("model", "params", "fwd MMACs/sample", "step ms", "samples/s", "LR kpx/s")
    for col in (*cols, "GFLOP/s", "% of peak", "data wait"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(
            r["model"]
            + (f" {r['variant']}" if r.get("variant") else "")
            + (f" ({r['step_ratio']:.2f}x)" if "step_ratio" in r else ""),
            f"{r['params']:,}",
            f"{r['macs_per_sample'] / 1e6:.1f}",
            f"{1000 * r['step_s']:.0f}",
            f"{r['samples_per_s']:.1f}",
            f"{r['lr_pixels_per_s'] / 1e3:.1f}",
            f"{r['gflop_per_s']:.2f}",
            f"{100 * r['peak_fraction']:.1f}%",
            f"{100 * r['data_wait_frac']:.1f}%",
        )
    Console(width=140).print(table)


def run_models(args: argparse.Namespace) -> None:
    threads = torch.get_num_threads()
    cuda = torch.cuda.is_available()
    if cuda:
        raise SystemExit("--models measures CPU efficiency; hide the GPU (CUDA_VISIBLE_DEVICES=)")
    batch = args.batch or 8
    meta = {
        "device": f"CPU ({threads} threads)",
        "torch": torch.__version__,
        "threads": threads,
        "cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "scale": args.scale,
        "batch": batch,
        "patch": args.patch,
        "timed_iterations": args.warmup * -(-args.iters // args.warmup),
        "convention": "GFLOP/s = 3 (forward + backward) x 2 (FLOP per MAC) x forward MACs per "
        "LR patch (slimsr.profile 'macs') x samples/s / 1e9",
        "load_1m_before": load_1m(),
    }
    peaks = [gemm_peak(threads)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        synthetic_images(images, 24, 320)
        base, other = ("", "bf16") if args.bf16 else ("", "compiled")
        if args.online_fold:
            base, other = "unfolded", "folded"
        for name in args.models_list or MODELS:
            rows.append(
                bench_model(name, images, Path(tmp) / "runs", args, batch, max(peaks), base)
            )
            print(json.dumps(rows[-1]), file=sys.stderr)
            if args.compile or args.online_fold or args.bf16:  # beside the row just measured
                first = rows[-1]
                rows.append(
                    bench_model(name, images, Path(tmp) / "runs", args, batch, max(peaks), other)
                )
                rows[-1]["step_ratio"] = rows[-1]["step_s"] / first["step_s"]
                print(json.dumps(rows[-1]), file=sys.stderr)
    peaks.append(gemm_peak(threads))
    peak = max(peaks)
    for r in rows:  # against the better of the two peaks
        r["peak_fraction"] = r["gflop_per_s"] / peak
    meta.update(gemm_gflop_per_s=peaks, gemm_peak_gflop_per_s=peak, load_1m_end=load_1m())
    print_models(rows, meta)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")


def distill_rows(args: argparse.Namespace, images: Path, out: Path, batch: int) -> list[dict]:
    """Plain, cached-teacher and live-teacher steps of one EDSRmini x2 recipe, side by side."""
    base = [
        "model.name=edsrmini",
        "model.scale=2",
        f"data.train.patch_size={args.patch}",
    ]
    variants = {
        "plain": [],
        "distill, teacher cache": [f"distill={{teacher: {args.teacher}, cache: true}}"],
        "distill, live teacher": [f"distill={{teacher: {args.teacher}, cache: false}}"],
    }
    rows = []
    for i, (label, extra) in enumerate(variants.items()):
        row = bench_recipe(
            f"distill_{i}",
            images,
            out,
            args.iters,
            args.warmup,
            batch,
            args.workers,
            recipe=MODEL_BASE,
            extra=[*base, *extra],
        )
        log = out / f"distill_{i}" / "train.jsonl"
        start = json.loads(log.read_text().splitlines()[0])
        row.update(variant=label, teacher_cache=start.get("teacher_cache"))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    for r in rows:
        r["step_ratio_to_plain"] = r["step_s"] / rows[0]["step_s"]
    return rows


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * float(np.log10(1.0 / mse))


def cache_exactness(args: argparse.Namespace) -> dict:
    """How far the cached targets are from the live teacher's, on real training images."""
    from slimsr.data import training_store
    from slimsr.factory import load
    from slimsr.train.losses import DistillationLoss

    teacher = load(args.teacher).eval()
    scale = teacher.scale
    store = training_store([(args.exactness_data, None)], scale, args.patch)
    n = min(args.exactness_images, len(store))
    loss_fn = DistillationLoss(5)
    rng = np.random.default_rng(0)
    fp16_err, fp16_psnr, dihedral = [], [], []
    ring_abs, inner_abs, crop_psnr, loss_live, loss_cached = [], [], [], [], []
    hr_live, hr_cached, hr_whole = [], [], []
    p, ring = args.patch, args.ring
    with torch.no_grad():
        for i in range(n):
            hr, lr = (t[None] for t in store[i].float_pair())
            whole = teacher.raw(lr)
            hr_whole.append(_psnr(whole.clamp(0, 1), hr))
            half = whole.half().float()
            fp16_err.append(float((half - whole).abs().max()))
            fp16_psnr.append(_psnr(half, whole))
            for hflip, vflip, transpose in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)]:

                def turn(t: torch.Tensor, h=hflip, v=vflip, tr=transpose) -> torch.Tensor:
                    t = t.flip(-1) if h else t
                    t = t.flip(-2) if v else t
                    return t.transpose(-1, -2) if tr else t

                live = teacher.raw(turn(lr))
                dihedral.append(
                    {
                        "psnr": _psnr(turn(whole), live),
                        "max_abs": float((turn(whole) - live).abs().max()),
                    }
                )
            h, w = lr.shape[-2:]
            tops = rng.integers(0, h - p + 1, 4)
            lefts = rng.integers(0, w - p + 1, 4)
            patches = torch.cat([lr[..., y : y + p, x : x + p] for y, x in zip(tops, lefts)])
            live = teacher.raw(patches)
            cached = (
                torch.cat(
                    [
                        whole[..., y * scale : (y + p) * scale, x * scale : (x + p) * scale]
                        for y, x in zip(tops, lefts)
                    ]
                )
                .half()
                .float()
            )
            diff = (cached - live).abs()
            r = ring * scale
            mask = torch.ones_like(diff, dtype=torch.bool)
            mask[..., r:-r, r:-r] = False
            ring_abs.append(float(diff[mask].mean()))
            inner_abs.append(float(diff[~mask].mean()))
            crop_psnr.append(_psnr(cached, live))
            hr_patches = torch.cat(
                [
                    hr[..., y * scale : (y + p) * scale, x * scale : (x + p) * scale]
                    for y, x in zip(tops, lefts)
                ]
            )
            hr_live.append(_psnr(live.clamp(0, 1), hr_patches))
            hr_cached.append(_psnr(cached.clamp(0, 1), hr_patches))
            student = torch.nn.functional.interpolate(patches, scale_factor=scale, mode="bicubic")
            loss_live.append(float(loss_fn(student, live)[0]))
            loss_cached.append(float(loss_fn(student, cached)[0]))
    mean = statistics.fmean
    return {
        "teacher": str(args.teacher),
        "images": n,
        "data": str(args.exactness_data),
        "patch": p,
        "fp16_max_abs": max(fp16_err),
        "fp16_psnr_min": min(fp16_psnr),
        "dihedral_psnr_mean": mean(d["psnr"] for d in dihedral),
        "dihedral_psnr_min": min(d["psnr"] for d in dihedral),
        "dihedral_max_abs": max(d["max_abs"] for d in dihedral),
        "ring_lr_px": ring,
        "crop_mean_abs_ring": mean(ring_abs),
        "crop_mean_abs_interior": mean(inner_abs),
        "crop_psnr_mean": mean(crop_psnr),
        "teacher_psnr_whole_images": mean(hr_whole),
        "teacher_psnr_patches_cached": mean(hr_cached),
        "teacher_psnr_patches_live": mean(hr_live),
        "loss_student": "bicubic",
        "loss_live_mean": mean(loss_live),
        "loss_cached_mean": mean(loss_cached),
        "loss_rel_diff_mean": mean(abs(a - b) / b for a, b in zip(loss_cached, loss_live)),
    }


def run_distill(args: argparse.Namespace) -> None:
    if torch.cuda.is_available():
        raise SystemExit("--distill measures CPU steps; hide the GPU (CUDA_VISIBLE_DEVICES=)")
    threads = torch.get_num_threads()
    batch = args.batch or 16
    meta = {
        "device": f"CPU ({threads} threads)",
        "torch": torch.__version__,
        "threads": threads,
        "workers": args.workers,
        "student": "edsrmini x2",
        "teacher": str(args.teacher),
        "batch": batch,
        "patch": args.patch,
        "timed_iterations": args.warmup * -(-args.iters // args.warmup),
        "load_1m_before": load_1m(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        synthetic_images(images, 24, 320)
        rows = distill_rows(args, images, Path(tmp) / "runs", batch)
    meta["load_1m_after_steps"] = load_1m()
    exact = cache_exactness(args) if args.exactness_images else None
    table = Table(
        title=f"distillation step cost, {meta['device']}, torch {meta['torch']}; EDSRmini x2, "
        f"batch {batch} of {args.patch} px LR patches; teacher {args.teacher.name}; 1-min load "
        f"{meta['load_1m_before']} before"
    )
    for col in ("step", "step ms", "x plain", "samples/s", "data wait", "cache build s"):
        table.add_column(col, justify="left" if col == "step" else "right")
    for r in rows:
        tc = r["teacher_cache"]
        table.add_row(
            r["variant"],
            f"{1000 * r['step_s']:.0f}",
            f"{r['step_ratio_to_plain']:.2f}",
            f"{r['samples_per_s']:.1f}",
            f"{100 * r['data_wait_frac']:.1f}%",
            f"{tc['seconds']:.1f}" if tc else "",
        )
    Console(width=140).print(table)
    if exact is not None:
        print(json.dumps(exact, indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({**meta, "rows": rows, "exactness": exact}, indent=2) + "\n"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="*", default=None)
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per recipe")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first iterations")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default: 8 on CPU)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument(
        "--models",
        dest="models_list",
        nargs="*",
        default=None,
        metavar="MODEL",
        help=f"efficiency of these models on a fixed small recipe (none given: {' '.join(MODELS)})",
    )
    pair = parser.add_mutually_exclusive_group()  # one side-by-side comparison per run
    pair.add_argument(
        "--bf16",
        action="store_true",
        help="--models: each model in fp32, then with train.precision=bf16, side by side",
    )
    pair.add_argument(
        "--online-fold",
        action="store_true",
        help="--models: each model with train.fast_path.online_fold off, then on, side by side",
    )
    pair.add_argument(
        "--compile",
        action="store_true",
        help="--models: each model also with train.fast_path.compile=on, side by side",
    )
    parser.add_argument("--scale", type=int, default=4, help="--models: scale (default 4)")
    parser.add_argument("--patch", type=int, default=32, help="--models: LR patch (default 32)")
    parser.add_argument(
        "--distill", action="store_true", help="plain vs cached-teacher vs live-teacher steps"
    )
    parser.add_argument("--teacher", type=Path, default=TEACHER, help="--distill: the teacher")
    parser.add_argument("--exactness-data", type=Path, default=EXACTNESS_DATA)
    parser.add_argument(
        "--exactness-images", type=int, default=8, help="--distill: images measured (0: none)"
    )
    parser.add_argument("--ring", type=int, default=4, help="--distill: border ring, LR px")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.distill:
        run_distill(args)
        return
    if args.models_list is not None:
        if args.recipes:
            parser.error("give recipes or --models, not both")
        run_models(args)
        return
    cuda = torch.cuda.is_available()
    batch = args.batch or (None if cuda else 8)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        synthetic_images(images, 24, 320)
        for name in args.recipes or PUBLISHED:
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
