"""Every registered model at x2/x3/x4: params, FLOPs in each convention, activations, convs,
CPU latency (and CUDA latency / peak memory when a GPU is present). Prints one table, writes JSON.

    python benchmarks/bench_models.py [--models 'bsrn*'] [--scales 2,3,4] [--input 256x256]
        [--time-size 128] [--threads 2] [--repeats 5] [--quick] [--no-time] [--json OUT]
    python benchmarks/bench_models.py --layout          # contiguous vs channels_last on CPU
    python benchmarks/bench_models.py --no-time --evals eval_results/ --plot psnr.png

FLOPs are counted at `--input` (LR, the NTIRE setting) in every convention, plus the `paper`
and `macs` conventions for a 1280x720 output (the papers' "Mult-Adds"); counting runs on the
meta device and costs nothing. Latency is measured on a smaller `--time-size` input so that the
whole registry runs in minutes on a laptop; models whose MACs there exceed `--max-gmacs` are not
timed. `--layout` times both memory formats, interleaved, and prints the channels_last /
contiguous ratio that each family's `register_family(cpu_channels_last=...)` is chosen from. `--evals` reads
`slimsr eval` results.json files and plots PSNR (of `--plot-dataset`, default Set5) against params
and against Mult-Adds (like Fig. 4 of the compression paper); that needs matplotlib (the `bench`
extra) and is skipped with a message without it. No asserts on timings.
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
from slimsr.fileio import atomic_path, atomic_write_text
from slimsr.inference_form import inference_config, prepare_for_inference
from slimsr.profile import (
    CONVENTIONS,
    complexity,
    cpu_threads,
    cuda_peak_memory,
    lr_size_for_output,
    parse_size,
    time_cpu,
    time_cuda,
)
from slimsr.registry import count_parameters, get_model_info, list_models

PAPER_OUTPUT = (720, 1280)  # H, W of the papers' "Mult-Adds for a 1280x720 output"


def lr_input(info: Any, hw: tuple[int, int]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, *hw, generator=gen) * info.input_range


def layout_ratio(net: torch.nn.Module, info: Any, hw: tuple[int, int], args: Any) -> dict:
    """Median ms of contiguous and channels_last, run alternately."""
    nets = {}
    for cl in (False, True):
        nets[cl] = prepare_for_inference(
            copy.deepcopy(net), "cpu", torch.float32, cl, False, family=info.family, name=info.name
        )
    x = lr_input(info, hw)
    xs = {
        cl: x.contiguous(memory_format=inference_config(n).memory_format) for cl, n in nets.items()
    }
    times: dict[bool, list[float]] = {False: [], True: []}
    with cpu_threads(args.threads), torch.inference_mode():
        for i in range(args.warmup + args.repeats):
            for cl, n in nets.items():
                start = time.perf_counter()
                n(xs[cl])
                if i >= args.warmup:
                    times[cl].append((time.perf_counter() - start) * 1e3)
    contiguous, channels_last = (statistics.median(times[k]) for k in (False, True))
    return {
        "contiguous_ms": contiguous,
        "channels_last_ms": channels_last,
        "ratio": channels_last / contiguous,
    }


def bench_one(name: str, scale: int, args: Any) -> dict[str, Any]:
    info = get_model_info(name)
    torch.manual_seed(0)
    net = info.build(scale).eval()
    at_input = complexity(net, args.input)
    at_output = complexity(net, lr_size_for_output(PAPER_OUTPUT, scale))
    row: dict[str, Any] = {
        "model": name,
        "family": info.family,
        "scale": scale,
        "params": count_parameters(net),
        "input_hw": list(at_input.input_hw),
        "flops": at_input.flops,
        "activations": at_input.activations,
        "convs": at_input.convs,
        "output_1280x720": {"input_hw": list(at_output.input_hw), "flops": at_output.flops},
    }
    if args.no_time:
        return row
    hw = (args.time_size, args.time_size)
    hw = (max(hw[0], info.min_size), max(hw[1], info.min_size))
    macs = complexity(net, hw).flops["macs"]
    row["time_hw"] = list(hw)
    if macs > args.max_gmacs * 1e9:
        row["cpu"] = {"skipped": f"{macs / 1e9:.0f} GMACs > --max-gmacs {args.max_gmacs}"}
        return row
    fast = prepare_for_inference(
        copy.deepcopy(net), "cpu", torch.float32, None, False, family=info.family, name=info.name
    )
    x = lr_input(info, hw).contiguous(memory_format=inference_config(fast).memory_format)
    timing = time_cpu(fast, x, threads=args.threads, warmup=args.warmup, repeats=args.repeats)
    row["cpu"] = {**timing.to_dict(), "channels_last": inference_config(fast).channels_last}
    if args.layout:
        row["layout"] = layout_ratio(net, info, hw, args)
    if torch.cuda.is_available():
        gpu = prepare_for_inference(
            copy.deepcopy(net),
            "cuda",
            torch.float32,
            None,
            False,
            family=info.family,
            name=info.name,
        )
        xg = lr_input(info, args.input).cuda()
        row["cuda"] = time_cuda(gpu, xg, warmup=args.warmup, repeats=args.repeats).to_dict()
        row["cuda_memory"] = cuda_peak_memory(gpu, xg).to_dict()
        row["cuda_hw"] = list(args.input)
    return row


def results_table(rows: list[dict[str, Any]], args: Any) -> Table:
    h, w = args.input
    title = (
        f"slimsr models: FLOPs [G] at a {w}x{h} LR input, Mult-Adds [G] for a 1280x720 output, "
        f"CPU ms at {args.time_size}x{args.time_size} ({args.threads} threads)"
    )
    t = Table(title=title)
    cols = ["model", "x", "params", *CONVENTIONS, "paper@720p", "macs@720p", "acts [M]", "convs"]
    if not args.no_time:
        cols += ["CPU ms", "layout"]
    if args.layout:
        cols.append("CL/contig")
    if any("cuda" in r for r in rows):
        cols += ["CUDA ms", "CUDA MB"]
    for col in cols:
        t.add_column(col, justify="left" if col in ("model", "layout") else "right")
    for r in rows:
        cpu = r.get("cpu", {})
        cells = [r["model"], str(r["scale"]), f"{r['params']:,}"]
        cells += [f"{r['flops'][c] / 1e9:.2f}" for c in CONVENTIONS]
        out = r["output_1280x720"]["flops"]
        cells += [f"{out['paper'] / 1e9:.1f}", f"{out['macs'] / 1e9:.1f}"]
        cells += [f"{r['activations'] / 1e6:.2f}", str(r["convs"])]
        if args.no_time:
            pass
        elif "median_ms" in cpu:
            cells += [f"{cpu['median_ms']:.1f}", "NHWC" if cpu["channels_last"] else "NCHW"]
        else:
            cells += ["-", cpu.get("skipped", "")[:20]]
        if args.layout:
            cells.append(f"{r['layout']['ratio']:.2f}" if "layout" in r else "-")
        if "CUDA ms" in cols:
            cuda = r.get("cuda")
            mem = r.get("cuda_memory")
            cells.append(f"{cuda['median_ms']:.2f}" if cuda else "-")
            cells.append(f"{mem['peak_bytes'] / 2**20:.0f}" if mem else "-")
        t.add_row(*cells)
    return t


# -- PSNR vs complexity plot -------------------------------------------------------------------


def read_evals(paths: list[Path], dataset: str | None = None) -> list[dict[str, Any]]:
    """One point per `slimsr eval` results.json: model, scale, protocol and mean PSNR (of
    `dataset`, or over all datasets in the file), plus bicubic's on the same images.

    Files of unregistered models, of bicubic itself and without `dataset` are skipped. The
    parameter and FLOP counts of a point are those of the registered variant's defaults.
    """
    files: list[Path] = []
    for p in paths:
        files += sorted(p.rglob("results.json")) if p.is_dir() else [p]
    points = []
    for f in files:
        rep = json.loads(f.read_text())
        name = str(rep["model"]).split(" ")[0]
        if name == "bicubic" or name not in list_models():
            continue
        sets = [
            d
            for d in rep.get("datasets", [])
            if d["mean"]["psnr"] and (dataset is None or d["dataset"].lower() == dataset.lower())
        ]
        if not sets:
            continue
        bicubic = [d["mean"]["bicubic_psnr"] for d in sets if d["mean"].get("bicubic_psnr")]
        points.append(
            {
                "model": name,
                "scale": int(rep["scale"]),
                "protocol": rep.get("protocol", "?"),
                "psnr": statistics.fmean(d["mean"]["psnr"] for d in sets),
                "bicubic_psnr": statistics.fmean(bicubic) if bicubic else None,
                "datasets": [d["dataset"] for d in sets],
                "file": str(f),
            }
        )
    return points


def _import_pyplot() -> Any | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot(points: list[dict[str, Any]], out: Path) -> bool:
    """PSNR against parameters and against Mult-Adds (1280x720 output), one row of panels per
    scale, bicubic as a dashed line (like Fig. 4 of the compression paper). Returns False,
    writing nothing, when matplotlib is not installed (`pip install slimsr[bench]`)."""
    plt = _import_pyplot()
    if plt is None:
        return False
    for p in points:
        with torch.device("meta"):
            net = get_model_info(p["model"]).build(p["scale"])
        p["params"] = count_parameters(net)
        p["macs_720p"] = complexity(net, lr_size_for_output(PAPER_OUTPUT, p["scale"])).flops["macs"]
    scales = sorted({p["scale"] for p in points})
    fig, axes = plt.subplots(
        len(scales), 2, figsize=(11, 3.6 * len(scales)), squeeze=False, sharey="row"
    )
    panels = (("params", 1e3, "parameters [K]"), ("macs_720p", 1e9, "Mult-Adds [G] (macs)"))
    for row, scale in enumerate(scales):
        pts = sorted((p for p in points if p["scale"] == scale), key=lambda p: p["params"])
        bic = [p["bicubic_psnr"] for p in pts if p["bicubic_psnr"] is not None]
        for col, (key, div, label) in enumerate(panels):
            ax = axes[row][col]
            xs = [p[key] / div for p in pts]
            ax.scatter(xs, [p["psnr"] for p in pts], zorder=3)
            for i, (x, p) in enumerate(zip(xs, pts, strict=True)):
                dy = 6 if i % 2 == 0 else -12  # alternate above / below against overlaps
                ax.annotate(
                    p["model"],
                    (x, p["psnr"]),
                    fontsize=8,
                    xytext=(5, dy),
                    textcoords="offset points",
                )
            if bic:
                ax.axhline(statistics.fmean(bic), color="grey", ls="--", lw=0.8, label="bicubic")
                ax.legend(fontsize=8, loc="lower right")
            ax.set_xscale("log")
            ticker = plt.matplotlib.ticker
            ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_locator(ticker.LogLocator(subs=(2.0, 3.0, 5.0)))
            ax.xaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
            ax.tick_params(axis="x", which="minor", labelsize=8)
            ax.set_xlabel(label + (" for a 1280x720 output" if key == "macs_720p" else ""))
            ax.set_ylabel(f"x{scale} PSNR [dB]")
            ax.grid(True, which="both", alpha=0.3)
            ax.margins(x=0.15, y=0.15)
    sets = sorted({d for p in points for d in p["datasets"]})
    protocols = sorted({str(p["protocol"]) for p in points})
    fig.suptitle(f"PSNR on {', '.join(sets)} ({'; '.join(protocols)} protocol) vs complexity")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="*", help="shell-style pattern")
    parser.add_argument("--scales", default="2,3,4")
    parser.add_argument("--input", default="256x256", help="LR size WxH for the counts")
    parser.add_argument("--time-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-gmacs", type=float, default=100.0, help="skip timing above this")
    parser.add_argument("--no-time", action="store_true", help="counts only")
    parser.add_argument("--layout", action="store_true", help="also time NCHW vs NHWC")
    parser.add_argument("--quick", action="store_true", help="64x64 timing, x4 only, 2 repeats")
    parser.add_argument("--evals", type=Path, nargs="*", default=[], help="eval results.json")
    parser.add_argument("--plot", type=Path, default=None, help="PSNR vs params/FLOPs PNG")
    parser.add_argument(
        "--plot-dataset", default="Set5", help="dataset whose PSNR is plotted ('all': mean)"
    )
    parser.add_argument("--json", type=Path, default=Path("bench_models.json"))
    args = parser.parse_args(argv)
    args.input = parse_size(args.input)
    scales = [int(s) for s in args.scales.split(",")]
    if args.quick:
        args.time_size, args.repeats, args.warmup, scales = 64, 2, 1, [4]
    console = Console(highlight=False, width=200)
    rows = []
    for name in list_models(args.models):
        for scale in scales:
            if scale not in get_model_info(name).scales:
                continue
            with console.status(f"{name} x{scale}"):
                rows.append(bench_one(name, scale, args))
    console.print(results_table(rows, args))
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "slimsr": slimsr.__version__,
        "threads": args.threads,
        "input_hw": list(args.input),
        "time_size": args.time_size,
        "rows": rows,
    }
    if args.evals:
        dataset = None if args.plot_dataset.lower() == "all" else args.plot_dataset
        report["evals"] = read_evals(args.evals, dataset)
    atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.json}")
    if args.plot is not None:
        if not report.get("evals"):
            console.print("--plot: no usable `slimsr eval` results.json among --evals, no plot")
        elif plot(report["evals"], args.plot):
            console.print(f"wrote {args.plot}")
        else:
            console.print("--plot skipped: needs matplotlib (pip install 'slimsr[bench]')")


if __name__ == "__main__":
    main()
