"""`slimsr info WEIGHTS`: what a weights file is, detected from its keys."""

from __future__ import annotations

from pathlib import Path

import typer

from slimsr.cli.app import app
from slimsr.factory import load


@app.command("info")
def info_command(
    weights: Path = typer.Argument(..., help="A .pth/.pt/.safetensors/.npz weights file."),
) -> None:
    """Detect the architecture, scale and hyper-parameters of a weights file."""
    model = load(weights)
    extra = f" {model.kwargs}" if model.kwargs else ""
    typer.echo(
        f"{weights}: {model.name} x{model.scale}{extra}, {model.num_parameters():,} parameters, "
        f"input range [0,{model.input_range:g}] (API: [0,1])"
    )
