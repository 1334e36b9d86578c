"""Roofline of CPU inference: per model and thread count, the latency of slimsr's engine, ONNX
Runtime fp32 and ONNX Runtime INT8 (where the graph quantises), with the arithmetic rate
(GFLOP/s) and memory rate (GB/s) each achieves, next to the peaks of this machine measured in
the same run (a large fp32 GEMM; a large copy).

    python benchmarks/bench_roofline.py --threads 1,2 --json benchmarks/results/roofline_cpu.json
    python benchmarks/bench_roofline.py --models abpn:3,fmen_s:4 --input 360x640 --threads 2

Work and traffic are counted on the meta device (no arithmetic):
- FLOPs = 2 x MACs (`slimsr.profile`'s `macs` convention: conv, linear, matmul; no bias, no
  element-wise work), so achieved GFLOP/s is a lower bound of the work done;
- bytes = what an op-by-op (unfused) execution moves at least: every op reads each tensor
  argument once (weights included) and writes its output once, fp32, views free. Fusion and
  caches move less, so GB/s above the copy peak means the engine kept data in cache.
The peaks: the best of several 3072 x 3072 x 3072 `torch.mm` (2 x 3072^3 FLOPs) and of a
256 MB `copy_` (read + write = 512 MB), at each thread count, before and after the models.
A model near the GEMM peak is compute-bound; one far below both is latency/overhead-bound.

Engines per model (same random weights, same input, interleaved round-robin):
- `slimsr`: `prepare_for_inference` (the fused form where the family has one, else the plain
  network in its measured memory format), as `slimsr upscale` runs it;
- `ort_fp32`: `slimsr export onnx`'s graph in onnxruntime (CPU provider, intra-op threads set);
- `ort_int8`: the same exported as QDQ INT8 (calibrated on crops of the bundled example); only
  plain-conv graphs quantise (others are listed as skipped). INT8 changes the output.
The official implementations are timed by `benchmarks/bench_vs_reference.py` (it needs their
checkouts). Prints one table per thread count and writes JSON. No asserts.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_int8 import measure  # round-robin timing, shared by the benchmarks
from rich.console import Console
from rich.table import Table
from torch.utils._python_dispatch import TorchDispatchMode

import slimsr
from slimsr.errors import SlimsrError
from slimsr.fileio import atomic_write_text
from slimsr.inference_form import inference_config, prepare_for_inference
from slimsr.profile import complexity
from slimsr.registry import get_model_info

DEFAULT_MODELS = (
    "fmen_s:4,e_rfdn:4,bsrn_s:4,bsrn:4,rlfn:4,rlfn_s:4,smfanet:4,safmn:4,"
    "edsrmini:4,span_ntire:4,abpn:3,swinirmini:4,swinir_s:4"
)


# -- peaks ------------------------------------------------------------------------------------


def gemm_peak(n: int = 3072, repeats: int = 3) -> float:
    """Best fp32 GEMM rate, GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_seconds(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def copy_peak(mbytes: int = 256, repeats: int = 5) -> float:
    """Best copy rate, GB/s, counting the read and the write."""
    src = torch.ones(mbytes * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_seconds(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * 4 / best / 1e9


def _seconds(call: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


# -- work and traffic -------------------------------------------------------------------------


class _Traffic(TorchDispatchMode):
    """Bytes an op-by-op execution moves: each op's tensor arguments read once, its outputs
    written once; views and metadata ops move nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        if getattr(func, "is_view", False) or func.__name__.split(".")[0] in _FREE:
            return out
        tensors = [
            t
            for t in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        ]
        outs = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        self.bytes += sum(t.numel() * t.element_size() for t in tensors + outs)
        return out


_FREE = {"detach", "alias", "empty", "empty_like", "lift_fresh", "_to_copy", "clone", "t"}


def traffic_bytes(net: torch.nn.Module, x: torch.Tensor) -> int:
    meta = copy.deepcopy(net).to("meta")
    mode = _Traffic()
    with torch.no_grad(), mode:
        meta(x.to("meta"))
    return mode.bytes


# -- engines ----------------------------------------------------------------------------------


def engines(
    model: slimsr.SRModel, x01: torch.Tensor, tmp: Path, threads: int, crops: list[np.ndarray]
) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """name -> one inference on the prepared input, and name -> why an engine was skipped."""
    from slimsr.export.onnx import INPUT_NAME, export_onnx
    from slimsr.export.runners import onnx_session

    fast = prepare_for_inference(copy.deepcopy(model), "cpu", torch.float32, None, False)
    xf = x01.contiguous(memory_format=inference_config(fast).memory_format)

    def run_slimsr() -> Any:
        with torch.inference_mode():
            return fast(xf)

    calls: dict[str, Callable[[], Any]] = {"slimsr": run_slimsr}
    skipped: dict[str, str] = {}
    arr = x01.numpy()
    for key, dtype in (("ort_fp32", "fp32"), ("ort_int8", "int8")):
        path = tmp / f"{key}.onnx"
        try:
            export_onnx(
                model,
                path,
                dtype=dtype,
                verify=False,
                calibration=crops if dtype == "int8" else None,
            )
            session = onnx_session(str(path), key, threads)
        except (SlimsrError, RuntimeError) as exc:
            skipped[key] = str(exc).splitlines()[0][:120]
            continue
        calls[key] = lambda s=session: s.run(None, {INPUT_NAME: arr})
    return calls, skipped


def measure_medians(
    calls: dict[str, Callable[[], Any]], warmup: int, repeats: int
) -> dict[str, float]:
    """Median ms per engine, timed round-robin (`bench_int8.measure`)."""
    return {k: statistics.median(v) for k, v in measure(calls, warmup, repeats).items()}


def bench_model(
    name: str, scale: int, hw: tuple[int, int], threads: int, args: Any, crops: list[np.ndarray]
) -> dict[str, Any]:
    info = get_model_info(name)
    torch.manual_seed(0)
    model = slimsr.create_model(name, scale).eval()
    hw = (max(hw[0], info.min_size), max(hw[1], info.min_size))
    x01 = torch.rand(1, 3, *hw)
    flops = 2 * complexity(model.net, hw).flops["macs"]
    xin = x01 * model.info.input_range
    moved = traffic_bytes(model.net, xin)
    with tempfile.TemporaryDirectory(prefix="slimsr-roofline-") as tmp:
        calls, skipped = engines(model, x01, Path(tmp), threads, crops)
        ms = measure_medians(calls, args.warmup, args.repeats)
    row: dict[str, Any] = {
        "model": name,
        "scale": scale,
        "threads": threads,
        "input_hw": list(hw),
        "gflop": flops / 1e9,
        "gbytes_op_by_op": moved / 1e9,
        "skipped": skipped,
        "engines": {},
    }
    for key, t in ms.items():
        row["engines"][key] = {
            "ms": round(t, 2),
            "gflops": round(flops / t / 1e6, 1),
            "gbs": round(moved / t / 1e6, 1),
        }
    if "ort_fp32" in ms:
        row["ort_fp32_over_slimsr"] = round(ms["ort_fp32"] / ms["slimsr"], 3)
    return row


def parse_models(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        name, _, scale = item.strip().partition(":")
        out.append((name, int(scale or 4)))
    return out


def table_for(rows: list[dict[str, Any]], peaks: dict[str, float], threads: int) -> Table:
    table = Table(
        title=f"{threads} thread(s): peaks GEMM {peaks['gemm_gflops']:.0f} GFLOP/s, "
        f"copy {peaks['copy_gbs']:.1f} GB/s (measured in this run)"
    )
    for col in (
        "model",
        "input",
        "GFLOP",
        "GB op-by-op",
        "slimsr ms",
        "GFLOP/s (% peak)",
        "GB/s",
        "ORT fp32 ms",
        "ORT/slimsr",
        "ORT INT8 ms",
    ):
        table.add_column(col)
    for r in rows:
        e = r["engines"]
        s = e["slimsr"]
        table.add_row(
            f"{r['model']} x{r['scale']}",
            "x".join(map(str, r["input_hw"])),
            f"{r['gflop']:.2f}",
            f"{r['gbytes_op_by_op']:.2f}",
            f"{s['ms']:.1f}",
            f"{s['gflops']:.0f} ({100 * s['gflops'] / peaks['gemm_gflops']:.0f}%)",
            f"{s['gbs']:.1f}",
            f"{e['ort_fp32']['ms']:.1f}" if "ort_fp32" in e else "-",
            f"{r.get('ort_fp32_over_slimsr', float('nan')):.2f}",
            f"{e['ort_int8']['ms']:.1f}" if "ort_int8" in e else "-",
        )
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help="name:scale,... ")
    parser.add_argument("--input", default="256x256", help="LR HxW")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, default=Path("roofline.json"))
    args = parser.parse_args(argv)
    h, w = (int(v) for v in args.input.lower().split("x"))
    from slimsr.export.calibration import calibration_crops

    example = Path(slimsr.__file__).parent / "assets" / "example.png"
    crops = calibration_crops(str(example), 64, 16)
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the ISA ATen dispatches to
        "conventions": "FLOPs = 2 x MACs (macs convention); bytes = op-by-op fp32 traffic",
        "runs": [],
    }
    console = Console(width=200)
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        peaks_before = (gemm_peak(), copy_peak())
        rows = [
            bench_model(name, scale, (h, w), threads, args, crops)
            for name, scale in parse_models(args.models)
        ]
        peaks_after = (gemm_peak(), copy_peak())
        peaks = {
            "gemm_gflops": max(peaks_before[0], peaks_after[0]),
            "copy_gbs": max(peaks_before[1], peaks_after[1]),
        }
        console.print(table_for(rows, peaks, threads))
        report["runs"].append({"threads": threads, "peaks": peaks, "rows": rows})
    atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
