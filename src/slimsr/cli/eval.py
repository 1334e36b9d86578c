"""`slimsr eval`: PSNR/SSIM tables on benchmark sets, reproducible against the papers."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.table import Table

from slimsr.cli.app import Command, app
from slimsr.cli.checks import (
    check_output_folder,
    check_precision,
    resolve_device,
    resolve_dtype,
)
from slimsr.cli.loading import load_model
from slimsr.data.folders import PairedFolder, dataset_from_root, pair_folders
from slimsr.engines import engine_of
from slimsr.errors import SlimsrError
from slimsr.evaluate import (
    DatasetResult,
    Row,
    Upscaler,
    bicubic_upscaler,
    evaluate_dataset,
    model_upscaler,
    safe_file_name,
    self_ensemble,
)
from slimsr.export.runners import Runner
from slimsr.fileio import atomic_write_text
from slimsr.metrics import PROTOCOLS
from slimsr.model import SRModel
from slimsr.report import REPORT_FILE, CropWriter, ModelRun, write_report

RESULT_FILES = ("results.json", "results.csv")

Loaded = tuple[str, SRModel | Runner | None]
"""(label, model or None for bicubic)."""


def resolve_model(
    model: str | None,
    scale: int | None,
    weights: Path | None,
    param_key: str | None,
    tflite_io: str = "auto",
) -> tuple[str, int, SRModel | Runner | None]:
    """(label, scale, model or None for bicubic) from the CLI's model options."""
    if model is not None and model.lower() == "bicubic":
        if scale is None:
            raise SlimsrError("-m bicubic needs --scale")
        return "bicubic", scale, None
    if weights is None:
        if model is None:
            raise SlimsrError("give --weights (architecture detected) or -m NAME --weights FILE")
        raise SlimsrError(f"-m {model} needs --weights: random weights give meaningless numbers")
    net = load_model(model, scale, weights, param_key=param_key, runtimes=True, tflite_io=tflite_io)
    return f"{net.name} ({weights.name})", net.scale, net


def resolve_models(
    models: list[str],
    weights: list[Path],
    scale: int | None,
    param_key: str | None,
    tflite_io: str = "auto",
) -> tuple[int, list[Loaded]]:
    """The models of `-m`/`-w`: one as `resolve_model` reads it, or several for a comparison.

    Several models: one `-w` each, and `-m` either once per `-w` (same order) or not at all
    (each architecture detected). Bicubic is no model to list: it is a column of every table.
    """
    if len(models) <= 1 and len(weights) <= 1:
        label, scale, net = resolve_model(
            models[0] if models else None,
            scale,
            weights[0] if weights else None,
            param_key,
            tflite_io,
        )
        return scale, [(label, net)]
    if any(m.lower() == "bicubic" for m in models):
        raise SlimsrError(
            "-m bicubic cannot be one of several models: bicubic is already a column of every table"
        )
    if models and len(models) != len(weights):
        raise SlimsrError(
            f"{len(models)} -m and {len(weights)} -w: with several models give one -w per model, "
            "and -m once per -w (same order) or not at all"
        )
    loaded: list[Loaded] = []
    scales: set[int] = set()
    for i, w in enumerate(weights):
        label, s, net = resolve_model(models[i] if models else None, scale, w, param_key, tflite_io)
        if any(label == seen for seen, _ in loaded):
            label = f"{label} #{i + 1}"
        loaded.append((label, net))
        scales.add(s)
    if len(scales) > 1:
        raise SlimsrError(
            f"the models have different scales ({', '.join(f'x{s}' for s in sorted(scales))}): "
            "compare models of one scale"
        )
    return scales.pop(), loaded


def collect_datasets(
    data: list[Path], hr: list[Path], lr: list[Path], scale: int, generate_lr: bool
) -> list[PairedFolder]:
    if lr and len(lr) != len(hr):
        raise SlimsrError("give one --lr per --hr (or none, to generate LR from HR)")
    sets = [dataset_from_root(root, scale, generate_lr) for root in data]
    for i, hr_dir in enumerate(hr):
        sets.append(pair_folders(hr_dir, lr[i] if lr and not generate_lr else None, scale))
    if not sets:
        raise SlimsrError(
            "no dataset: give --data ROOT (with HR/ and LR_bicubic/X<s>/) or --hr DIR"
        )
    return sets


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def results_table(label: str, scale: int, protocol: str, results: list[DatasetResult]) -> Table:
    border, use_y = PROTOCOLS[protocol]
    crop = scale if border == "scale" else border
    title = f"{label} x{scale}: {'Y (BT.601)' if use_y else 'RGB'}, border {crop}, SR as uint8"
    table = Table(title=title)
    for col in ("dataset", "image", "PSNR", "SSIM", "bicubic PSNR", "bicubic SSIM", "note"):
        table.add_column(col, overflow="fold")
    for res in results:
        for row in res.rows:
            table.add_row(
                row.dataset,
                row.image,
                _fmt(row.psnr, 2),
                _fmt(row.ssim, 4),
                _fmt(row.bicubic_psnr, 2),
                _fmt(row.bicubic_ssim, 4),
                row.error or "",
            )
        failed = len(res.rows) - len(res.ok_rows)
        table.add_row(
            f"[{res.dataset}]",
            f"mean of {len(res.ok_rows)}",
            _fmt(res.mean("psnr"), 2),
            _fmt(res.mean("ssim"), 4),
            _fmt(res.mean("bicubic_psnr"), 2),
            _fmt(res.mean("bicubic_ssim"), 4),
            f"{failed} failed" if failed else "",
            end_section=True,
        )
    table.caption = "; ".join(f"{r.dataset} LR: {r.lr_source}" for r in results)
    return table


def results_csv(results: list[DatasetResult], model: str | None = None) -> str:
    """One line per image; with `model` (a comparison's file) a first column names the model."""
    return results_csv_of([(model, results)])


def results_csv_of(runs: list[tuple[str | None, list[DatasetResult]]]) -> str:
    """The CSV of one run (no model column) or of several (a `model` column first)."""
    buf = io.StringIO()
    with_model = any(label is not None for label, _ in runs)
    fields = (["model"] if with_model else []) + list(Row.__dataclass_fields__)
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for label, results in runs:
        for res in results:
            for row in res.rows:
                writer.writerow({"model": label, **row.__dict__} if with_model else row.__dict__)
    return buf.getvalue()


def check_results_folder(out: Path, overwrite: bool, report: bool = False) -> None:
    """Refuse a folder that is a file or already holds results (unless --overwrite)."""
    check_output_folder(out)
    names = (*RESULT_FILES, REPORT_FILE) if report else RESULT_FILES
    earlier = [out / name for name in names if (out / name).exists()]
    if earlier and not overwrite:
        raise SlimsrError(
            f"{earlier[0]} exists from an earlier run; pass -o NEW_FOLDER, or --overwrite to "
            "replace it"
        )


@app.command(
    "eval",
    cls=Command,
    short_help="PSNR/SSIM of one or more models (or bicubic) on benchmark sets.",
)
def eval_command(
    model: list[str] = typer.Option(
        [],
        "-m",
        "--model",
        metavar="NAME",
        help="Registered name, or 'bicubic' (repeatable: one per -w, to compare models).",
    ),
    scale: int = typer.Option(None, "-s", "--scale", help="Upscaling factor."),
    weights: list[Path] = typer.Option(
        [],
        "-w",
        "--weights",
        metavar="FILE",
        help="Weights file (any format); repeat to compare several models in one run.",
    ),
    data: list[Path] = typer.Option(
        [], "--data", metavar="DIR", help="Dataset root with HR/ and LR_bicubic/X<s>/ (repeatable)."
    ),
    hr: list[Path] = typer.Option([], "--hr", metavar="DIR", help="HR folder (repeatable)."),
    lr: list[Path] = typer.Option(
        [], "--lr", metavar="DIR", help="LR folder for the matching --hr."
    ),
    generate_lr: bool = typer.Option(
        False, "--generate-lr", help="Make LR from HR with MATLAB-exact bicubic, ignore LR files."
    ),
    protocol: str = typer.Option(
        "basicsr",
        "--protocol",
        metavar="PROTOCOL",
        help="basicsr (Y, border=scale) | ntire (RGB, border 4) | rgb.",
    ),
    ensemble: bool = typer.Option(False, "--self-ensemble", help="x8 flips/rotations average."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto | cpu | cuda."),
    fp16: bool = typer.Option(False, "--fp16", help="Half precision (models that support it)."),
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16 (models that support it)."),
    fuse: bool = typer.Option(
        True, "--fuse/--no-fuse", help="Run the fused inference form where one exists (CPU)."
    ),
    save_images: bool = typer.Option(
        False, "--save-images", help="Write SR images and bicubic|SR|HR crops."
    ),
    report: bool = typer.Option(
        False,
        "--report",
        help="Write report.html in -o: tables and bicubic|model(s)|HR crops of every image.",
    ),
    out: Path = typer.Option(
        None,
        "-o",
        "--out",
        metavar="DIR",
        help="Output folder for results.json/.csv (and images) (default: eval_results/MODEL_x<s>).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the results of an earlier run in the output folder."
    ),
    param_key: str = typer.Option(
        None, "--param-key", metavar="KEY", help="e.g. params or params_ema."
    ),
    tflite_io: str = typer.Option(
        "auto", "--tflite-io", metavar="IO", help="auto | uint8 (require an INT8 .tflite) | float."
    ),
) -> None:
    """Evaluate a model (or bicubic) on benchmark sets: PSNR/SSIM per image and mean.

    Several models (-w A -w B) are scored on the same images in one run; --report writes a
    page to compare them. An output folder holding an earlier run's results is refused unless
    --overwrite.
    """
    if protocol not in PROTOCOLS:
        raise SlimsrError(f"--protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    several = len(model) > 1 or len(weights) > 1
    if out is None and (report or several):
        what = "--report" if report else "several models"
        raise SlimsrError(f"{what} needs -o DIR, the folder for results.json and report.html")
    if out is not None:
        check_results_folder(out, overwrite, report)
    scale, loaded = resolve_models(model, weights, scale, param_key, tflite_io)
    if out is None:
        out = Path("eval_results") / f"{loaded[0][0].split(' ')[0]}_x{scale}"
        check_results_folder(out, overwrite)
    datasets = collect_datasets(data, hr, lr, scale, generate_lr)
    dev, dtype = resolve_device(device), resolve_dtype(fp16, bf16)
    for _label, net in loaded:  # every refusal before the first image is run
        if net is not None:
            check_precision(net, dtype, dev)
    crops = CropWriter(out) if report else None
    console = Console(markup=False, highlight=False, stderr=True)
    runs: list[ModelRun] = []
    engines = {label: engine_of(net) if net is not None else None for label, net in loaded}
    for index, (label, net) in enumerate(loaded):
        upscale, run_dtype = _upscaler(net, scale, dev, dtype, fuse)
        if ensemble:
            upscale = self_ensemble(upscale)
        images = out / "images" if not several else out / "images" / safe_file_name(label)
        results = []
        for ds_index, ds in enumerate(datasets):
            with console.status(f"{label}: {ds.name}: {len(ds.pairs)} images"):
                results.append(
                    evaluate_dataset(
                        upscale,
                        ds,
                        scale,
                        protocol=protocol,
                        device=dev,
                        dtype=run_dtype,
                        save_dir=images if save_images else None,
                        on_output=crops.callback(ds_index, ds.name, index) if crops else None,
                    )
                )
        Console(markup=False, highlight=False).print(results_table(label, scale, protocol, results))
        runs.append(ModelRun(label, results))
        dtype_name = str(run_dtype).replace("torch.", "")

    def run_dict(run: ModelRun) -> dict:
        return {
            "model": run.label,
            "scale": scale,
            "protocol": protocol,
            "self_ensemble": ensemble,
            "dtype": dtype_name,
            "engine": engines[run.label],
            "datasets": [r.to_dict() for r in run.results],
        }

    if several:
        summary = {
            "scale": scale,
            "protocol": protocol,
            "self_ensemble": ensemble,
            "models": [run_dict(run) for run in runs],
        }
        csv_text = results_csv_of([(run.label, run.results) for run in runs])
    else:
        summary, csv_text = run_dict(runs[0]), results_csv(runs[0].results)
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "results.csv", csv_text)
    written = f"{out / 'results.json'} and {out / 'results.csv'}"
    if crops is not None:
        border, use_y = PROTOCOLS[protocol]
        crop = scale if border == "scale" else border
        settings = (
            f"x{scale}, protocol {protocol}: {'Y (BT.601)' if use_y else 'RGB'} PSNR/SSIM, "
            f"border {crop}, SR as uint8; {dtype_name}" + (", x8 self-ensemble" if ensemble else "")
        )
        title = " vs ".join(run.label for run in runs) + f" x{scale}"
        page = write_report(out, runs, crops, title, settings)
        written = f"{out / 'results.json'}, {out / 'results.csv'} and {page}"
    typer.echo(f"wrote {written}")
    failed = sum(len(r.rows) - len(r.ok_rows) for run in runs for r in run.results)
    if failed:
        raise SlimsrError(f"{failed} image(s) could not be evaluated (see the note column)")


def _upscaler(
    net: SRModel | Runner | None, scale: int, dev: torch.device, dtype: torch.dtype, fuse: bool
) -> tuple[Upscaler, torch.dtype]:
    """The upscaler a loaded model runs as, and the dtype it runs in (bicubic: float32)."""
    if net is None:
        return bicubic_upscaler(scale), torch.float32
    if isinstance(net, SRModel):  # the fast inference path: fused form, measured layout
        return model_upscaler(net, dev, dtype, fuse=None if fuse else False), dtype
    return net.to(device=dev, dtype=dtype).eval(), dtype
