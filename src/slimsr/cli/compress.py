"""`slimsr compress RECIPE.yaml`: prune -> size -> distil a compact model, then a report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from slimsr.cli.app import Command, app


def report_table(report: dict[str, Any]) -> Table:
    val = report["validation"]
    h, w = report["flops_output_hw"]
    where = f"PSNR/SSIM on {val['set']} ({val['protocol']})" if val else "no validation set"
    table = Table(title=f"x{report['scale']}, density {report['density']:.4f}: {where}")
    for column in ("role", "model", "params", f"MACs @{w}x{h} out", "PSNR", "SSIM"):
        table.add_column(column, justify="left" if column in ("role", "model") else "right")
    for row in report["models"]:
        psnr = "n/a (no weights)" if row["psnr"] is None else f"{row['psnr']:.2f}"
        ssim = "" if row["ssim"] is None else f"{row['ssim']:.4f}"
        table.add_row(
            row["role"],
            row["model"],
            f"{row['params']:,}",
            f"{row['flops']['macs'] / 1e9:.2f} G",
            psnr if val else "",
            ssim,
        )
    return table


@app.command(
    "compress",
    cls=Command,
    short_help="Prune, size and distil a compact model (Jiang et al. 2024).",
)
def compress_command(
    recipe: Path = typer.Argument(
        ...,
        metavar="RECIPE",
        help="Compression recipe (YAML), e.g. configs/compress_edsr_baseline_x2.yaml.",
    ),
    overrides: list[str] = typer.Option(
        [],
        "--set",
        metavar="KEY=VALUE",
        help="Override a key, e.g. --set distill.train.iterations=1000 (repeatable).",
    ),
    check: bool = typer.Option(
        False,
        "--check",
        help="Validate the recipe and each stage's memory estimate, print it resolved, and exit.",
    ),
) -> None:
    """Compress a model (Jiang et al. 2024): prune with OBProx-SG -> size by eqs. 5-7 -> distil.

    Each stage is skipped when its artifact exists in the run folder (density.json,
    compact.json, student.safetensors) and resumed when it was interrupted: run the same
    command again to continue.
    """
    from slimsr.compress import compress, load_compress_config
    from slimsr.compress.runs import StageInterrupted
    from slimsr.compress.workflow import REPORT_FILE

    config = load_compress_config(recipe, overrides)
    if check:
        from slimsr.compress.workflow import check_stages_memory

        typer.echo(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), nl=False)
        for stage, estimate in check_stages_memory(config):
            print(f"memory ({stage} stage): {estimate.summary()}", file=sys.stderr)
        return
    try:
        result = compress(config, log=typer.echo)
    except StageInterrupted as exc:
        print(
            f"{exc.stage} interrupted at iteration {exc.result.iteration}: state saved; run "
            f"`slimsr compress {recipe}` again to continue",
            file=sys.stderr,
        )
        raise typer.Exit(130) from None
    Console(width=110).print(report_table(result.report))
    typer.echo(f"report: {result.run_dir / REPORT_FILE}")
