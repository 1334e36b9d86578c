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
from slimsr.errors import SlimsrError
from slimsr.evaluate import (
    DatasetResult,
    Row,
    Upscaler,
    bicubic_upscaler,
    evaluate_dataset,
    model_upscaler,
    self_ensemble,
)
from slimsr.export.runners import Runner
from slimsr.fileio import atomic_write_text
from slimsr.metrics import PROTOCOLS
from slimsr.model import SRModel

RESULT_FILES = ("results.json", "results.csv")


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


def results_csv(results: list[DatasetResult]) -> str:
    buf = io.StringIO()
    fields = list(Row.__dataclass_fields__)
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for res in results:
        for row in res.rows:
            writer.writerow(row.__dict__)
    return buf.getvalue()


def check_results_folder(out: Path, overwrite: bool) -> None:
    """Refuse a folder that is a file or already holds results (unless --overwrite)."""
    check_output_folder(out)
    earlier = [out / name for name in RESULT_FILES if (out / name).exists()]
    if earlier and not overwrite:
        raise SlimsrError(
            f"{earlier[0]} exists from an earlier run; pass -o NEW_FOLDER, or --overwrite to "
            "replace it"
        )


@app.command(
    "eval",
    cls=Command,
    short_help="PSNR/SSIM of a model (or bicubic) on benchmark sets.",
)
def eval_command(
    model: str = typer.Option(
        None, "-m", "--model", metavar="NAME", help="Registered name, or 'bicubic'."
    ),
    scale: int = typer.Option(None, "-s", "--scale", help="Upscaling factor."),
    weights: Path = typer.Option(
        None, "-w", "--weights", metavar="FILE", help="Weights file (any format)."
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

    An output folder holding an earlier run's results is refused unless --overwrite.
    """
    if protocol not in PROTOCOLS:
        raise SlimsrError(f"--protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    if out is not None:
        check_results_folder(out, overwrite)
    label, scale, net = resolve_model(model, scale, weights, param_key, tflite_io)
    if out is None:
        out = Path("eval_results") / f"{label.split(' ')[0]}_x{scale}"
        check_results_folder(out, overwrite)
    datasets = collect_datasets(data, hr, lr, scale, generate_lr)
    dev, dtype = resolve_device(device), resolve_dtype(fp16, bf16)
    upscale: Upscaler
    if net is None:
        upscale, dtype = bicubic_upscaler(scale), torch.float32
    else:
        check_precision(net, dtype, dev)
        if isinstance(net, SRModel):  # the fast inference path: fused form, measured layout
            upscale = model_upscaler(net, dev, dtype, fuse=None if fuse else False)
        else:
            upscale = net.to(device=dev, dtype=dtype).eval()
    if ensemble:
        upscale = self_ensemble(upscale)
    console = Console(markup=False, highlight=False, stderr=True)
    results = []
    for ds in datasets:
        with console.status(f"{ds.name}: {len(ds.pairs)} images"):
            results.append(
                evaluate_dataset(
                    upscale,
                    ds,
                    scale,
                    protocol=protocol,
                    device=dev,
                    dtype=dtype,
                    save_dir=out / "images" if save_images else None,
                )
            )
    Console(markup=False, highlight=False).print(results_table(label, scale, protocol, results))
    report = {
        "model": label,
        "scale": scale,
        "protocol": protocol,
        "self_ensemble": ensemble,
        "dtype": str(dtype).replace("torch.", ""),
        "datasets": [r.to_dict() for r in results],
    }
    atomic_write_text(out / "results.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "results.csv", results_csv(results))
    typer.echo(f"wrote {out / 'results.json'} and {out / 'results.csv'}")
    failed = sum(len(r.rows) - len(r.ok_rows) for r in results)
    if failed:
        raise SlimsrError(f"{failed} image(s) could not be evaluated (see the note column)")
