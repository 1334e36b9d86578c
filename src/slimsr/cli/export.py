"""`slimsr export onnx|tflite ...`: deployable files, verified before they are written.

`export` is a command group: `onnx` (any model; fp32, fp16, INT8 QDQ) and `tflite` (plain-conv
models; float, or full-integer INT8 with uint8 pixel IO from calibration or QAT ranges).
"""

from __future__ import annotations

from pathlib import Path

import typer

from slimsr.cli.app import Command, app
from slimsr.cli.loading import load_model
from slimsr.errors import SlimsrError
from slimsr.model import SRModel

export_app = typer.Typer(
    help="Export a model for deployment (ONNX, TFLite).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(export_app, name="export")


def load_for_export(model: str | None, scale: int | None, weights: Path | None) -> SRModel:
    """The model to export: `-m NAME --weights W`, or `--weights W` alone (detected)."""
    if weights is None:
        raise SlimsrError("give --weights (architecture detected) or -m NAME --weights FILE")
    net = load_model(model, scale, weights)
    assert isinstance(net, SRModel)  # no runtime files here
    return net


@export_app.command(
    "onnx", cls=Command, short_help="Export to ONNX (fp32, fp16 or INT8), dynamic N/H/W."
)
def onnx_command(
    output: Path = typer.Option(
        ..., "-o", "--output", metavar="FILE", help="Output file (.onnx), not a folder."
    ),
    model: str = typer.Option(None, "-m", "--model", metavar="NAME", help="Registered model name."),
    scale: int = typer.Option(None, "-s", "--scale", help="Upscaling factor."),
    weights: Path = typer.Option(
        None, "-w", "--weights", metavar="FILE", help="Weights file (any format)."
    ),
    fp16: bool = typer.Option(False, "--fp16", help="fp16 weights and compute (float32 IO)."),
    int8: bool = typer.Option(False, "--int8", help="INT8 QDQ (plain-conv models; --calib)."),
    calib: Path = typer.Option(
        None, "--calib", metavar="DIR", help="Folder of calibration images (--int8)."
    ),
    calib_crops: int = typer.Option(64, "--calib-crops", help="Random crops to calibrate on."),
    calib_size: int = typer.Option(48, "--calib-size", help="Crop size (px)."),
    calib_downscale: int = typer.Option(
        1, "--calib-downscale", help="Shrink calibration images first (HR photos -> LR-like)."
    ),
    calib_method: str = typer.Option(
        "percentile", "--calib-method", metavar="METHOD", help="percentile | minmax."
    ),
    opset: int = typer.Option(None, "--opset", help="ONNX opset (default 17; 13..20)."),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Compare onnxruntime with PyTorch at two sizes."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if it exists."),
) -> None:
    """Export to ONNX: RGB [0,1] NCHW in and out, dynamic batch/height/width."""
    from slimsr.export.calibration import calibration_crops
    from slimsr.export.onnx import export_onnx

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


@export_app.command(
    "tflite", cls=Command, short_help="Export a plain-conv model to TFLite (float or INT8)."
)
def tflite_command(
    output: Path = typer.Option(
        ..., "-o", "--output", metavar="FILE", help="Output file (.tflite), not a folder."
    ),
    model: str = typer.Option(None, "-m", "--model", metavar="NAME", help="Registered model name."),
    scale: int = typer.Option(None, "-s", "--scale", help="Upscaling factor."),
    weights: Path = typer.Option(
        None, "-w", "--weights", metavar="FILE", help="Float weights (any format)."
    ),
    int8: bool = typer.Option(
        False, "--int8", help="Full-integer INT8, uint8 IO (ranges calibrated on --calib)."
    ),
    qat_weights: Path = typer.Option(
        None,
        "--qat-weights",
        metavar="FILE",
        help="Weights of a QAT run (ranges in its sidecar); INT8.",
    ),
    calib: Path = typer.Option(
        None,
        "--calib",
        metavar="DIR",
        help="Folder of calibration images (--int8; default: bundled example).",
    ),
    calib_crops: int = typer.Option(64, "--calib-crops", help="Random crops to calibrate on."),
    calib_size: int = typer.Option(48, "--calib-size", help="Crop size (px)."),
    calib_downscale: int = typer.Option(
        1, "--calib-downscale", help="Shrink calibration images first (HR photos -> LR-like)."
    ),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Run the file at two sizes and compare with PyTorch."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if it exists."),
) -> None:
    """Export a plain-conv model (e.g. ABPN) to TFLite: NHWC pixels in and out, dynamic H/W."""
    from slimsr.export.calibration import calibration_crops
    from slimsr.export.tflite import export_tflite
    from slimsr.quant.qat import ranges_from_weights_file

    if weights is not None and qat_weights is not None:
        raise SlimsrError("give one of --weights (float) and --qat-weights (a QAT run's weights)")
    if output.suffix.lower() != ".tflite":
        raise SlimsrError(f"{output}: the output file must end in .tflite")
    if output.exists() and not overwrite:
        raise SlimsrError(f"{output} exists; pass --overwrite to replace it")
    if calib is not None and (not int8 or qat_weights is not None):
        raise SlimsrError("--calib is only used with --int8 (QAT weights carry their ranges)")
    ranges = None
    if qat_weights is not None:
        net = load_for_export(model, scale, qat_weights)
        ranges = ranges_from_weights_file(qat_weights)
        if ranges is None:
            raise SlimsrError(
                f"{qat_weights} carries no INT8 ranges (not written by a run with quant.qat); "
                f"export it with -w {qat_weights} --int8 to calibrate instead"
            )
        int8 = True
    else:
        net = load_for_export(model, scale, weights)
    samples = None
    note = ""
    if int8 and ranges is None:
        source: Path = calib if calib is not None else _bundled_example()
        samples = calibration_crops(source, calib_crops, calib_size, downscale=calib_downscale)
        if calib is None:
            note = "calibrated on the bundled example image; --calib DIR with your kind of images"
    result = export_tflite(
        net, output, int8=int8, calibration=samples, ranges=ranges, verify=verify
    )
    s = result.summary
    how = f", ranges {result.ranges}" if result.ranges else ""
    io_text = "uint8 pixel IO" if int8 else "float32 pixel IO (0..255)"
    typer.echo(
        f"wrote {output}: {result.arch} x{result.scale}, {result.precision}{how}, {io_text}, "
        f"NHWC, dynamic H/W, {result.size_bytes / 1e3:.1f} KB"
    )
    if s is not None and s.ops:
        typer.echo(f"ops: {', '.join(s.ops)}")
    if result.checks:
        checks = "; ".join(c.describe() for c in result.checks)
        typer.echo(f"verified with LiteRT: {checks} (limit {result.limit})")
    if note:
        typer.echo(f"note: {note}")


def _bundled_example() -> Path:
    from importlib.resources import files

    return Path(str(files("slimsr") / "assets" / "example.png"))
