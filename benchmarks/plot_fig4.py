"""Fig. 4 of the compression paper (Jiang et al. 2024): mean x2 PSNR of Set5 and Set14 against
parameters and against FLOPs for a 1280x720 output, the paper's Table I rows (published numbers,
hollow markers) beside models measured by slimsr (filled). Prints one table, writes PNG + JSON.

    python benchmarks/plot_fig4.py -o fig4.png                  # shipped metrics.json only
    python benchmarks/plot_fig4.py --evals eval_results/x2 -o docs/fig4_psnr_vs_complexity.png

Measured points come from the x2 `metrics.json` files shipped in the package (the compressed
EDSRmini and SwinIRmini, the bundled x2; `--no-shipped` leaves them out), from `--metrics`
files of the same format, and from `slimsr eval` results.json files or folders (`--evals`) that
hold both Set5 and Set14. Their parameters and FLOPs are counted by `slimsr.profile` on the
meta device for the registered variant, FLOPs in the `--flops` convention (default `macs`,
1 MAC = 1 FLOP: what reproduces Table I's EDSR-baseline 316.3 G and EDSRmini 11.7 G, see
docs/efficiency.md). Published FLOPs are plotted as printed; RT4KSR-XL has none. Needs
matplotlib (`pip install 'slimsr[bench]'`); without it the table and JSON are still written.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from bench_models import (
    PAPER_OUTPUT,
    counts_at_720p,
    import_pyplot,
    label_points,
    log_x_axis,
    read_evals,
)
from rich.console import Console
from rich.table import Table

from slimsr.fileio import atomic_path, atomic_write_text
from slimsr.profile import CONVENTION_NOTES, CONVENTIONS
from slimsr.registry import list_models
from slimsr.weights import BUNDLED_DIR

SCALE = 2
DATASETS = ("Set5", "Set14")
PUBLISHED = "published (Jiang et al. 2024, Table I)"
MEASURED = "measured by slimsr"

# Jiang, Nawala, Zhang, Bull, "Compressing Deep Image Super-resolution Models", PCS 2024
# (arXiv 2401.00523), Table I, as printed: x2, #Ps [M], FLOPs [G] for a 1280x720 output (None:
# "n/a"), Set5 and Set14 (PSNR, SSIM) on Y. The paper took every row but its own two from the
# original publications; these are published numbers, never slimsr measurements.
TABLE_I: tuple[tuple[str, float, float | None, tuple[float, float], tuple[float, float]], ...] = (
    ("SRCNN", 0.057, 13.2, (36.66, 0.9542), (32.45, 0.9067)),
    ("LapSRN", 0.251, 29.9, (37.52, 0.9590), (32.99, 0.9124)),
    ("CARN", 1.59, 222.8, (37.76, 0.9590), (33.52, 0.9166)),
    ("LatticeNet", 0.756, 169.5, (38.15, 0.9610), (33.78, 0.9193)),
    ("IMDN", 0.694, 158.8, (38.00, 0.9605), (33.63, 0.9177)),
    ("RLFN-S", 0.454, 68.1, (38.05, 0.9607), (33.68, 0.9172)),
    ("FALSR-B", 0.326, 74.7, (37.61, 0.9585), (33.29, 0.9143)),
    ("RT4KSR-XL", 0.092, None, (36.83, 0.9545), (33.46, 0.9197)),
    ("EDSR", 43, 9387.0, (38.11, 0.9601), (33.92, 0.9195)),
    ("EDSR baseline", 1.37, 316.3, (37.99, 0.9604), (33.57, 0.9175)),
    ("EDSRmini (ours)", 0.049, 11.7, (37.67, 0.9597), (33.21, 0.9141)),
    ("SwinIR", 11.8, 2301.0, (38.35, 0.9620), (34.14, 0.9227)),
    ("SwinIR LW", 0.878, 195.6, (38.14, 0.9611), (33.86, 0.9206)),
    ("SwinIRmini (ours)", 0.099, 22.0, (37.88, 0.9601), (33.60, 0.9187)),
)


def published_points() -> list[dict[str, Any]]:
    """Table I as plot points: params and FLOPs converted to units, PSNR the Set5/Set14 mean."""
    return [
        {
            "kind": "published",
            "source": PUBLISHED,
            "model": name,
            "label": name,
            "params_m_as_printed": params_m,
            "params": round(params_m * 1e6),
            "flops": None if flops_g is None else flops_g * 1e9,
            "psnr_per_dataset": {"Set5": set5[0], "Set14": set14[0]},
            "ssim_per_dataset": {"Set5": set5[1], "Set14": set14[1]},
            "psnr": (set5[0] + set14[0]) / 2,
        }
        for name, params_m, flops_g, set5, set14 in TABLE_I
    ]


def shipped_metrics() -> list[Path]:
    """The x2 metrics.json files shipped in the package: compressed models and the bundled x2."""
    compressed = sorted((BUNDLED_DIR / "compressed").glob(f"*_x{SCALE}.metrics.json"))
    return [*compressed, BUNDLED_DIR / f"default_x{SCALE}.metrics.json"]


def read_metrics(path: Path) -> dict[str, Any]:
    """A measured point from a shipped-style metrics.json (`model`, `scale`, `results`)."""
    rep = json.loads(path.read_text())
    model, results = rep.get("model"), rep.get("results", {})
    if model not in list_models() or int(rep.get("scale", 0)) != SCALE:
        raise ValueError(f"{path}: not a registered x{SCALE} model ({model}, x{rep.get('scale')})")
    missing = [d for d in DATASETS if d not in results]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)} results")
    stem = path.name.removesuffix(".metrics.json")
    kwargs = rep.get("kwargs") or {}  # written by the ship scripts beside the model's name
    if not isinstance(kwargs, dict):
        raise ValueError(f"{path}: kwargs is not a mapping")
    return {
        # a compact model of the original's family (BSRNmini: bsrn with num_feat 60) is named
        # by its file, its counts come from its kwargs
        "model": stem.removesuffix(f"_x{SCALE}") if kwargs else model,
        "arch": model,
        "kwargs": kwargs,
        "label": f"{path.parent.name}/{stem}",
        "params_in_file": rep.get("params"),
        "protocol": rep.get("protocol", "?"),
        "psnr_per_dataset": {d: results[d]["psnr"] for d in DATASETS},
        "bicubic_psnr": statistics.fmean(results[d]["bicubic_psnr"] for d in DATASETS),
        "file": _shown(path),
    }


def _shown(path: Path) -> str:
    """`path` relative to the working directory where it lies below it (no machine paths in
    the JSON written next to the figure)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def measured_points(
    metrics: list[Path], evals: list[Path], convention: str
) -> list[dict[str, Any]]:
    """Measured points with slimsr's counts; files that measured the same model to the same
    numbers (the bundled x2 is the shipped compressed EDSRmini) become one point."""
    raw = [read_metrics(p) for p in metrics]
    raw += [e for e in read_evals(evals, DATASETS) if e["scale"] == SCALE]
    merged: dict[tuple, dict[str, Any]] = {}
    for p in raw:
        key = (p["model"], *(round(p["psnr_per_dataset"][d], 4) for d in DATASETS))
        if key in merged:
            merged[key]["label"] += f", {p['label']}"
            merged[key]["files"].append(p["file"])
            continue
        arch, kwargs = p.get("arch", p["model"]), p.get("kwargs") or {}
        params, flops = counts_at_720p(arch, SCALE, kwargs)
        if p.get("params_in_file") not in (None, params):
            shown = f"{arch} with {kwargs}" if kwargs else f"registered {arch}"
            why = "" if kwargs else " (not its default variant)"
            raise ValueError(
                f"{p['file']}: {p['params_in_file']:,} params, but the {shown} "
                f"x{SCALE} has {params:,}{why}"
            )
        merged[key] = {
            "kind": "measured",
            "source": MEASURED,
            "model": p["model"],
            "arch": arch,
            "kwargs": kwargs,
            "label": p["label"],
            "params": params,
            "flops": flops[convention],
            "psnr_per_dataset": {d: p["psnr_per_dataset"][d] for d in DATASETS},
            "psnr": statistics.fmean(p["psnr_per_dataset"][d] for d in DATASETS),
            "bicubic_psnr": p.get("bicubic_psnr"),
            "protocol": p["protocol"],
            "files": [p["file"]],
        }
    return list(merged.values())


def _short(p: dict[str, Any]) -> str:
    """Point label on the plot: the paper's name, or slimsr's model name."""
    return p["model"].replace(" (ours)", "*") if p["kind"] == "published" else p["model"]


def _group(p: dict[str, Any]) -> str:
    """Marker group: measured, published, or published by the paper for its own models (*)."""
    return p["kind"] + ("*" if p["model"].endswith("(ours)") else "")


def plot(points: list[dict[str, Any]], convention: str, out: Path) -> bool:
    """Two panels, log x: PSNR vs parameters [M], PSNR vs FLOPs [G]. False without matplotlib."""
    plt = import_pyplot()
    if plt is None:
        return False
    styles = {
        "published": {"marker": "o", "facecolors": "none", "edgecolors": "tab:blue"},
        "published*": {"marker": "D", "facecolors": "none", "edgecolors": "tab:green"},
        "measured": {"marker": "s", "color": "tab:red"},
    }
    names = {
        "published": PUBLISHED,
        "published*": "published, the paper's compact models (*)",
        "measured": f"{MEASURED} (Y, border 2)",
    }
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6), sharey=True)
    flops_label = f"FLOPs [G] for a 1280x720 output (measured: slimsr `{convention}`)"
    panels = (("params", 1e6, "parameters [M]"), ("flops", 1e9, flops_label))
    for ax, (key, div, xlabel) in zip(axes, panels):
        for group, style in styles.items():
            pts = [p for p in points if p[key] is not None and _group(p) == group]
            if pts:
                xs, ys = [p[key] / div for p in pts], [p["psnr"] for p in pts]
                ax.scatter(xs, ys, s=36, zorder=3, label=names[group], **style)
        log_x_axis(ax, plt)
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel("PSNR [dB], mean of Set5 and Set14 (x2, Y)")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(
        "x2 PSNR vs complexity (after Fig. 4 of Jiang et al. 2024): hollow = published "
        "(Table I, FLOPs as printed; RT4KSR-XL has none), filled = measured by slimsr",
        fontsize=10,
    )
    fig.tight_layout()
    for ax, (key, div, _) in zip(axes, panels):
        pts = sorted((p for p in points if p[key] is not None), key=lambda p: -p["psnr"])
        xs, ys = [p[key] / div for p in pts], [p["psnr"] for p in pts]
        label_points(ax, xs, ys, [_short(p) for p in pts])
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return True


def results_table(points: list[dict[str, Any]], convention: str) -> Table:
    t = Table(title=f"x2 PSNR (Y) vs params and FLOPs [G, {convention} for measured] at 1280x720")
    for col in ("model", "source", "params", "FLOPs [G]", *DATASETS, "mean"):
        t.add_column(col, justify="left" if col in ("model", "source") else "right")
    for p in sorted(points, key=lambda p: p["params"]):
        flops = "n/a" if p["flops"] is None else f"{p['flops'] / 1e9:.1f}"
        sets = [f"{p['psnr_per_dataset'][d]:.2f}" for d in DATASETS]
        params = p.get("params_m_as_printed")
        params = f"{params:g} M" if params is not None else f"{p['params']:,}"
        t.add_row(p["label"], p["kind"], params, flops, *sets, f"{p['psnr']:.2f}")
    return t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evals", type=Path, nargs="*", default=[], help="eval results.json")
    parser.add_argument("--metrics", type=Path, nargs="*", default=[], help="metrics.json files")
    parser.add_argument("--no-shipped", action="store_true", help="leave out shipped metrics")
    parser.add_argument("--flops", choices=CONVENTIONS, default="macs", help="for measured")
    parser.add_argument("-o", "--out", type=Path, default=Path("fig4_psnr_vs_complexity.png"))
    parser.add_argument("--json", type=Path, default=None, help="default: --out as .json")
    args = parser.parse_args(argv)
    for p in [*args.evals, *args.metrics]:
        if not p.exists():
            parser.error(f"{p} does not exist")
    metrics = ([] if args.no_shipped else shipped_metrics()) + list(args.metrics)
    try:
        measured = measured_points(metrics, args.evals, args.flops)
    except (ValueError, KeyError) as e:
        parser.error(str(e))
    if not measured:
        parser.error("no measured x2 point with Set5 and Set14 among the inputs")
    points = published_points() + measured
    console = Console(highlight=False, width=160)
    console.print(results_table(points, args.flops))
    out_json = args.json or args.out.with_suffix(".json")
    report = {
        "figure": str(args.out),
        "scale": SCALE,
        "datasets": list(DATASETS),
        "output_hw": list(PAPER_OUTPUT),
        "flops_convention": args.flops,
        "flops_note": f"measured: {CONVENTION_NOTES[args.flops]}; published: as printed",
        "points": points,
    }
    atomic_write_text(out_json, json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {out_json}")
    if plot(points, args.flops, args.out):
        console.print(f"wrote {args.out}")
    else:
        console.print("plot skipped: needs matplotlib (pip install 'slimsr[bench]')")


if __name__ == "__main__":
    main()
