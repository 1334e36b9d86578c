"""`slimsr models`: the registry as a table."""

from __future__ import annotations

import json

import torch
import typer
from rich.console import Console
from rich.table import Table

from slimsr.cli.app import Command, app
from slimsr.registry import count_parameters, get_model_info, list_models


def model_rows(pattern: str) -> list[dict]:
    """One row per variant: facts from the registry, parameters counted on the meta device."""
    rows = []
    for name in list_models(pattern):
        info = get_model_info(name)
        params = {}
        for scale in info.scales:
            with torch.device("meta"):  # counts shapes without allocating memory
                params[scale] = count_parameters(info.build(scale))
        rows.append(
            {
                "name": name,
                "family": info.family,
                "scales": list(info.scales),
                "params": params,
                "input_range": info.input_range,
                "size_multiple": info.size_multiple,
                "min_size": info.min_size,
                "fp16": info.supports_fp16,
                "bf16": info.supports_bf16,
                "deploy_form": info.deploy_form,
                "description": info.description,
                "params_note": info.params_note,
            }
        )
    return rows


@app.command(
    "models",
    cls=Command,
    short_help="List registered models: scales, parameters, input range, sizes.",
)
def models_command(
    pattern: str = typer.Argument("*", metavar="PATTERN", help="Shell-style filter, e.g. 'bsrn*'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List registered models: scales, parameters per scale, input range, size multiple."""
    rows = model_rows(pattern)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="slimsr models", show_lines=False)
    for col in ("name", "scales", "params per scale", "input", "size", "notes"):
        table.add_column(col, overflow="fold")
    for row in rows:
        params = " / ".join(f"{row['params'][s]:,}" for s in row["scales"])
        notes = row["description"]
        if row["deploy_form"]:
            notes += f" [train-time form of {row['deploy_form']}]"
        if row["params_note"]:
            notes += f" ({row['params_note']})"
        input_range = "[0,1]" if row["input_range"] == 1.0 else f"[0,{row['input_range']:g}]"
        scales = ",".join(f"x{s}" for s in row["scales"])
        size = str(row["size_multiple"])
        if row["min_size"] > 1:
            size += f" (min {row['min_size']} px)"
        table.add_row(row["name"], scales, params, input_range, size, notes)
    Console(markup=False, highlight=False, width=160).print(table)
    typer.echo("Input range is the raw network's; every model the API returns takes RGB in [0,1].")
