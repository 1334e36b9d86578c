"""`slimsr profile`: params, FLOPs (every convention, labelled), activations, convs, runtime,
peak memory of one model, as a table and as JSON; or of several, one row each (`--table`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from slimsr.cli.app import Command, app
from slimsr.cli.checks import resolve_device, resolve_dtype
from slimsr.cli.loading import load_model
from slimsr.errors import SlimsrError
from slimsr.factory import create_model
from slimsr.fileio import atomic_write_text
from slimsr.model import SRModel
from slimsr.profile.counting import CONVENTION_NOTES, CONVENTIONS
from slimsr.profile.report import ProfileReport, profile_model
from slimsr.profile.sizes import parse_size
from slimsr.profile.table import (
    check_convention,
    efficiency_row,
    header,
    markdown_table,
    row_cells,
    table_note,
)
from slimsr.profile.timing import busy_cpu_warning


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """`NAME` or `NAME:key=value,key=value`: a registered model with constructor switches (the
    papers' ablations, `docs/ablations.md`), values read as YAML scalars (false, 48, relu)."""
    name, _, options = spec.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, options.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SlimsrError(f"-m {spec}: options are key=value pairs separated by commas")
        try:
            kwargs[key.strip()] = yaml.safe_load(value.strip())
        except yaml.YAMLError:
            raise SlimsrError(f"-m {spec}: cannot read the value of {key.strip()!r}") from None
    return name.strip(), kwargs


def _resolve(model: str | None, scale: int | None, weights: Path | None) -> SRModel:
    """`-m NAME[:key=value,...]` (weights optional: counts and timings do not need them) or
    `--weights FILE`."""
    if model is None and weights is None:
        raise SlimsrError("give -m NAME (and --scale), or --weights FILE to detect the model")
    name, kwargs = parse_model_spec(model) if model is not None else (None, {})
    if kwargs:
        if weights is not None:
            raise SlimsrError(f"-m {model}: switches build a new network; not with --weights")
        try:
            return create_model(name, scale, **kwargs)
        except TypeError as exc:  # a keyword the architecture does not take
            raise SlimsrError(f"-m {model}: {exc}") from None
    net = load_model(name, scale, weights)
    assert isinstance(net, SRModel)  # no runtime files here
    return net


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def report_table(report: ProfileReport) -> Table:
    d = report.to_dict()
    (h, w), (oh, ow) = d["input_hw"], d["output_hw"]
    where = f"{ow}x{oh} output" if report.output_size_mode else f"{w}x{h} LR input"
    title = f"{report.model} x{report.scale}: {where} (raw network, input range [0,{d['input_range']:g}])"
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("note", overflow="fold")
    table.add_row("params", f"{d['params']:,}", "all parameters, as NTIRE counts them")
    for form, n in d["params_forms"].items():
        table.add_row(f"params ({form} form)", f"{n:,}", "re-parameterisable model")
    for conv in CONVENTIONS:
        table.add_row(f"FLOPs {conv}", f"{d['flops'][conv] / 1e9:.4f} G", CONVENTION_NOTES[conv])
    table.add_row("activations", f"{d['activations'] / 1e6:.2f} M", "conv output elements (NTIRE)")
    table.add_row("convs", str(d["convs"]), "conv calls (NTIRE): a reused conv counts twice")
    rt: dict[str, Any] | None = d["runtime"]
    if rt:
        setting = f"{rt['device']}, {rt['method']}"
        if rt["threads"]:
            setting += f", {rt['threads']} threads"
        s = d["settings"]
        if s.get("fused"):
            setting += ", fused form"
        setting += f", {'channels_last' if s.get('channels_last') else 'contiguous'}"
        if s.get("compile"):
            setting += ", torch.compile"
        if s.get("dtype", "float32") != "float32":
            setting += f", {s['dtype']}"
        table.add_row("runtime median", f"{rt['median_ms']:.2f} ms", setting)
        table.add_row(
            "runtime spread",
            f"{rt['iqr_ms']:.2f} ms",
            f"IQR over {len(rt['times_ms'])} runs; min {rt['min_ms']:.2f}, max {rt['max_ms']:.2f}",
        )
        warm = ", ".join(f"{t:.1f}" for t in rt["warmup_ms"]) or "none"
        table.add_row("first run", f"{rt['first_ms']:.2f} ms", f"warm-up runs excluded: {warm} ms")
    mem: dict[str, Any] | None = d["memory"]
    if mem:
        if mem["device"] == "cpu":
            table.add_row(
                "peak memory increase",
                _mb(mem["peak_increase_bytes"]),
                f"resident memory, child process ({mem['method']}); before: "
                f"{_mb(mem['baseline_bytes'])}",
            )
        else:
            table.add_row(
                "peak memory",
                _mb(mem["peak_bytes"]),
                f"max_memory_allocated incl. weights and input (NTIRE [M]); forward alone "
                f"{_mb(mem['peak_increase_bytes'])}",
            )
    return table


@app.command(
    "profile",
    cls=Command,
    short_help="Params, FLOPs, activations, runtime and peak memory of a model.",
)
def profile_command(
    model: list[str] = typer.Option(
        [],
        "-m",
        "--model",
        metavar="NAME",
        help="Registered model name, optionally with switches: bsrn:esa=false,act=relu "
        "(repeatable: several give the --table).",
    ),
    scale: int = typer.Option(None, "-s", "--scale", help="Upscaling factor."),
    weights: Path = typer.Option(
        None,
        "-w",
        "--weights",
        metavar="FILE",
        help="Weights (optional: counts and timings do not need them).",
    ),
    input_size: str = typer.Option(
        None,
        "--input",
        metavar="WxH",
        help="LR input size (default 256x256, the NTIRE setting).",
    ),
    output_size: str = typer.Option(
        None,
        "--output",
        metavar="WxH",
        help="Output size instead, e.g. 1280x720 (the papers' Mult-Adds); not a file.",
    ),
    device: str = typer.Option(
        "auto", "--device", metavar="DEVICE", help="auto (CUDA if available) | cpu | cuda."
    ),
    threads: int = typer.Option(None, "--threads", help="CPU threads (default: torch's)."),
    repeats: int = typer.Option(10, "--repeats", help="Timed runs after the warm-up."),
    warmup: int = typer.Option(2, "--warmup", help="Warm-up runs (timed, reported, excluded)."),
    channels_last: bool = typer.Option(
        None,
        "--channels-last/--contiguous",
        help="Memory format (default: the family's measured best on CPU).",
    ),
    fuse: bool = typer.Option(
        None,
        "--fuse/--no-fuse",
        help="Time the fused inference form (default: where one exists, on CPU).",
    ),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the network first."),
    fp16: bool = typer.Option(False, "--fp16", help="Time float16 (CUDA only)."),
    bf16: bool = typer.Option(False, "--bf16", help="Time bfloat16 (models that support it)."),
    no_runtime: bool = typer.Option(False, "--no-runtime", help="Counts only: no timing."),
    no_memory: bool = typer.Option(False, "--no-memory", help="Skip the peak-memory run."),
    table: bool = typer.Option(
        False,
        "--table",
        help="One row per model (the NTIRE efficiency table); implied by -m A -m B.",
    ),
    flops: str = typer.Option(
        "ntire2022",
        "--flops",
        metavar="CONVENTION",
        help=f"The --table's FLOPs convention: {' | '.join(CONVENTIONS)}.",
    ),
    json_out: Path = typer.Option(
        None, "--json", metavar="FILE", help="Write the report (or the table) as JSON to this file."
    ),
    markdown_out: Path = typer.Option(
        None, "--markdown", metavar="FILE", help="Write the --table as markdown to this file."
    ),
) -> None:
    """Params, FLOPs in every convention, activations, convs, runtime and peak memory.

    Several models (-m A -m B, or --table) give one row each, FLOPs in the --flops convention.
    """
    if input_size is not None and output_size is not None:
        raise SlimsrError("give --input or --output, not both")
    table = table or len(model) > 1
    if not table:
        if markdown_out is not None:
            raise SlimsrError("--markdown writes the --table: add --table")
        if flops != "ntire2022":
            raise SlimsrError("--flops picks the --table's column; one model's report has them all")
    else:
        check_convention(flops)
        if weights is not None:
            raise SlimsrError(
                "--table profiles registered names (-m NAME ...), not --weights files"
            )
        if not model:
            raise SlimsrError("--table needs -m NAME (repeatable)")
    for path in (json_out, markdown_out):
        if path is not None and path.is_dir():
            raise SlimsrError(f"{path}: is a folder; give a file name")
    nets = (
        [_resolve(m, scale, None) for m in model]
        if table
        else [_resolve(model[0] if model else None, scale, weights)]
    )
    # --fp16 / --bf16 are refused by `profile_model` only when it runs the model (counts work)
    dev, dtype = resolve_device(device), resolve_dtype(fp16, bf16)
    reports = [
        profile_model(
            net,
            input_hw=parse_size(input_size) if input_size else None,
            output_hw=parse_size(output_size) if output_size else None,
            device=dev,
            threads=threads,
            warmup=warmup,
            repeats=repeats,
            channels_last=channels_last,
            compile=compile_,
            fuse=fuse,
            runtime=not no_runtime,
            memory=not no_memory,
            dtype=dtype,
        )
        for net in nets
    ]
    for spec, report in zip(model if table else model[:1], reports, strict=False):
        if ":" in spec:  # a switched variant: its row names the switches
            report.model = spec
    console = Console(markup=False, highlight=False, width=150)
    if table:
        rows = [efficiency_row(r, flops) for r in reports]
        note = table_note(reports, flops)
        console.print(efficiency_table(rows, flops, note))
        payload: Any = {
            "flops_convention": flops,
            "note": note,
            "rows": rows,
            "reports": [r.to_dict() for r in reports],
        }
    else:
        console.print(report_table(reports[0]))
        payload = reports[0].to_dict()
    warning = busy_cpu_warning(reports[0].settings) if reports[0].runtime else None
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(payload, indent=2) + "\n")
        typer.echo(f"wrote {json_out}")
    if markdown_out is not None:
        atomic_write_text(markdown_out, markdown_table(rows, flops, note))
        typer.echo(f"wrote {markdown_out}")


def efficiency_table(rows: list[dict[str, Any]], convention: str, note: str) -> Table:
    """The rows as a rich table, the convention in the FLOPs header, the note as caption."""
    table = Table(title="efficiency", caption=note, show_header=True)
    for col in header(convention):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row_cells(row))
    return table
