"""`slimsr profile -m A -m B --table`: one row per model, FLOPs in the named convention; the
single-model report keeps its shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import slimsr
from tests.conftest import run_here

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = ("edsrmini", "bsrn_s")


def test_table_of_two_models(tmp_path: Path, capsys) -> None:
    js, md = tmp_path / "t.json", tmp_path / "t.md"
    argv = ["profile", "-m", MODELS[0], "-m", MODELS[1], "-s", "2", "--input", "24x20"]
    argv += ["--flops", "macs", "--device", "cpu", "--threads", "1", "--repeats", "1"]
    argv += ["--warmup", "0", "--no-memory", "--json", str(js), "--markdown", str(md)]
    code, out, err = run_here(argv, capsys)
    assert code == 0, err
    assert "FLOPs [G] (macs)" in out and "24x20 LR input" in out.replace("\n", " ")

    table = json.loads(js.read_text())
    assert table["flops_convention"] == "macs"
    rows = table["rows"]
    assert [r["model"] for r in rows] == list(MODELS)
    for row, report, name in zip(rows, table["reports"], MODELS, strict=True):
        assert row["params"] == slimsr.create_model(name, 2).num_parameters()
        assert row["flops"] == report["flops"]["macs"] > 0
        assert row["input_hw"] == [20, 24] and row["scale"] == 2
        assert row["runtime_ms"] > 0 and row["memory_bytes"] is None  # --no-memory

    lines = md.read_text().splitlines()
    assert lines[0].startswith("| model | scale | params | FLOPs [G] (macs) |")
    body = [line for line in lines[2:] if line.startswith("|")]
    assert [line.split("|")[1].strip() for line in body] == list(MODELS)
    for line, row in zip(body, rows, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == f"{row['params']:,}"
        assert cells[3] == f"{row['flops'] / 1e9:.2f}"
        assert cells[7] == "-"


def test_one_model_report_is_unchanged_and_bad_table_options_refused(tmp_path, capsys) -> None:
    base = ["profile", "-m", "edsrmini", "-s", "2", "--input", "16x16", "--no-runtime"]
    code, out, err = run_here([*base, "--no-memory", "--json", str(tmp_path / "one.json")], capsys)
    assert code == 0, err
    assert "FLOPs ntire2022" in out and "FLOPs fvcore" in out  # every convention, as before
    one = json.loads((tmp_path / "one.json").read_text())
    assert one["model"] == "edsrmini" and set(one["flops"]) >= {"ntire2022", "macs"}

    cases = [
        ([*base, "--table", "--flops", "gmacs"], "--flops must be one of"),
        ([*base, "--markdown", str(tmp_path / "x.md")], "--markdown writes the --table"),
        ([*base, "-m", "bsrn_s", "-w", str(tmp_path / "w.pth")], "not --weights files"),
        ([*base, "--table", "--json", str(tmp_path)], "is a folder"),
    ]
    for argv, needle in cases:
        code, _out, err = run_here(argv, capsys)
        assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.json"]


def test_table_of_ablation_variants(tmp_path: Path, capsys) -> None:
    """`-m NAME:key=value,...` profiles a paper-ablation variant: its row is named by the switches
    and counts the switched network (docs/ablations.md's latency columns as profile runs)."""
    js = tmp_path / "v.json"
    specs = ["bsrn", "bsrn:esa=false,cca=false", "bsrn:conv=dsconv,num_feat=48"]
    argv = ["profile", *(a for s in specs for a in ("-m", s)), "-s", "4", "--input", "16x16"]
    argv += ["--device", "cpu", "--no-runtime", "--no-memory", "--json", str(js)]
    code, _out, err = run_here(argv, capsys)
    assert code == 0, err
    rows = json.loads(js.read_text())["rows"]
    assert [r["model"] for r in rows] == specs
    expected = [
        slimsr.create_model("bsrn", 4).num_parameters(),
        slimsr.create_model("bsrn", 4, esa=False, cca=False).num_parameters(),
        slimsr.create_model("bsrn", 4, conv="dsconv", num_feat=48).num_parameters(),
    ]
    assert [r["params"] for r in rows] == expected and len(set(expected)) == 3


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("bsrn:esa", "key=value pairs"),
        ("bsrn:foo=1", "unexpected keyword argument 'foo'"),
        ("bsrn:esa=maybe", "is not one of"),
    ],
)
def test_bad_variant_spec_is_one_line(spec: str, needle: str, capsys) -> None:
    code, _out, err = run_here(["profile", "-m", spec, "-s", "4", "--no-runtime"], capsys)
    assert code == 2 and err.count("\n") == 1 and needle in err, err
