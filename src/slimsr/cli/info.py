"""`slimsr info FILE`: what a weights file (or an exported .onnx / .tflite) is."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from slimsr.cli.app import Command, app
from slimsr.export.runners import META, is_runtime_path, load_runner
from slimsr.factory import load


def _dims(shape: Sequence[Any]) -> str:
    """`[N,3,H,W]`-style text; dynamic axes (names, None, -1) shown as their name or `?`."""
    parts = [
        str(d) if isinstance(d, int) and d >= 0 else (d if isinstance(d, str) else "?")
        for d in shape
    ]
    return "[" + ",".join(parts) + "]"


def runtime_summary(path: Path) -> str:
    """One line for a deployment file: architecture and scale (metadata or a probe run),
    precision and the declared input/output tensors."""
    runner: Any = load_runner(path)
    arch = getattr(runner, "arch", None)
    model = f"{arch} x{runner.scale}" if arch else f"x{runner.scale} (architecture not recorded)"
    if path.suffix.lower() == ".onnx":
        meta = runner.metadata
        precision = meta.get(META + "precision", "precision not recorded")
        (inp,) = runner.session.get_inputs()
        out = runner.session.get_outputs()[0]
        io = (
            f"input {inp.type} {_dims(inp.shape)} (NCHW RGB [0,1]) -> "
            f"output {out.type} {_dims(out.shape)}"
        )
        return f"{path}: ONNX, {model}, {precision}, {io}"
    details_in = runner.interpreter.get_input_details()[0]
    details_out = runner.interpreter.get_output_details()[0]

    def tensor(d: dict[str, Any]) -> str:
        shape = d.get("shape_signature")
        shape = d["shape"] if shape is None or len(shape) == 0 else shape
        return f"{d['dtype'].__name__} {_dims([int(x) for x in shape])}"

    pixels = "uint8 pixels" if runner.quantized else "pixel values 0..255"
    return (
        f"{path}: TFLite, {model}, {runner.precision}, input "
        f"{tensor(details_in)} (NHWC RGB, {pixels}) -> output {tensor(details_out)}"
    )


@app.command(
    "info",
    cls=Command,
    short_help="What a weights, .onnx or .tflite file holds: model and scale.",
)
def info_command(
    weights: Path = typer.Argument(
        ...,
        metavar="FILE",
        help="A .pth/.pt/.ckpt/.safetensors/.npz weights file, or an exported .onnx/.tflite.",
    ),
) -> None:
    """Detect the architecture, scale and hyper-parameters of a weights or deployment file."""
    if is_runtime_path(weights):
        typer.echo(runtime_summary(weights))
        return
    model = load(weights)
    extra = f" {model.kwargs}" if model.kwargs else ""
    typer.echo(
        f"{weights}: {model.name} x{model.scale}{extra}, {model.num_parameters():,} parameters, "
        f"input range [0,{model.input_range:g}] (API: [0,1])"
    )
