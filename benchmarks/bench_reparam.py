"""FMEN train-time (RRRB + BatchNorm) vs deploy (re-parameterised) form, side by side.

    python benchmarks/bench_reparam.py [--models fmen_s_train,fmen_train] [--scale 4]
        [--size 256] [--threads 2] [--repeats 10] [--json OUT]

The deploy network is made from the train network by `slimsr.reparam` (BN statistics set to
non-trivial values first, so the folds are exercised), the outputs are checked to agree, then
both run on the same input through the fast path (`slimsr.inference_form`) in both memory formats,
alternately; each form is credited with its faster layout (NHWC slows the train form down, see
`slimsr.inference_form`). Median latencies, params, MACs and peak resident-memory increases (each in
a fresh process) are printed with the train / deploy ratios. Prints a table and writes JSON; no asserts on timings.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import slimsr
from slimsr.fileio import atomic_write_text
from slimsr.inference_form import inference_config, prepare_for_inference
from slimsr.profile import complexity, cpu_peak_memory, cpu_threads
from slimsr.registry import count_parameters
from slimsr.reparam import reparameterize_model


def train_model(name: str, scale: int) -> slimsr.SRModel:
    """A train-time model with BN running statistics that are not the identity."""
    torch.manual_seed(0)
    model = slimsr.create_model(name, scale)
    for m in model.net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


LAYOUTS = {"NCHW": False, "NHWC": True}


def compare(name: str, args: argparse.Namespace) -> dict[str, Any]:
    train = train_model(name, args.scale)
    deploy = reparameterize_model(train)
    r = train.info.input_range
    hw = (args.size, args.size)
    x = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(0)) * r
    layouts = (
        LAYOUTS
        if args.channels_last is None
        else {"NHWC" if args.channels_last else "NCHW": args.channels_last}
    )
    runs: dict[tuple[str, str], tuple[torch.nn.Module, torch.Tensor]] = {}
    for form, model in (("train", train), ("deploy", deploy)):
        for layout, cl in layouts.items():
            net = prepare_for_inference(copy.deepcopy(model.net), "cpu", torch.float32, cl)
            runs[form, layout] = (
                net,
                x.contiguous(memory_format=inference_config(net).memory_format),
            )
    with cpu_threads(args.threads), torch.inference_mode():
        outs = {form: runs[form, next(iter(layouts))][0](x) for form in ("train", "deploy")}
    diff = (outs["train"] - outs["deploy"]).abs().max().item()
    times: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
    with cpu_threads(args.threads), torch.inference_mode():
        for i in range(args.warmup + args.repeats):
            for key, (net, xin) in runs.items():
                start = time.perf_counter()
                net(xin)
                if i >= args.warmup:
                    times[key].append((time.perf_counter() - start) * 1e3)
    med = {f"{form} {layout}": statistics.median(v) for (form, layout), v in times.items()}
    best = {}
    for form in ("train", "deploy"):
        layout = min(layouts, key=lambda lay, f=form: med[f"{f} {lay}"])
        best[form] = {"layout": layout, "median_ms": med[f"{form} {layout}"]}
    row: dict[str, Any] = {
        "train": name,
        "deploy": deploy.name,
        "scale": args.scale,
        "input_hw": list(hw),
        "max_abs_diff": diff,
        "params": {"train": count_parameters(train.net), "deploy": count_parameters(deploy.net)},
        "macs": {
            "train": complexity(train.net, hw).flops["macs"],
            "deploy": complexity(deploy.net, hw).flops["macs"],
        },
        "times_ms": {f"{form} {layout}": v for (form, layout), v in times.items()},
        "median_ms": med,
        "best": best,
        "speedup": best["train"]["median_ms"] / best["deploy"]["median_ms"],
        "speedup_same_layout": {
            layout: med[f"train {layout}"] / med[f"deploy {layout}"] for layout in layouts
        },
    }
    if not args.no_memory:
        mem = {
            form: cpu_peak_memory(
                model.net,
                (1, 3, *hw),
                r,
                threads=args.threads,
                channels_last=LAYOUTS[best[form]["layout"]],
            )
            for form, model in (("train", train), ("deploy", deploy))
        }
        row["memory"] = {k: m.to_dict() for k, m in mem.items()}
        row["memory_ratio"] = mem["train"].peak_increase_bytes / max(
            mem["deploy"].peak_increase_bytes, 1
        )
    return row


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> Table:
    t = Table(
        title=f"FMEN train-time vs deploy, x{args.scale}, {args.size}x{args.size} LR, "
        f"CPU {args.threads} threads, fp32 (median ms, each form in its faster layout)"
    )
    cols = (
        "train -> deploy",
        "params",
        "GMACs",
        "max|diff|",
        "train ms",
        "deploy ms",
        "speedup",
        "same layout",
        "train MB",
        "deploy MB",
        "mem ratio",
    )
    for col in cols:
        t.add_column(col, justify="left" if col == "train -> deploy" else "right")
    for r in rows:
        mem = r.get("memory")
        mb = {k: f"{m['peak_increase_bytes'] / 2**20:.1f}" for k, m in (mem or {}).items()}
        best = r["best"]
        same = ", ".join(f"{k} {v:.2f}x" for k, v in r["speedup_same_layout"].items())
        t.add_row(
            f"{r['train']} -> {r['deploy']}",
            f"{r['params']['train']:,} -> {r['params']['deploy']:,}",
            f"{r['macs']['train'] / 1e9:.1f} -> {r['macs']['deploy'] / 1e9:.1f}",
            f"{r['max_abs_diff']:.1e}",
            f"{best['train']['median_ms']:.1f} ({best['train']['layout']})",
            f"{best['deploy']['median_ms']:.1f} ({best['deploy']['layout']})",
            f"{r['speedup']:.2f}x",
            same,
            mb.get("train", "-"),
            mb.get("deploy", "-"),
            f"{r['memory_ratio']:.2f}x" if mem else "-",
        )
    return t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="fmen_s_train,fmen_train")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="LR height and width")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--channels-last",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="one memory format for both forms (default: time both, keep each form's faster)",
    )
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", type=Path, default=Path("bench_reparam.json"))
    args = parser.parse_args(argv)
    console = Console(highlight=False, width=160)
    rows = []
    for name in (n.strip() for n in args.models.split(",") if n.strip()):
        with console.status(f"{name} ..."):
            rows.append(compare(name, args))
    console.print(table(rows, args))
    report = {"torch": torch.__version__, "threads": args.threads, "rows": rows}
    atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
