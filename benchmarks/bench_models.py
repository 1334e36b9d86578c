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
and against Mult-Adds, one row per scale (`plot_fig4.py` draws the compression paper's Fig. 4);
that needs matplotlib (the `bench` extra) and is skipped with a message without it. No asserts
on timings.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from collections.abc import Sequence
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


def _eval_entries(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-model reports of one results.json: itself, or its `models` (a `-w A -w B` run)."""
    return [rep] if "models" not in rep else list(rep["models"])


def read_evals(paths: list[Path], datasets: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One point per model of each `slimsr eval` results.json: model, scale, protocol and mean
    PSNR over `datasets` (or over all datasets in the file), plus bicubic's on the same images.

    Unregistered models, bicubic itself and files without every one of `datasets` are skipped.
    The parameter and FLOP counts of a point are those of the registered variant's defaults.
    """
    wanted = None if datasets is None else {d.lower() for d in datasets}
    files: list[Path] = []
    for p in paths:
        files += sorted(p.rglob("results.json")) if p.is_dir() else [p]
    points = []
    for f in files:
        top = json.loads(f.read_text())
        for rep in _eval_entries(top):
            name = str(rep["model"]).split(" ")[0]
            if name == "bicubic" or name not in list_models():
                continue
            sets = [
                d
                for d in rep.get("datasets", [])
                if d["mean"]["psnr"] and (wanted is None or d["dataset"].lower() in wanted)
            ]
            if not sets or (wanted is not None and len(sets) != len(wanted)):
                continue
            bicubic = [d["mean"]["bicubic_psnr"] for d in sets if d["mean"].get("bicubic_psnr")]
            points.append(
                {
                    "model": name,
                    "label": str(rep["model"]),
                    "scale": int(rep.get("scale", top.get("scale"))),
                    "protocol": rep.get("protocol", top.get("protocol", "?")),
                    "psnr": statistics.fmean(d["mean"]["psnr"] for d in sets),
                    "bicubic_psnr": statistics.fmean(bicubic) if bicubic else None,
                    "datasets": [d["dataset"] for d in sets],
                    "psnr_per_dataset": {d["dataset"]: d["mean"]["psnr"] for d in sets},
                    "file": str(f),
                }
            )
    return points


def counts_at_720p(
    name: str, scale: int, kwargs: dict[str, Any] | None = None
) -> tuple[int, dict[str, int]]:
    """Parameters and FLOPs (every convention) for a 1280x720 output of the registered
    variant, with its defaults or `kwargs` (a compact model of the same family), counted on
    the meta device."""
    with torch.device("meta"):
        net = get_model_info(name).build(scale, **(kwargs or {}))
    lr_hw = lr_size_for_output(PAPER_OUTPUT, scale)
    return count_parameters(net), complexity(net, lr_hw).flops


def _label_offsets() -> list[tuple[float, float]]:
    """Candidate label offsets in points: 8 directions (diagonals first) at growing distance."""
    angles = (45, -45, 135, -135, 0, 180, 90, -90)
    return [
        (r * math.cos(math.radians(a)), r * math.sin(math.radians(a)))
        for r in (5, 14, 26)
        for a in angles
    ]


def label_points(ax: Any, xs: list[float], ys: list[float], labels: list[str]) -> None:
    """Name each point at the nearest offset where its text stays inside the axes and overlaps
    no point and no label placed before; labels moved further out get a thin leader line.

    Call it once the axes' limits and the figure's layout are final: overlaps are tested in
    display coordinates. A point with no free offset is labelled at the first one.
    """
    from matplotlib.text import Text

    ax.get_xlim(), ax.get_ylim()  # settle autoscaling before positions are read
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    r = ax.figure.dpi / 72 * 4  # ~4 pt around each marker
    centres = ax.transData.transform(list(zip(xs, ys)))
    taken = [(px - r, py - r, px + r, py + r) for px, py in centres]
    offsets = _label_offsets()

    def fits(b: Any) -> bool:
        inside = frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1
        return inside and not any(
            b.x0 < t[2] and t[0] < b.x1 and b.y0 < t[3] and t[1] < b.y1 for t in taken
        )

    def place(x: float, y: float, text: str, at: tuple[float, float], **kw: Any) -> Any:
        ha = "left" if at[0] > 1 else "right" if at[0] < -1 else "center"
        va = "bottom" if at[1] > 1 else "top" if at[1] < -1 else "center"
        ann = ax.annotate(text, (x, y), fontsize=8, xytext=at, textcoords="offset points",
                          ha=ha, va=va, **kw)  # fmt: skip
        ann.update_positions(renderer)
        return ann, Text.get_window_extent(ann, renderer)  # the text alone, not the leader

    for x, y, text in zip(xs, ys, labels, strict=True):
        choice = offsets[0]
        for at in offsets:
            probe, box = place(x, y, text, at)
            probe.remove()
            if fits(box):
                choice = at
                break
        far = math.hypot(*choice) > math.hypot(*offsets[0]) + 1
        line = {"arrowstyle": "-", "color": "grey", "lw": 0.5} if far else None
        _, b = place(x, y, text, choice, arrowprops=line)
        taken.append((b.x0, b.y0, b.x1, b.y1))


def log_x_axis(ax: Any, plt: Any) -> None:
    """Log x axis with plain-number tick labels at 1-2-3-5 steps, grid and some margin."""
    ax.set_xscale("log")
    ticker = plt.matplotlib.ticker
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_locator(ticker.LogLocator(subs=(2.0, 3.0, 5.0)))
    ax.xaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
    ax.tick_params(axis="x", which="minor", labelsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.margins(x=0.15, y=0.15)


def import_pyplot() -> Any | None:
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
    plt = import_pyplot()
    if plt is None:
        return False
    for p in points:
        p["params"], flops = counts_at_720p(p["model"], p["scale"])
        p["macs_720p"] = flops["macs"]
    scales = sorted({p["scale"] for p in points})
    fig, axes = plt.subplots(
        len(scales), 2, figsize=(11, 3.6 * len(scales)), squeeze=False, sharey="row"
    )
    panels = (("params", 1e3, "parameters [K]"), ("macs_720p", 1e9, "Mult-Adds [G] (macs)"))
    to_label = []
    for row, scale in enumerate(scales):
        pts = sorted((p for p in points if p["scale"] == scale), key=lambda p: p["params"])
        bic = [p["bicubic_psnr"] for p in pts if p["bicubic_psnr"] is not None]
        for col, (key, div, label) in enumerate(panels):
            ax = axes[row][col]
            xs = [p[key] / div for p in pts]
            ys = [p["psnr"] for p in pts]
            ax.scatter(xs, ys, zorder=3)
            to_label.append((ax, xs, ys, [p["model"] for p in pts]))
            if bic:
                ax.axhline(statistics.fmean(bic), color="grey", ls="--", lw=0.8, label="bicubic")
                ax.legend(fontsize=8, loc="lower right")
            log_x_axis(ax, plt)
            ax.set_xlabel(label + (" for a 1280x720 output" if key == "macs_720p" else ""))
            ax.set_ylabel(f"x{scale} PSNR [dB]")
    sets = sorted({d for p in points for d in p["datasets"]})
    protocols = sorted({str(p["protocol"]) for p in points})
    fig.suptitle(f"PSNR on {', '.join(sets)} ({'; '.join(protocols)} protocol) vs complexity")
    fig.tight_layout()
    for labelled in to_label:
        label_points(*labelled)
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
        datasets = None if args.plot_dataset.lower() == "all" else [args.plot_dataset]
        report["evals"] = read_evals(args.evals, datasets)
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
