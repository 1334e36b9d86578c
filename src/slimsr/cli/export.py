"""`slimsr export onnx ...`: deployable files, verified against PyTorch before they are written.

`export` is a command group so that other formats (`slimsr export tflite`) sit beside `onnx`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from slimsr.cli.app import app
from slimsr.errors import SlimsrError
from slimsr.factory import create_model, load
from slimsr.model import SRModel

export_app = typer.Typer(
    help="Export a model for deployment (ONNX).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(export_app, name="export")


def load_for_export(model: str | None, scale: int | None, weights: Path | None) -> SRModel:
    """The model to export: `-m NAME --weights W`, or `--weights W` alone (detected)."""
    if weights is None:
        raise SlimsrError("give --weights (architecture detected) or -m NAME --weights FILE")
    net = create_model(model, scale, weights) if model else load(weights)
    if scale is not None and net.scale != scale:
        raise SlimsrError(f"{weights} is a x{net.scale} model, not x{scale}")
    return net


@export_app.command("onnx")
def onnx_command(
    output: Path = typer.Option(..., "-o", "--output", help="The .onnx file to write."),
    model: str = typer.Option(None, "-m", "--model", help="Registered model name."),
    scale: int = typer.Option(None, "-s", "--scale", help="Upscaling factor."),
    weights: Path = typer.Option(None, "-w", "--weights", help="Weights file (any format)."),
    fp16: bool = typer.Option(False, "--fp16", help="fp16 weights and compute (float32 IO)."),
    int8: bool = typer.Option(False, "--int8", help="INT8 QDQ (plain-conv models; --calib)."),
    calib: Path = typer.Option(None, "--calib", help="Folder of calibration images (--int8)."),
    calib_crops: int = typer.Option(64, "--calib-crops", help="Random crops to calibrate on."),
    calib_size: int = typer.Option(48, "--calib-size", help="Crop size (px)."),
    calib_downscale: int = typer.Option(
        1, "--calib-downscale", help="Shrink calibration images first (HR photos -> LR-like)."
    ),
    calib_method: str = typer.Option("percentile", "--calib-method", help="percentile | minmax."),
    opset: int = typer.Option(None, "--opset", help="ONNX opset (default 17; 13..20)."),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Compare onnxruntime with PyTorch at two sizes."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if it exists."),
) -> None:
    """Export to ONNX: RGB [0,1] NCHW in and out, dynamic batch/height/width."""
    from slimsr.quant.onnx import calibration_crops, export_onnx

    if fp16 and int8:
        raise SlimsrError("choose one of --fp16 and --int8")
    if int8 and calib is None:
        raise SlimsrError("--int8 needs --calib DIR (images like those the model will upscale)")
    if calib is not None and not int8:
        raise SlimsrError("--calib is only used with --int8")
    if output.suffix.lower() != ".onnx":
        raise SlimsrError(f"{output}: the output file must end in .onnx")
    if output.exists() and not overwrite:
        raise SlimsrError(f"{output} exists; pass --overwrite to replace it")
    net = load_for_export(model, scale, weights)
    samples = None
    if int8:
        samples = calibration_crops(calib, calib_crops, calib_size, downscale=calib_downscale)
    result = export_onnx(
        net,
        output,
        opset=opset,
        dtype="int8" if int8 else "fp16" if fp16 else "fp32",
        verify=verify,
        calibration=samples,
        calibration_method=calib_method,
    )
    source = f" (deploy form of {net.name})" if result.arch != net.name else ""
    typer.echo(
        f"wrote {output}: {result.arch} x{result.scale}{source}, {result.precision}, "
        f"opset {result.opset}, dynamic N/H/W, {result.size_bytes / 1e6:.2f} MB"
    )
    if result.checks:
        checks = "; ".join(c.describe() for c in result.checks)
        typer.echo(f"verified with onnxruntime: {checks} (limit {result.limit})")
