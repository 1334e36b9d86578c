"""One short comparative training run per paper ablation table (issue 20): every row of a table
gets the same recipe, budget, seed and data, and differs only in its constructor switch.

The papers train each row to convergence on DIV2K (a GPU for days); here each row trains from
scratch for a fixed, small budget on T91 + BSD200 at one CPU thread, and is validated on Set5
(Y, BasicSR protocol) at the end. The numbers rank the rows by how fast they learn under the
same budget: they are not the papers' converged PSNRs, and differences of a few hundredths of
a dB are within the run-to-run spread (`--seeds 0,1` measures it).

    OMP_NUM_THREADS=1 python benchmarks/ablation_runs.py                 # every table
    OMP_NUM_THREADS=1 python benchmarks/ablation_runs.py --tables abpn_residual --iterations 200
    python benchmarks/ablation_runs.py --list                             # tables and rows
    python benchmarks/ablation_runs.py --latency --threads 1              # + each row's latency

`--int8` (ABPN's table) also quantises every row's final weights to a full-integer TFLite file
(post-training, 64 LR-like T91 crops, uint8 IO, as `scripts/ship_abpn.py`) and scores it on
Set5 like the float: the paper's INT8 column. Rows whose graph does not quantise (the bilinear
residual) are marked as such.

`--latency` also times every row's inference form (as `slimsr upscale` / `slimsr profile` run
it: the deploy form of FMEN's train-form rows, fused where the family has a fused form) on one
LR input (`--latency-size`, default 256x256, ABPN 640x360 as its paper's 1080p output), rows of
a table interleaved round-robin so that load changes hit all alike: the papers' latency
columns, on this CPU. Measure on an idle machine.

Writes `<out>.json` (every row: recipe overrides, params, PSNR/SSIM, seconds) and `<out>.md`
(one table per paper table); default `benchmarks/results/ablations_short`. Runs go to
`--runs-dir` (default runs/ablations/), one folder per network, budget and seed; a finished row is
read back rather than trained again, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Row:
    label: str
    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    """One ablation table: its paper reference, the recipe its rows start from, the rows."""

    key: str
    paper: str
    recipe: str  # configs/*.yaml: model scale, data, optimiser and loss of the published recipe
    rows: tuple[Row, ...]
    iterations: int  # default budget for every row of this table


TABLES: tuple[Table, ...] = (
    Table(
        "bsrn_conv",
        "BSRN (Li et al. 2022) Table 1: separable convolution",
        "configs/bsrn_x4.yaml",
        (
            Row("BSConvU (BSRN)", "bsrn"),
            Row("BSConvS", "bsrn", {"conv": "bsconvs"}),
            Row("DSConv", "bsrn", {"conv": "dsconv"}),
        ),
        800,
    ),
    Table(
        "bsrn_attention",
        "BSRN Table 2: ESA and CCA",
        "configs/bsrn_x4.yaml",
        (
            Row("BSRN", "bsrn"),
            Row("BSRN-woESA", "bsrn", {"esa": False}),
            Row("BSRN-woCCA", "bsrn", {"cca": False}),
            Row("BSRN-woESA-woCCA", "bsrn", {"esa": False, "cca": False}),
        ),
        800,
    ),
    Table(
        "bsrn_activation",
        "BSRN Table 3: activation",
        "configs/bsrn_x4.yaml",
        (
            Row("GELU (BSRN)", "bsrn"),
            Row("ReLU", "bsrn", {"act": "relu"}),
            Row("LeakyReLU", "bsrn", {"act": "lrelu"}),
            Row("h-swish", "bsrn", {"act": "hswish"}),
        ),
        800,
    ),
    Table(
        "bsrn_size",
        "BSRN Table 4: model size",
        "configs/bsrn_x4.yaml",
        (
            Row("BSRN-1 (48 ch)", "bsrn", {"num_feat": 48}),
            Row("BSRN (64 ch)", "bsrn"),
            Row("BSRN-2 (72 ch)", "bsrn", {"num_feat": 72}),
        ),
        800,
    ),
    Table(
        "fmen_block",
        "FMEN (Du et al. 2022) Table 1 / Fig. 5: backbone block (FMEN-S, train form)",
        "configs/fmen_s_x4.yaml",
        (
            Row("ERB (FMEN-S)", "fmen_s_train"),
            Row("RB", "fmen_s_train", {"block": "rb"}),
            Row("PB", "fmen_s_train", {"block": "pb"}),
        ),
        500,
    ),
    Table(
        "fmen_attention",
        "FMEN Table 2: attention (FMEN-S, train form)",
        "configs/fmen_s_x4.yaml",
        (
            Row("HFAB (FMEN-S)", "fmen_s_train"),
            Row("CCA", "fmen_s_train", {"attn": "cca"}),
            Row("ESA", "fmen_s_train", {"attn": "esa"}),
            Row("none", "fmen_s_train", {"attn": "none"}),
        ),
        500,
    ),
    Table(
        "abpn_residual",
        "ABPN (Du et al. 2021) Table 2: residual learning",
        "configs/abpn_x3_cpu.yaml",
        (
            Row("anchor (ABPN)", "abpn"),
            Row("none", "abpn", {"residual": "none"}),
            Row("nearest", "abpn", {"residual": "nearest"}),
            Row("bilinear", "abpn", {"residual": "bilinear"}),
            Row("feature (FSRL)", "abpn", {"residual": "feature"}),
        ),
        15000,
    ),
)

BATCH = 8
PATCH = 16  # LR patch side: small, so a short budget still sees many patches


def row_recipe(table: Table, row: Row, iterations: int, seed: int) -> dict[str, Any]:
    """The table's recipe with the row's switch and the short, shared budget."""
    recipe = yaml.safe_load((ROOT / table.recipe).read_text(encoding="utf-8"))
    recipe["name"] = run_name(row, iterations, seed)
    recipe["seed"] = seed
    recipe["auto_resume"] = True  # an interrupted sweep continues its rows
    recipe["model"] = {"name": row.model, "scale": recipe["model"]["scale"], "kwargs": row.kwargs}
    train_data = recipe["data"]["train"]
    train_data.update(patch_size=PATCH, batch_size=BATCH, num_workers=0)
    train = recipe["train"]
    train["iterations"] = iterations
    train["scheduler"] = {"type": "cosine", "eta_min": train["lr"] * 0.01}
    train.pop("ema", None)
    train["precision"] = "fp32"
    recipe["logging"] = {
        "print_every": max(1, iterations // 4),
        "val_every": iterations,
        "checkpoint_every": iterations,
    }
    return recipe


def run_name(row: Row, iterations: int, seed: int) -> str:
    """Named by what is trained, not by the table: a row that two tables share (the published
    network) is trained once and read back by the second."""
    switches = "_".join(f"{k}-{v}" for k, v in sorted(row.kwargs.items())) or "default"
    return f"{row.model}_{switches}_it{iterations}_s{seed}".lower()


def run_row(table: Table, row: Row, iterations: int, seed: int, runs_dir: Path) -> dict[str, Any]:
    """Train one row (or read back its finished run) and return its record."""
    from slimsr.factory import create_model
    from slimsr.registry import count_parameters
    from slimsr.train import load_config, train

    recipe = row_recipe(table, row, iterations, seed)
    recipe["output_dir"] = str(runs_dir)
    config = load_config(recipe, base_dir=ROOT)
    start = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - start
    metrics = result.metrics or {}
    if not metrics:
        final = json.loads((result.run_dir / "weights" / "final.json").read_text())
        metrics = final.get("training", {}).get("validation", {})
    return {
        "table": table.key,
        "row": row.label,
        "model": row.model,
        "kwargs": row.kwargs,
        "params": count_parameters(create_model(row.model, config.model.scale, **row.kwargs)),
        "protocol": config.data.val.protocol if config.data.val else None,
        "seed": seed,
        "iterations": iterations,
        "psnr": metrics.get("psnr"),
        "ssim": metrics.get("ssim"),
        "seconds": None if result.finished_before else round(seconds, 1),  # None: read back
        "run_dir": str(result.run_dir),
    }


def int8_psnr(rec: dict[str, Any], shared: Path) -> float | str:
    """Set5 PSNR of the row's final weights quantised to INT8 TFLite (PTQ), same protocol as
    its validation; a one-line reason where the graph has no INT8 form."""
    import tempfile

    import slimsr
    from slimsr.data.folders import dataset_from_root
    from slimsr.errors import SlimsrError
    from slimsr.evaluate import evaluate_dataset
    from slimsr.export.calibration import calibration_crops
    from slimsr.export.runners import load_runner
    from slimsr.export.tflite import export_tflite

    model = slimsr.load(Path(rec["run_dir"]) / "weights" / "final.safetensors")
    crops = calibration_crops(shared / "datasets" / "T91" / "HR", 64, 48, downscale=model.scale)
    with tempfile.TemporaryDirectory(prefix="slimsr-ablation-int8-") as tmp:
        path = Path(tmp) / "row.tflite"
        try:
            export_tflite(model, path, int8=True, calibration=crops, verify=False)
        except SlimsrError as exc:
            return f"no INT8 form: {str(exc).splitlines()[0][:80]}"
        runner = load_runner(path, model.scale, tflite_io="uint8")
        data = dataset_from_root(shared / "datasets" / "Set5", model.scale)
        res = evaluate_dataset(runner, data, model.scale, protocol=rec["protocol"])
    return round(res.mean("psnr"), 4)


def deploy_name(model: str) -> str:
    """The inference form a train-form row deploys as (FMEN's RRRBs fold into plain convs)."""
    return model.removesuffix("_train")


def latencies(table: Table, size: tuple[int, int], threads: int, repeats: int) -> dict[str, float]:
    """Median ms of each row's inference form, timed round-robin on the same random input."""
    import statistics

    import torch

    from slimsr.factory import create_model
    from slimsr.inference_form import inference_config, prepare_for_inference

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    calls = {}
    for row in table.rows:
        model = create_model(deploy_name(row.model), _scale(table), **row.kwargs).eval()
        fast = prepare_for_inference(model, "cpu", torch.float32, None, False)
        x = torch.rand(1, 3, *size).contiguous(memory_format=inference_config(fast).memory_format)
        calls[row.label] = (fast, x)
    from bench_int8 import measure  # round-robin timing, shared by the benchmarks

    def runner(fast: Any, x: Any) -> Any:
        return lambda: fast(x)

    with torch.inference_mode():
        times = measure({k: runner(*v) for k, v in calls.items()}, warmup=2, repeats=repeats)
    return {k: round(statistics.median(v), 2) for k, v in times.items()}


def _scale(table: Table) -> int:
    return int(yaml.safe_load((ROOT / table.recipe).read_text(encoding="utf-8"))["model"]["scale"])


def markdown(records: list[dict[str, Any]], budget: dict[str, Any]) -> str:
    lines = [
        "# Paper ablations: one short run per table",
        "",
        f"Every row: from scratch, batch {budget['batch']} of {budget['patch']} px LR patches, "
        "Adam at the recipe's learning rate with a cosine decay to 1% of it, T91 + BSD200, "
        f"{budget['train_threads']} CPU thread(s); Set5 after the last iteration (Y, BasicSR protocol; ABPN: RGB, "
        "the MAI protocol its paper uses). "
        "Not the papers' converged numbers (see docs/ablations.md). "
        'Train seconds: wall time on a shared machine ("-": read back from a finished run).',
        "",
    ]
    by_table: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_table.setdefault(rec["table"], []).append(rec)
    for table in TABLES:
        recs = by_table.get(table.key)
        if not recs:
            continue
        its = sorted({r["iterations"] for r in recs})
        lines += [f"## {table.paper}", "", f"{', '.join(map(str, its))} iterations per row.", ""]
        int8 = "int8_psnr" in recs[0]
        lat = recs[0].get("latency_input")
        head = f" latency ms ({lat} LR, {budget.get('latency_threads')} thread) |" if lat else ""
        lines += [
            f"| row | params | Set5 PSNR (dB) | SSIM |{' INT8 PTQ PSNR |' if int8 else ''}"
            f" seed | train seconds |{head}",
            "|---|---|---|---|---|---|" + ("---|" if lat else "") + ("---|" if int8 else ""),
        ]
        for r in recs:
            psnr = "-" if r["psnr"] is None else f"{r['psnr']:.3f}"
            ssim = "-" if r["ssim"] is None else f"{r['ssim']:.4f}"
            secs = "-" if r["seconds"] is None else f"{r['seconds']:.0f}"
            ms = f" {r['latency_ms']:.1f} |" if lat else ""
            q = r.get("int8_psnr")
            q_cell = (f" {q:.3f} |" if isinstance(q, float) else " n/a |") if int8 else ""
            lines.append(
                f"| {r['row']} | {r['params']:,} | {psnr} | {ssim} |{q_cell} {r['seed']} | {secs} |{ms}"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", default="all", help="comma-separated table keys, or all")
    parser.add_argument("--iterations", type=int, default=None, help="override every table's")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "ablations")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "ablations_short"
    )
    parser.add_argument("--list", action="store_true", help="print tables and rows, run nothing")
    parser.add_argument("--latency", action="store_true", help="also time each row's inference")
    parser.add_argument("--int8", action="store_true", help="ABPN rows: also INT8 TFLite PSNR")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument(
        "--latency-size", default=None, help="LR HxW (default 256x256; ABPN 360x640)"
    )
    parser.add_argument("--threads", type=int, default=1, help="threads for --latency")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds for --latency")
    args = parser.parse_args(argv)

    keys = [t.key for t in TABLES] if args.tables == "all" else args.tables.split(",")
    unknown = sorted(set(keys) - {t.key for t in TABLES})
    if unknown:
        parser.error(
            f"unknown table(s) {', '.join(unknown)}; known: {', '.join(t.key for t in TABLES)}"
        )
    tables = [t for t in TABLES if t.key in keys]
    if args.list:
        for t in tables:
            print(f"{t.key}: {t.paper} ({t.recipe}, {t.iterations} iterations)")
            for r in t.rows:
                print(f"  {r.label}: {r.model} {r.kwargs}")
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    import torch

    train_threads = torch.get_num_threads()
    records = []
    for table in tables:
        iterations = args.iterations or table.iterations
        for seed in seeds:
            for row in table.rows:
                rec = run_row(table, row, iterations, seed, args.runs_dir)
                records.append(rec)
                print(
                    f"{table.key} | {row.label} | seed {seed} | {rec['psnr']} dB | {rec['seconds']} s",
                    flush=True,
                )
        if args.int8 and table.key.startswith("abpn"):
            for rec in records:
                if rec["table"] == table.key:
                    rec["int8_psnr"] = int8_psnr(rec, args.shared)
                    print(f"{table.key} | {rec['row']} | INT8 {rec['int8_psnr']}", flush=True)
        if args.latency:
            size = args.latency_size or ("360x640" if table.key.startswith("abpn") else "256x256")
            hw = tuple(int(v) for v in size.lower().split("x"))
            ms = latencies(table, hw, args.threads, args.repeats)
            for rec in records:
                if rec["table"] == table.key:
                    rec["latency_ms"], rec["latency_input"] = ms[rec["row"]], size
            print(f"{table.key} latency (ms, {size}): {ms}", flush=True)
    budget = {"batch": BATCH, "patch": PATCH, "train_threads": train_threads, "seeds": seeds}
    if args.latency:
        budget["latency_threads"] = args.threads
        budget["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"budget": budget, "torch": torch.__version__, "records": records}
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(records, budget), encoding="utf-8")
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
