"""Shared test fixtures. Tests that need `../shared` skip with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED = Path(
    os.environ.get("SLIMSR_SHARED", Path(__file__).resolve().parents[1].parent / "shared")
)
OFFICIAL = SHARED / "weights" / "official"
DATASETS = SHARED / "datasets"


def shared_file(*parts: str) -> Path:
    """A file under ../shared, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the project's shared/ folder is not beside this checkout)")
    return path


def official_weight(filename: str) -> Path:
    return shared_file("weights", "official", filename)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def _engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slimsr_cache")


@pytest.fixture(autouse=True)
def _private_engine_cache(_engine_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`slimsr upscale` caches its measured engine choice (`slimsr.engines`): tests, and the
    commands they start, keep it in a temporary folder, never in the user's ~/.cache."""
    monkeypatch.setenv("SLIMSR_CACHE_DIR", str(_engine_cache))


@pytest.fixture
def one_thread():
    """One intra-op thread for a test module (`pytestmark = pytest.mark.usefixtures(...)`):
    tiny tensors gain nothing from threads, a busy CPU stalls thread barriers, and bit-exact
    comparisons stay free of the BLAS library's thread partitioning."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_here(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`slimsr ARGS` in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    from slimsr.cli import main

    try:
        main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    else:  # pragma: no cover (main always exits)
        code = 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err
