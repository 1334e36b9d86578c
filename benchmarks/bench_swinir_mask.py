"""SwinIR's training step with the official shifted-window mask value (-100) against -inf.

exp(-100) ~ 4e-44 is a subnormal float32; x86 CPUs compute on subnormals far slower, and a
shifted block's softmax produces one per masked pair, which the backward then multiplies. slimsr
turns the masked pairs into -inf at use (`slimsr.archs.swinir.masked_as_minus_inf`); this
measures what that buys, both variants interleaved round by round in one process (forward,
L1 loss, backward and an Adam step on random data; `bench_int8.measure`'s alternating order;
medians of per-round ratios).

    OMP_NUM_THREADS=1 python benchmarks/bench_swinir_mask.py --threads 1 \\
        --json benchmarks/results/swinir_mask_cpu1.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from bench_int8 import measure
from torch import Tensor

import slimsr.archs.swinir as swinir
from slimsr.factory import create_model
from slimsr.fileio import atomic_write_text


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    """One training step: forward, L1 loss, backward, Adam."""
    opt.zero_grad(set_to_none=True)
    (net(x) - y).abs().mean().backward()
    opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="swinirmini")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bf16", action="store_true", help="under bf16 autocast")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = create_model(args.model, args.scale).net.train()
    net.set_attention("math")
    opt = torch.optim.Adam(net.parameters(), 2e-4)
    x = torch.rand(args.batch, 3, args.patch, args.patch)
    y = torch.rand(args.batch, 3, args.patch * args.scale, args.patch * args.scale)
    convert = swinir.masked_as_minus_inf
    variants = {"official -100": lambda mask: mask, "-inf (slimsr)": convert}
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)

    def step_with(variant: Callable[[Tensor], Tensor]) -> Callable[[], None]:
        def step() -> None:
            swinir.masked_as_minus_inf = variant
            with amp:
                train_step(net, opt, x, y)

        return step

    calls = {name: step_with(variant) for name, variant in variants.items()}
    times = measure(calls, warmup=1, repeats=args.rounds, settle=0.0)
    swinir.masked_as_minus_inf = convert
    ratios = [a / b for a, b in zip(times["-inf (slimsr)"], times["official -100"])]
    row = {
        "model": args.model,
        "scale": args.scale,
        "batch": args.batch,
        "patch": args.patch,
        "threads": args.threads,
        "bf16": args.bf16,
        "official_ms": statistics.median(times["official -100"]),
        "minus_inf_ms": statistics.median(times["-inf (slimsr)"]),
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "torch": torch.__version__,
    }
    print(
        f"{args.model} x{args.scale}, batch {args.batch} of {args.patch} px, {args.threads} "
        f"thread(s){', bf16' if args.bf16 else ''}: official -100 {row['official_ms']:.0f} ms, "
        f"-inf {row['minus_inf_ms']:.0f} ms per step, ratio {row['ratio_median']:.2f}"
    )
    if args.json is not None:
        rows = json.loads(args.json.read_text())["rows"] if args.json.is_file() else []
        atomic_write_text(args.json, json.dumps({"rows": [*rows, row]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
