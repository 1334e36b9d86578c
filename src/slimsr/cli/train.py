"""`slimsr train RECIPE.yaml`: train a model from a recipe (also under torchrun for DDP)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from slimsr.cli.app import Command, app
from slimsr.errors import SlimsrError


@app.command(
    "train",
    cls=Command,
    short_help="Train from a recipe; Ctrl-C saves, --resume continues exactly.",
)
def train_command(
    recipe: Path | None = typer.Argument(
        None, metavar="RECIPE", help="Training recipe (YAML), e.g. configs/bsrn_s_x4.yaml."
    ),
    overrides: list[str] = typer.Option(
        [],
        "--set",
        metavar="KEY=VALUE",
        help="Override a key, e.g. --set train.lr=2e-4 (repeatable).",
    ),
    resume: Path | None = typer.Option(
        None,
        "--resume",
        metavar="RUN_DIR",
        help="Continue the run in this folder from its newest checkpoint.",
    ),
    print_schema: bool = typer.Option(
        False, "--print-schema", help="Print the recipe's JSON schema and exit."
    ),
    check: bool = typer.Option(
        False,
        "--check",
        help="Validate the recipe and its memory estimate, print it resolved (with --resume: "
        "what would change), and exit.",
    ),
) -> None:
    """Train from a recipe; Ctrl-C saves a checkpoint, --resume continues it exactly.

    Multi-GPU / multi-process: torchrun --nproc-per-node N -m slimsr train RECIPE.yaml
    """
    from slimsr.train import dump_config, json_schema, load_config, resume_config, train
    from slimsr.train.memory import check_memory
    from slimsr.train.resume import plan_resume

    if print_schema:
        typer.echo(json.dumps(json_schema(), indent=2))
        return
    if (recipe is None) == (resume is None):
        raise SlimsrError("give a recipe file or --resume RUN_DIR (one of them)")
    if resume is not None:
        config = resume_config(resume, overrides)
    else:
        assert recipe is not None
        config = load_config(recipe, overrides)
    if check:
        if resume is not None:  # what the resume would change, nothing written
            for line in plan_resume(resume, config):
                typer.echo(line)
        else:
            typer.echo(dump_config(config), nl=False)
        print(f"memory: {check_memory(config).summary()}", file=sys.stderr)
        return
    result = train(config, resume=True if resume is not None else None)
    if result.finished_before:
        typer.echo(
            f"{result.run_dir} finished at iteration {result.iteration} before: nothing to do "
            "(a longer run: --set train.iterations=N)"
        )
        return
    if result.interrupted:
        print(
            f"interrupted at iteration {result.iteration}: state saved; continue with "
            f"`slimsr train --resume {result.run_dir}`",
            file=sys.stderr,
        )
        raise typer.Exit(130)
    if result.weights:
        typer.echo(f"weights: {', '.join(str(p) for p in result.weights)}")
