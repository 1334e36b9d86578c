"""benchmarks/gpu_check.{sh,py}: the GPU check runs end to end on CPU (--quick), reports every
row, and turns a part that fails or hangs into FAILED rows instead of losing the table."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
WRAPPER = REPO / "benchmarks" / "gpu_check.sh"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = _module()
ITEMS = [item for items in gpu_check.EXPECTED.values() for item in items]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    path = [str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])]
    return {**env, "PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": "1"}


def _table_rows(text: str) -> list[list[str]]:
    """The data rows of the markdown table in `text` (cells stripped)."""
    lines = [x for x in text.splitlines() if x.startswith("| ")]
    return [[c.strip() for c in x.strip("|").split("|")] for x in lines[1:]]


def test_quick_cpu_run_reports_every_row(tmp_path: Path) -> None:
    out = tmp_path / "gc.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = _table_rows(done.stdout)
    assert [r[1] for r in table] == ITEMS
    data = json.loads(out.read_text())
    assert [r["item"] for r in data["rows"]] == ITEMS
    assert out.with_suffix(".md").read_text() == done.stdout
    for r in data["rows"]:
        if r["part"] == "ddp":  # one device (here: a CPU run without --ddp-cpu)
            assert r["status"] == "skipped", r
        else:
            assert r["status"] == "ok", r
    rows = {r["item"]: r for r in data["rows"]}
    for model in ("SwinIRmini", "EDSRmini"):
        eager = rows[f"{model} x2 train, bf16 eager"]["data"]
        compiled = rows[f"{model} x2 train, bf16 + torch.compile"]["data"]
        assert eager["compile_backend"] is None and compiled["compile_backend"] == "eager"
        for d in (eager, compiled):
            assert d["it_per_s"] > 0 and d["batch"] == 2 and d["patch"] == 16
            assert d["scale"] == 2 and d["timed_iterations"] == 2
    fmen, erfdn = rows["profile FMEN-S x4"]["data"], rows["profile E-RFDN x4"]["data"]
    ratio = rows["FMEN-S vs E-RFDN"]["data"]
    assert ratio["ratios"]["runtime_ms"] == pytest.approx(fmen["runtime_ms"] / erfdn["runtime_ms"])
    assert ratio["ratios"]["memory_mb"] == pytest.approx(fmen["memory_mb"] / erfdn["memory_mb"])
    # the paper's Table 4: FMEN-S 28.07 ms / 204.6 MB, E-RFDN 41.97 ms / 788.13 MB
    assert ratio["paper_ratios"]["runtime_ms"] == pytest.approx(1 - 0.331, abs=5e-4)
    assert ratio["paper_ratios"]["memory_mb"] == pytest.approx(1 - 0.740, abs=5e-4)
    up = rows["upscale to 3840x2160"]["data"]
    assert up["output"] == [4 * x for x in up["input"]] and len(up["wall_s"]) == 3


@pytest.mark.slow
def test_ddp_part_runs_two_gloo_ranks(tmp_path: Path) -> None:
    args = ["--device", "cpu", "--quick", "--ddp-cpu", "--part", "ddp", "--rows", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "ddp.failed").exists(), (tmp_path / "ddp.failed").read_text()
    (r,) = json.loads((tmp_path / "ddp.json").read_text())["rows"]
    assert r["status"] == "ok", r
    assert r["data"]["world_size"] == 2 and r["data"]["backend"] == "gloo"


def test_report_fills_failed_rows(tmp_path: Path) -> None:
    """A part that wrote some rows, then hung: its other items become FAILED with the reason;
    parts that left nothing get FAILED rows too; the table still has every item."""
    ok = gpu_check.row("profile", "profile FMEN-S x4", "ok", "1.00 ms", runtime_ms=1.0)
    (tmp_path / "profile.json").write_text(json.dumps({"meta": {"device": "X"}, "rows": [ok]}))
    (tmp_path / "profile.failed").write_text("timed out after 60 s\n")
    (tmp_path / "ddp.failed").write_text("exit code 1: boom\n")
    out = tmp_path / "gc.json"
    gpu_check.report(tmp_path, out)
    rows = json.loads(out.read_text())["rows"]
    assert [r["item"] for r in rows] == ITEMS
    got = {r["item"]: (r["status"], r["result"]) for r in rows}
    assert got["profile FMEN-S x4"] == ("ok", "1.00 ms")
    assert got["profile E-RFDN x4"] == ("FAILED", "timed out after 60 s")
    assert got["FMEN-S vs E-RFDN"] == ("FAILED", "timed out after 60 s")
    assert got["DDP, 2 ranks"] == ("FAILED", "exit code 1: boom")
    assert got["upscale to 3840x2160"] == ("FAILED", "no result")


def test_wrapper_times_out_a_part_and_still_prints_the_table(tmp_path: Path) -> None:
    subprocess.run(["bash", "-n", str(WRAPPER)], check=True)
    env = {
        **_env(),
        "PYTHON": sys.executable,
        "OUT": str(tmp_path),
        "GPU_CHECK_PARTS": "profile",
        "GPU_CHECK_TIMEOUT_S": "1",  # not even enough to import torch
    }
    done = subprocess.run(
        ["bash", str(WRAPPER), "--device", "cpu", "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = _table_rows(done.stdout)
    assert [r[1] for r in table] == ITEMS
    for part, _item, status, result, _ref in table:
        assert status == "FAILED"
        expected = "timed out after 1 s" if part == "profile" else "not run: not in GPU_CHECK_PARTS"
        assert result.startswith(expected), (part, result)
    assert json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert "== profile: exit 124" in (tmp_path / "gpu_check.log").read_text()
