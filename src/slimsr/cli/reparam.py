"""`slimsr reparam IN -o OUT`: train-time weights (FMEN RRRB + BatchNorm, SPAN Conv3XC) -> deploy
weights."""

from __future__ import annotations

from pathlib import Path

import typer

from slimsr.cli.app import Command, app
from slimsr.errors import SlimsrError
from slimsr.factory import load, save


@app.command(
    "reparam",
    cls=Command,
    short_help="Fold re-parameterisable blocks into plain convs (deploy form).",
)
def reparam_command(
    weights: Path = typer.Argument(
        ...,
        metavar="WEIGHTS",
        help="Train-time weights (e.g. an fmen_s_train or span_train checkpoint).",
    ),
    output: Path = typer.Option(
        ...,
        "-o",
        "--output",
        metavar="FILE",
        help="Output file: the deploy weights (.safetensors), not a folder.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if it exists."),
) -> None:
    """Fold re-parameterisable blocks into plain convolutions for fast inference."""
    from slimsr.reparam import reparameterize_model

    if output.suffix.lower() != ".safetensors":
        raise SlimsrError(f"{output}: the deploy weights are written as .safetensors")
    if output.resolve() == weights.resolve():
        raise SlimsrError(f"{output}: refusing to overwrite the input weights")
    if output.exists() and not overwrite:
        raise SlimsrError(f"{output} exists; pass --overwrite to replace it")
    model = load(weights)
    deploy = reparameterize_model(model)
    save(deploy, output, extra={"reparameterized_from": str(weights)})
    typer.echo(
        f"{weights} ({model.name}, {model.num_parameters():,} params) -> {output} "
        f"({deploy.name}, {deploy.num_parameters():,} params)"
    )
