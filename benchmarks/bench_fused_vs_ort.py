"""Fused forms against the plain network and ONNX Runtime fp32 on CPU, side by side.

    python benchmarks/bench_fused_vs_ort.py [--cases abpn:3:360x640,span_ntire:4:256x256]
        [--threads 1] [--warmup 2] [--repeats 7] [--json OUT]

For each case (model:scale:HxW LR), one random network (weights do not change the time) runs
as: the plain network contiguous (NCHW) and channels-last (NHWC), slimsr's fused form
(`slimsr.fused.fuse`, the CPU default of `prepare_for_inference`), and ONNX Runtime fp32 on
the file `slimsr.export.onnx.export_onnx` writes (session from `export.runners.onnx_session`,
same thread count). All four are checked against each other first, then run round-robin
(`bench_int8.measure`, rotating order). Ratios are medians of per-round ratios (the four calls
of a round run back to back, so load from other processes, which changes over seconds, hits
them alike; medians of the times themselves are given too). Also: achieved GFLOP/s (2 x MACs counted by `slimsr.profile.complexity`) and, for
scale, a large square SGEMM's GFLOP/s measured in the same run. Ratios are to ONNX Runtime and
to the plain network's faster layout in that round. Prints a table, writes JSON; no asserts on timings.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from bench_int8 import measure
from rich.console import Console
from rich.table import Table

import slimsr
from slimsr.export.onnx import export_onnx
from slimsr.export.runners import onnx_session, run_onnx
from slimsr.fileio import atomic_write_text
from slimsr.fused import fuse
from slimsr.profile import complexity


def parse_case(text: str) -> tuple[str, int, tuple[int, int]]:
    name, scale, hw = text.split(":")
    h, w = hw.lower().split("x")
    return name, int(scale), (int(h), int(w))


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best-of SGEMM rate (n x n x n) on this thread count: the CPU's practical FMA peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(call: Any) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def per_round(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[i] / b[i]."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def run_case(
    name: str, scale: int, hw: tuple[int, int], args: argparse.Namespace, tmp: Path
) -> dict:
    torch.manual_seed(0)
    model = slimsr.create_model(name, scale).eval()
    net, rng = model.net, model.input_range
    x01 = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(0))
    x = x01 * rng
    x_cl = x.contiguous(memory_format=torch.channels_last)
    net_cl = slimsr.create_model(name, scale).net.eval()
    net_cl.load_state_dict(net.state_dict())
    net_cl = net_cl.to(memory_format=torch.channels_last)
    fused = fuse(net)
    if fused is None:
        raise SystemExit(f"{name} has no fused form")
    path = tmp / f"{name}_x{scale}.onnx"
    export_onnx(model, path, verify=False)
    session = onnx_session(str(path), name, args.threads)
    arr = x01.numpy()

    calls = {
        "plain NCHW": lambda: net(x),
        "plain NHWC": lambda: net_cl(x_cl),
        "fused": lambda: fused(x),
        "ORT fp32": lambda: run_onnx(session, arr, name),
    }
    with torch.inference_mode():
        ref = net(x)
        diffs = {
            k: float((torch.as_tensor(c()) * (rng if k == "ORT fp32" else 1) - ref).abs().max())
            for k, c in calls.items()
        }
        times = measure(calls, args.warmup, args.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    flop = 2 * complexity(net, hw).flops["macs"]
    best_plain = [min(a, b) for a, b in zip(times["plain NCHW"], times["plain NHWC"], strict=True)]
    return {
        "model": name,
        "scale": scale,
        "input_hw": list(hw),
        "gflop": flop / 1e9,
        "max_abs_diff_vs_plain": diffs,
        "median_ms": med,
        "gflops_per_s": {k: flop / (v / 1000) / 1e9 for k, v in med.items()},
        "ratio_to_ort": {k: per_round(v, times["ORT fp32"]) for k, v in times.items()},
        "fused_to_best_plain": per_round(times["fused"], best_plain),
        "times_ms": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cases",
        default="abpn:3:360x640,rlfn:4:256x256,span_ntire:4:256x256,span:4:128x128,"
        "smfanet:4:256x256",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, default=Path("bench_fused_vs_ort.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    peak_before = gemm_gflops()
    with tempfile.TemporaryDirectory(prefix="slimsr-bench-fused-") as tmp:
        rows = [run_case(*parse_case(c), args, Path(tmp)) for c in args.cases.split(",")]
    peak = max(peak_before, gemm_gflops())

    table = Table(
        title=f"CPU fp32, {args.threads} thread(s), median of {args.repeats} round-robin; "
        f"SGEMM 2048^3 {peak:.0f} GFLOP/s"
    )
    for col in ("case", "engine", "median ms", "GFLOP/s", "/ ORT", "max |diff|"):
        table.add_column(col)
    for r in rows:
        case = f"{r['model']} x{r['scale']} {r['input_hw'][1]}x{r['input_hw'][0]}"
        for k, ms in r["median_ms"].items():
            table.add_row(
                case,
                k,
                f"{ms:.1f}",
                f"{r['gflops_per_s'][k]:.1f}",
                f"{r['ratio_to_ort'][k]:.2f}",
                f"{r['max_abs_diff_vs_plain'][k]:.1e}",
            )
            case = ""
        table.add_row("", "fused / best plain", f"{r['fused_to_best_plain']:.2f}", "", "", "")
    Console().print(table)
    report = {
        "threads": args.threads,
        "repeats": args.repeats,
        "sgemm_gflops_per_s": peak,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the ISA ATen dispatches to
        "machine": platform.platform(),
        "cases": rows,
    }
    atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
