"""INT8 deployment latency on CPU: PyTorch float vs ONNX float vs ONNX INT8 vs TFLite INT8.

    python benchmarks/bench_int8.py [--weights abpn_x3_float_keras.npz] [--calib T91/HR
        --calib-downscale 3] [--height 360] [--width 640] [--threads 2] [--repeats 10]
        [--json OUT]

One plain-conv model (default: the official ABPN x3 from ../shared when present, else a
random ABPN x3, which times the same) is exported by slimsr to ONNX fp32, ONNX INT8 (QDQ,
onnxruntime static quantisation) and TFLite INT8 (full-integer, uint8 IO) plus TFLite float for
context, each INT8 file calibrated on the same crops. Every engine then runs the same
640x360 image (-> 1920x1080 at x3) in its native form (PyTorch: NCHW float 0..255 through the
network; ONNX: NCHW float [0,1]; TFLite: NHWC uint8 or float pixels), with the given thread
count, round-robin so that load changes on a shared machine hit all engines alike. Prints the
median latencies and the ratios to PyTorch and to ONNX float; writes JSON. No asserts.
"""

from __future__ import annotations

import argparse
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
from rich.console import Console
from rich.table import Table

import slimsr
from slimsr.export.calibration import calibration_crops
from slimsr.export.onnx import INPUT_NAME, export_onnx
from slimsr.export.runners import onnx_session, tflite_interpreter
from slimsr.export.tflite import export_tflite
from slimsr.export.verify import smooth_test_images
from slimsr.fileio import atomic_write_text

OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "weights" / "official"


def load_model(weights: str | None) -> tuple[slimsr.SRModel, str]:
    if weights:
        return slimsr.load(weights), weights
    official = OFFICIAL / "abpn_x3_float_keras.npz"
    if official.is_file():
        return slimsr.load(official), str(official)
    torch.manual_seed(0)
    return slimsr.create_model("abpn", 3).eval(), "random abpn x3"


def engines(
    model: slimsr.SRModel, crops: list[np.ndarray], x01: torch.Tensor, tmp: Path, threads: int
) -> dict[str, Callable[[], Any]]:
    """name -> a zero-argument call running one inference on the prepared input."""
    paths = {
        "onnx_fp32": tmp / "f.onnx",
        "onnx_int8": tmp / "q.onnx",
        "tflite_fp32": tmp / "f.tflite",
        "tflite_int8": tmp / "q.tflite",
    }
    export_onnx(model, paths["onnx_fp32"], verify=False)
    export_onnx(model, paths["onnx_int8"], dtype="int8", calibration=crops, verify=False)
    export_tflite(model, paths["tflite_fp32"], verify=False)
    export_tflite(model, paths["tflite_int8"], int8=True, calibration=crops, verify=False)

    x255 = x01 * model.info.input_range
    net = model.net.eval()

    def pytorch() -> Any:
        with torch.inference_mode():
            return net(x255)

    calls: dict[str, Callable[[], Any]] = {"pytorch_fp32": pytorch}
    arr = x01.numpy()
    for key in ("onnx_fp32", "onnx_int8"):
        session = onnx_session(str(paths[key]), key, threads)
        calls[key] = lambda s=session: s.run(None, {INPUT_NAME: arr})
    pixels = x01[0].permute(1, 2, 0).numpy() * 255.0
    for key in ("tflite_fp32", "tflite_int8"):
        it = tflite_interpreter(paths[key], key, threads)
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        it.resize_tensor_input(inp["index"], [1, *pixels.shape], strict=False)
        it.allocate_tensors()
        data = (np.round(pixels) if inp["dtype"] == np.uint8 else pixels).astype(inp["dtype"])

        def run(it: Any = it, i: int = inp["index"], o: int = out["index"], d: Any = data) -> Any:
            it.set_tensor(i, d[None])
            it.invoke()
            return it.get_tensor(o)

        calls[key] = run
    return calls


SETTLE_S = 0.05
"""Idle time before each timed call. Thread pools keep spinning after a call returns (ONNX
Runtime's intra-op workers, OpenMP's): on 2 cores, a PyTorch forward right after an ONNX
Runtime run measured 49.5 ms against 21.0 alone (ABPN x3, 256x256, 2 threads), 35.1 ms after a
10 ms pause and 19.7 after 50 ms. A deployment runs one engine, so each call is timed on
settled cores."""


def measure(
    calls: dict[str, Callable[[], Any]], warmup: int, repeats: int, settle: float = SETTLE_S
) -> dict[str, list]:
    """Per engine, `repeats` times in ms, round-robin in a rotating order (load drift hits all
    engines alike), each call after `settle` seconds idle (see `SETTLE_S`)."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {k: [] for k in calls}
    names = list(calls)
    for r in range(repeats):
        for k in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
            time.sleep(settle)
            t0 = time.perf_counter()
            calls[k]()
            times[k].append((time.perf_counter() - t0) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", help="Float plain-conv weights (default: official ABPN).")
    parser.add_argument("--calib", help="Calibration images (default: the bundled example).")
    parser.add_argument("--calib-downscale", type=int, default=1)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", type=Path, default=Path("bench_int8.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, source = load_model(args.weights)
    calib = args.calib or str(Path(slimsr.__file__).parent / "assets" / "example.png")
    crops = calibration_crops(calib, 64, 48, downscale=args.calib_downscale)
    gen = torch.Generator().manual_seed(0)
    x01 = smooth_test_images((1, 3, args.height, args.width), gen)
    with tempfile.TemporaryDirectory(prefix="slimsr-bench-int8-") as tmp:
        calls = engines(model, crops, x01, Path(tmp), args.threads)
        times = measure(calls, args.warmup, args.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    base, onnx_base = med["pytorch_fp32"], med["onnx_fp32"]
    rows = [
        {
            "engine": k,
            "median_ms": med[k],
            "min_ms": min(times[k]),
            "max_ms": max(times[k]),
            "speedup_vs_pytorch": base / med[k],
            "speedup_vs_onnx_fp32": onnx_base / med[k],
        }
        for k in times
    ]
    out_hw = (args.height * model.scale, args.width * model.scale)
    table = Table(
        title=f"{model.name} x{model.scale}, {args.width}x{args.height} -> {out_hw[1]}x"
        f"{out_hw[0]}, {args.threads} threads, median of {args.repeats} (round-robin)"
    )
    for col in ("engine", "median ms", "min..max ms", "x vs PyTorch", "x vs ONNX fp32"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["engine"],
            f"{r['median_ms']:.1f}",
            f"{r['min_ms']:.0f}..{r['max_ms']:.0f}",
            f"{r['speedup_vs_pytorch']:.2f}",
            f"{r['speedup_vs_onnx_fp32']:.2f}",
        )
    Console().print(table)
    report = {
        "model": model.name,
        "scale": model.scale,
        "weights": source,
        "calibration": calib,
        "input_hw": [args.height, args.width],
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "results": rows,
        "times_ms": times,
    }
    atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
