"""`slimsr upscale INPUT... -o OUT`: the everyday command."""

from __future__ import annotations

import glob
import math
import os
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from slimsr.cli.app import Command, app, one_line
from slimsr.cli.checks import (
    MAX_OUTSCALE,
    MIN_TILE,
    check_file_name_part,
    check_output_folder,
    check_outscale,
    check_precision,
    check_tile,
    inside,
    resolve_device,
    resolve_dtype,
)
from slimsr.cli.loading import load_model
from slimsr.engines import ENGINE_CHOICES, EngineChoice, choose_engine, int8_engine
from slimsr.errors import SlimsrError
from slimsr.export.runners import Runner, is_onnx_path
from slimsr.imaging import SUFFIXES, list_images, read_image
from slimsr.model import SRModel
from slimsr.profile.memory import resident_mb
from slimsr.upscale import (
    DEFAULT_MEMORY_BUDGET_MB,
    UpscaleOptions,
    planned_tiles,
    ready_for_upscale,
    streams_to_png,
    upscale_to_file,
)
from slimsr.weights import SHIPPED, bundled_path, default_model, default_scale, shipped_path

EXT_CHOICES = ("auto", "png", "jpg", "webp")

MIN_IMAGE_BUDGET_MB = 64.0
"""Least left for one image when `--max-memory` is close to what the process holds already
(tiles then shrink to their minimum rather than the command failing)."""


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their images) and glob patterns -> image paths, in order, no repeats."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = list_images(path)
            if not images:
                raise SlimsrError(f"{path}: no images in this folder")
            found += images
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
            matches = [p for p in matches if p.suffix.lower() in SUFFIXES]
            if not matches:
                raise SlimsrError(f"{item}: no images match this pattern")
            found += matches
        else:
            raise SlimsrError(f"{item}: no such file or folder")
    unique, seen = [], set()
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def output_path(src: Path, out_dir: Path, suffix: str, ext: str, bit16: bool) -> Path:
    if ext == "auto":
        src_ext = src.suffix.lower().lstrip(".")
        ext = src_ext if src_ext in ("png", "jpg", "jpeg", "webp") and not bit16 else "png"
    name = f"{src.stem}_{suffix}" if suffix else src.stem
    return out_dir / f"{name}.{ext}"


def pick_model(
    model: str | None, weights: Path | None, scale: int | None, int8: bool = False
) -> tuple[SRModel | Runner, Path | None]:
    """(model, its weights file): the one named, a shipped one (`-m abpn`), or the bundled
    default when neither -m nor --weights is given."""
    if weights is None:
        if model is None:
            return default_model(scale), bundled_path(scale or default_scale())
        path = shipped_path(model, scale)
        if path is None:
            raise SlimsrError(
                f"-m {model} needs --weights (bundled: the default model, "
                f"{', '.join(f'{n} x{s}' for n, s in SHIPPED)})"
            )
        weights = path
    if int8 and is_onnx_path(weights):
        raise SlimsrError(f"--int8 runs an INT8 .tflite file; {weights.name} is ONNX")
    io = "uint8" if int8 else "auto"
    return load_model(model, scale, weights, runtimes=True, tflite_io=io), weights


def pick_engine(
    net: SRModel | Runner,
    weights: Path | None,
    engine: str,
    int8: bool,
    dev: torch.device,
    dtype: torch.dtype,
    compile_model: bool,
) -> EngineChoice:
    """The engine `--engine` / `--int8` ask for (auto: cached or measured), model ready."""
    if int8 and engine != "auto":
        raise SlimsrError(f"--int8 runs the INT8 TFLite engine; drop --engine {engine}")
    if int8 and isinstance(net, SRModel):
        if compile_model:
            raise SlimsrError("--int8 runs a TFLite file; --compile is for PyTorch")
        choice = int8_engine(weights, net.name, net.scale)
        ready_for_upscale(choice.net, dev, dtype)  # refuses --fp16 / --bf16
        return choice
    return choose_engine(net, engine, device=dev, dtype=dtype, compile=compile_model)


def rank_share(items: list[Path]) -> tuple[list[Path], int, int]:
    """This process's share under torchrun (RANK / WORLD_SIZE), or everything."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return items[rank::world], rank, world


def plan_outputs(files: list[Path], out: Path, suffix: str, ext: str) -> dict[Path, Path]:
    """Each input's output path, refused up front when two inputs would share one, when an
    output would replace an input, or land outside `out`."""
    inputs = {p.resolve(): p for p in files}
    planned: dict[Path, Path] = {}
    claimed: dict[Path, Path] = {}
    for src in files:
        dst = output_path(src, out, suffix, ext, bit16=False)
        key = dst.resolve()
        if not inside(dst, out):
            raise SlimsrError(f"{dst}: outside the output folder {out}")
        if key in inputs:
            raise SlimsrError(f"{dst}: would overwrite an input; use --suffix or another -o")
        if key in claimed:
            raise SlimsrError(
                f"{claimed[key]} and {src} would both be written to {dst}; upscale them "
                "into different -o folders"
            )
        claimed[key] = src
        planned[src] = dst
    return planned


@app.command(
    "upscale",
    cls=Command,
    short_help="Upscale images with the bundled model or any weights file.",
)
def upscale_command(
    inputs: list[str] = typer.Argument(
        ..., metavar="INPUT", help="Image files, folders or glob patterns."
    ),
    out: Path = typer.Option(
        Path("upscaled"),
        "-o",
        "--output",
        metavar="DIR",
        help="Output folder (created if missing; outputs are named INPUT_SUFFIX.EXT).",
    ),
    model: str = typer.Option(None, "-m", "--model", metavar="NAME", help="Registered model name."),
    weights: Path = typer.Option(
        None, "-w", "--weights", metavar="FILE", help="Weights (default: bundled)."
    ),
    scale: int = typer.Option(
        None, "-s", "--scale", help="Network scale (default: x4 if bundled, else the bundled one)."
    ),
    outscale: float = typer.Option(
        None,
        "--outscale",
        help=f"Final scale, resized after the network; in (0, {MAX_OUTSCALE:g}].",
    ),
    suffix: str = typer.Option(
        None, "--suffix", help="Appended to names (default x<scale>); no '/' or '..'."
    ),
    ext: str = typer.Option("auto", "--ext", metavar="EXT", help="auto | png | jpg | webp."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    tile: int = typer.Option(
        None,
        "--tile",
        min=0,
        help=f"LR tile size: 0 never tiles, else at least {MIN_TILE} and twice the overlap "
        "(default: auto, from --max-memory).",
    ),
    overlap: int = typer.Option(16, "--tile-overlap", min=0, help="Overlap between tiles (LR px)."),
    max_memory: float = typer.Option(
        DEFAULT_MEMORY_BUDGET_MB,
        "--max-memory",
        metavar="MB",
        help="MB the whole command may use (the process itself, forward pass, blending strip, "
        "output; PNG results are streamed to disk); larger images are tiled automatically.",
    ),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto | cpu | cuda."),
    fp16: bool = typer.Option(False, "--fp16", help="Half precision (CUDA)."),
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16."),
    quality: int = typer.Option(95, "--quality", min=1, max=100, help="JPEG/WebP quality."),
    compile_model: bool = typer.Option(
        False, "--compile", help="torch.compile the network (slow first call; many images)."
    ),
    engine: str = typer.Option(
        "auto",
        "--engine",
        metavar="ENGINE",
        help="auto (the fastest measured here, cached) | torch | onnxruntime.",
    ),
    int8: bool = typer.Option(
        False,
        "--int8",
        help="Run the model's shipped INT8 TFLite file (ABPN x3: -0.04 dB on Set5), or "
        "require an INT8 .tflite --weights.",
    ),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Print the engine chosen."),
) -> None:
    """Upscale images with the bundled model or any supported weights file.

    Bad options and clashing output names are refused before any image is read; existing
    outputs are skipped unless --overwrite.
    """
    if ext not in EXT_CHOICES:
        raise SlimsrError(f"--ext must be one of {', '.join(EXT_CHOICES)}, not {ext!r}")
    if engine not in ENGINE_CHOICES:
        raise SlimsrError(f"--engine must be one of {', '.join(ENGINE_CHOICES)}, not {engine!r}")
    check_outscale(outscale)
    check_tile(tile, overlap, None)
    if max_memory <= 0 or not math.isfinite(max_memory):
        raise SlimsrError("--max-memory must be a positive number of MB")
    if suffix is not None:
        check_file_name_part(suffix, "--suffix")
    check_output_folder(out)
    files = expand_inputs(inputs)
    dtype = resolve_dtype(fp16, bf16)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device)
    if dev.type == "cuda" and "WORLD_SIZE" in os.environ:
        dev = torch.device("cuda", local_rank)  # one GPU per torchrun process
    net, weights = pick_model(model, weights, scale, int8)
    check_precision(net, dtype, dev)
    check_tile(tile, overlap, net)
    suffix = suffix if suffix is not None else f"x{outscale or net.scale:g}"
    planned = plan_outputs(files, out, suffix, ext)  # every rank checks every name
    choice = pick_engine(net, weights, engine, int8, dev, dtype, compile_model)
    net = choice.net  # ready to run: the fast PyTorch form, or a runtime's session
    if verbose:
        typer.echo(choice.describe())
    opts = UpscaleOptions(
        tile=tile,
        overlap=overlap,
        outscale=outscale,
        device=dev,
        dtype=dtype,
        # the budget is the whole command's: what the process holds already (interpreter,
        # torch, the model) is not the image's to spend
        memory_budget_mb=max(max_memory - (resident_mb() or 0.0), MIN_IMAGE_BUDGET_MB),
    )
    mine, rank, world = rank_share(files)
    done, skipped, failed = 0, [], []
    console = Console(stderr=True, markup=False, highlight=False, emoji=False)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=rank != 0 or not console.is_terminal,  # no bar lines in logs and pipes
    )
    with progress:
        images_task = progress.add_task("images", total=len(mine))
        tiles_task = progress.add_task("tiles", total=1)
        for src in mine:
            try:
                dst = planned[src]
                if dst.exists() and not overwrite:
                    skipped.append(dst)
                    progress.advance(images_task)
                    continue
                image = read_image(src)
                dst = output_path(src, out, suffix, ext, image.bit_depth == 16)
                in_memory = not streams_to_png(dst)
                n_tiles = planned_tiles(image.height, image.width, opts, net, in_memory)
                progress.reset(tiles_task, total=n_tiles, description=f"tiles of {src.name}")
                upscale_to_file(
                    net, image, dst, opts, lambda: progress.advance(tiles_task), quality
                )
                progress.update(tiles_task, completed=n_tiles)  # untiled: one pass, no callback
                done += 1
            except SlimsrError as exc:
                if len(files) == 1:  # the one image asked for: its error is the command's line
                    raise
                failed.append(str(exc))
                console.print(f"error: {one_line(str(exc))}", soft_wrap=True)
            progress.advance(images_task)
    where = f" (rank {rank}/{world})" if world > 1 else ""
    typer.echo(f"upscaled {done} image(s) into {out}{where}")
    for dst in skipped:
        typer.echo(f"skipped {dst}: exists (pass --overwrite to replace)")
    if failed:
        raise SlimsrError(f"{len(failed)} of {len(mine)} image(s) failed (see above)")
