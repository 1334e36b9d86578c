"""The NTIRE-style efficiency table: one row per model, FLOPs in one named convention.

A comparison table needs one FLOPs column, so the convention is chosen once for the whole
table and named in its header (`FLOPs [G] (ntire2022)`); the per-model `slimsr profile` report
keeps every convention. Memory is what `profile_model` measured: on CUDA `max_memory_allocated`
with weights and input (the NTIRE column), on the CPU the peak resident-memory increase of the
forward pass; the table's note says which.
"""

from __future__ import annotations

from typing import Any

from slimsr.errors import SlimsrError
from slimsr.profile.counting import CONVENTION_NOTES, CONVENTIONS
from slimsr.profile.report import ProfileReport

COLUMNS: tuple[str, ...] = (
    "model",
    "scale",
    "params",
    "FLOPs [G]",
    "activations [M]",
    "convs",
    "runtime [ms]",
    "memory [MB]",
)


def check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise SlimsrError(f"--flops must be one of {', '.join(CONVENTIONS)}, not {convention!r}")


def efficiency_row(report: ProfileReport, convention: str) -> dict[str, Any]:
    """One model's row, as raw numbers (JSON) : FLOPs in `convention`, runtime median, memory."""
    check_convention(convention)
    d = report.to_dict()
    memory = d["memory"]
    mem_bytes = None
    if memory:
        mem_bytes = memory["peak_bytes" if memory["device"] != "cpu" else "peak_increase_bytes"]
    return {
        "model": report.model,
        "scale": report.scale,
        "input_hw": d["input_hw"],
        "params": report.params,
        "flops": report.complexity.flops[convention],
        "flops_convention": convention,
        "activations": report.complexity.activations,
        "convs": report.complexity.convs,
        "runtime_ms": d["runtime"]["median_ms"] if d["runtime"] else None,
        "memory_bytes": mem_bytes,
    }


def row_cells(row: dict[str, Any]) -> list[str]:
    """The row as the table shows it, in `COLUMNS` order."""
    runtime, memory = row["runtime_ms"], row["memory_bytes"]
    return [
        row["model"],
        f"x{row['scale']}",
        f"{row['params']:,}",
        f"{row['flops'] / 1e9:.2f}",
        f"{row['activations'] / 1e6:.2f}",
        str(row["convs"]),
        "-" if runtime is None else f"{runtime:.2f}",
        "-" if memory is None else f"{memory / 2**20:.1f}",
    ]


def header(convention: str) -> list[str]:
    """`COLUMNS` with the FLOPs convention named in its column."""
    return [f"{c} ({convention})" if c.startswith("FLOPs") else c for c in COLUMNS]


def table_note(reports: list[ProfileReport], convention: str) -> str:
    """What the numbers are: size, FLOPs convention, where runtime and memory were measured."""
    first = reports[0].to_dict()
    (h, w), (oh, ow) = first["input_hw"], first["output_hw"]
    size = f"{ow}x{oh} output" if reports[0].output_size_mode else f"{w}x{h} LR input"
    parts = [size, f"FLOPs {convention}: {CONVENTION_NOTES[convention]}"]
    rt = first["runtime"]
    if rt:
        where = rt["device"] + (f", {rt['threads']} threads" if rt.get("threads") else "")
        parts.append(f"runtime: median of {len(rt['times_ms'])} runs ({where})")
    mem = first["memory"]
    if mem:
        parts.append(
            "memory: peak resident-memory increase of the forward pass (CPU)"
            if mem["device"] == "cpu"
            else "memory: max_memory_allocated incl. weights and input (NTIRE)"
        )
    return "; ".join(parts)


def markdown_table(rows: list[dict[str, Any]], convention: str, note: str = "") -> str:
    """A GitHub-markdown table of the rows (numbers right-aligned), the note below it."""
    cols = header(convention)
    lines = [
        "| " + " | ".join(cols) + " |",
        "|" + "|".join(":---" if c == "model" else "---:" for c in cols) + "|",
    ]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"
