"""scripts/ship_abpn.py refuses bad runs with one line, before the package's ABPN files change."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

import slimsr

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "ship_abpn.py"
ABPN = REPO_ROOT / "src" / "slimsr" / "weights" / "abpn"

pytestmark = pytest.mark.usefixtures("one_thread")


def _hashes() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(ABPN.iterdir())}


def _ship(float_run: Path, qat_run: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(float_run), str(qat_run), "--produced-by", "t"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )


def test_unfinished_or_non_qat_runs_are_refused_and_nothing_is_shipped(tmp_path: Path) -> None:
    """The float run's weights used to be copied before the QAT run was checked."""
    before = _hashes()
    run = tmp_path / "float_run"
    (run / "weights").mkdir(parents=True)
    slimsr.save(slimsr.create_model("abpn", 3), run / "weights" / "final.safetensors")
    (run / "weights" / "final.json").write_text("{}")
    (run / "config.yaml").write_text("name: float_run\n")
    for qat_run, message in (
        (tmp_path / "missing", "final.safetensors does not exist: the run has not finished"),
        (run, "carries no INT8 ranges: was it trained with quant.qat?"),
    ):
        res = _ship(run, qat_run)
        assert res.returncode == 2, res.stderr
        assert res.stderr.count("\n") == 1 and message in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
        assert _hashes() == before
