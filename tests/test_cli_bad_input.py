"""Every bad input a user can type: one line on stderr, exit 2, nothing written, inputs untouched.

The table runs in this process through `slimsr.cli.main` (stderr captured, so not a
terminal, as in a log or a pipe); a few rows also run as real `python -m slimsr` processes
to cover the interpreter's own stderr path. Each row's needle is what the one line must say.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import slimsr
from slimsr.imaging import write_image
from tests.conftest import run_here

SUMMARY = "image(s) failed (see above)"
"""The only second line allowed: the summary after per-image errors of a several-image run
(one image asked for: its error is the only line)."""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder as a user has it: images, odd weights files, a file where a folder belongs."""
    torch.manual_seed(0)
    write_image(torch.rand(3, 12, 10), tmp_path / "a.png")
    (tmp_path / "dup").mkdir()
    write_image(torch.rand(3, 8, 8), tmp_path / "dup" / "a.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "hr").mkdir()
    write_image(torch.rand(3, 16, 16), tmp_path / "hr" / "x.png")
    (tmp_path / "rand.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    with open(tmp_path / "plain.pth", "wb") as f:  # pickle.dump, protocol 4: torch warns
        pickle.dump({"w": np.zeros(3, np.float32)}, f)
    torch.save(
        {"params": slimsr.build_network("edsrmini", 2).state_dict(), "args": argparse.Namespace()},
        tmp_path / "objects.pth",
    )
    (tmp_path / "file.txt").write_text("not a folder\n")
    earlier = tmp_path / "eval_results" / "bicubic_x2"
    earlier.mkdir(parents=True)
    (earlier / "results.json").write_text('{"earlier": true}\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root` with a hash of its content."""
    out = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        out[key] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_one_line_error(code: int, err: str, needle: str, lines: int = 1) -> None:
    assert code == 2, err
    assert "Traceback" not in err and "Warning" not in err, err
    got = err.splitlines()
    assert len(got) == lines and all(line.startswith("error: ") for line in got), err
    assert err.endswith("\n") and not err.startswith("error: \n"), err
    assert needle in got[0], err
    if lines == 2:
        assert SUMMARY in got[1], err


UP = ["upscale", "a.png", "-o", "out"]

CASES: list[tuple[str, list[str], str, int]] = [
    # (id, argv, needle in the one line, stderr lines)
    ("outscale-nan", [*UP, "--outscale", "nan"], "--outscale must be a number in (0, 16]", 1),
    ("outscale-inf", [*UP, "--outscale", "inf"], "--outscale must be", 1),
    ("outscale-huge", [*UP, "--outscale", "100000"], "not 100000", 1),
    ("outscale-zero", [*UP, "--outscale", "0"], "--outscale must be", 1),
    ("outscale-text", [*UP, "--outscale", "big"], "Invalid value for '--outscale'", 1),
    ("tile-8", [*UP, "--tile", "8"], "--tile 8 is too small", 1),
    ("tile-negative", [*UP, "--tile", "-5"], "Invalid value for '--tile'", 1),
    ("tile-text", [*UP, "--tile", "abc"], "Invalid value for '--tile'", 1),
    ("tile-vs-overlap", [*UP, "--tile", "40", "--tile-overlap", "24"], "at least 48", 1),
    ("overlap-negative", [*UP, "--tile-overlap", "-1"], "Invalid value for '--tile-overlap'", 1),
    ("quality-0", [*UP, "--quality", "0"], "Invalid value for '--quality'", 1),
    ("quality-500", [*UP, "--quality", "500"], "Invalid value for '--quality'", 1),
    ("max-memory-0", [*UP, "--max-memory", "0"], "--max-memory must be", 1),
    ("ext-gif", [*UP, "--ext", "gif"], "--ext must be one of", 1),
    ("suffix-escapes", [*UP, "--suffix", "../../x"], "--suffix '../../x'", 1),
    ("suffix-folder", [*UP, "--suffix", "sub/x"], "no '/'", 1),
    ("suffix-backslash", [*UP, "--suffix", "..\\x"], "--suffix", 1),
    ("out-is-file", ["upscale", "a.png", "-o", "file.txt"], "exists and is not a folder", 1),
    ("out-under-file", ["upscale", "a.png", "-o", "file.txt/sub"], "file.txt is a file", 1),
    ("same-output-name", [*UP, "a.png", "dup/a.png"], "would both be written to", 1),
    ("output-is-input", ["upscale", "a.png", "-o", ".", "--suffix", ""], "overwrite an input", 1),
    ("unknown-option", [*UP, "--tilee", "3"], "No such option: --tilee", 1),
    ("missing-input", ["upscale"], "Missing argument 'INPUT'", 1),
    ("no-command", ["upscale-all"], "No such command", 1),
    ("random-bytes-pth", [*UP, "-w", "rand.pth"], "rand.pth: not a readable checkpoint", 1),
    ("plain-pickle", [*UP, "-w", "plain.pth"], "plain.pth: a plain Python pickle", 1),
    ("python-objects", [*UP, "-w", "objects.pth"], "(argparse.Namespace); refusing", 1),
    ("info-random-bytes", ["info", "rand.pth"], "not a readable checkpoint", 1),
    ("info-plain-pickle", ["info", "plain.pth"], "plain Python pickle", 1),
    ("info-missing", ["info", "nope.onnx"], "not found", 1),
    ("corrupt-image", ["upscale", "bad.png", "-o", "out"], "bad.png", 1),
    (
        "eval-earlier-results",
        ["eval", "-m", "bicubic", "-s", "2", "--hr", "hr"],
        "eval_results/bicubic_x2/results.json exists from an earlier run",
        1,
    ),
    (
        "eval-out-is-file",
        ["eval", "-m", "bicubic", "-s", "2", "--hr", "hr", "-o", "file.txt"],
        "not a folder",
        1,
    ),
    (
        "eval-report-no-out",
        ["eval", "-m", "bicubic", "-s", "2", "--hr", "hr", "--report"],
        "--report needs -o DIR",
        1,
    ),
    ("profile-device", ["profile", "-m", "edsrmini", "--device", "tpu0"], "unknown device", 1),
    (
        "export-out-folder",
        ["export", "onnx", "-w", "objects.pth", "-o", "hr"],
        "must end in .onnx",
        1,
    ),
]


@pytest.mark.parametrize(
    ("argv", "needle", "lines"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_one_line_exit_2_nothing_written(workdir, capsys, argv, needle, lines) -> None:
    before = snapshot(workdir)
    code, _out, err = run_here(argv, capsys)
    assert_one_line_error(code, err, needle, lines)
    assert snapshot(workdir) == before  # no output, no folder, inputs byte-identical


SUBPROCESS_CASES = ["tile-text", "outscale-nan", "plain-pickle", "out-is-file", "corrupt-image"]


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_input_in_a_real_process_with_piped_stderr(workdir, case) -> None:
    _id, argv, needle, lines = next(c for c in CASES if c[0] == case)
    before = snapshot(workdir)
    env = {**os.environ, "COLUMNS": "40"}  # narrow: nothing may be wrapped to fit
    out = subprocess.run(
        [sys.executable, "-m", "slimsr", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert_one_line_error(out.returncode, out.stderr, needle, lines)
    assert snapshot(workdir) == before


def test_a_bad_image_among_good_ones_fails_alone(workdir, capsys) -> None:
    """Several images: each bad one gets its line, the good ones are written, then one
    summary line and exit 2 (a batch is not lost to one corrupt file)."""
    code, out, err = run_here(["upscale", "a.png", "bad.png", "-o", "out"], capsys)
    assert_one_line_error(code, err, "bad.png", lines=2)
    assert "1 of 2 image(s) failed" in err.splitlines()[1]
    assert "upscaled 1 image(s)" in out
    assert sorted(p.name for p in (workdir / "out").iterdir()) == ["a_x4.png"]  # the default x4


def test_piped_success_prints_no_progress_lines(workdir) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "slimsr", "upscale", "a.png", "-o", "out"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout.splitlines() == ["upscaled 1 image(s) into out"]
    assert (workdir / "out" / "a_x4.png").is_file()


def test_tiles_bar_completes_on_an_untiled_image(workdir) -> None:
    """On a terminal the tiles bar of an image run in one pass ends at 1/1, not 0/1."""
    pty = pytest.importorskip("pty")
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm"}
    proc = subprocess.run(
        [sys.executable, "-m", "slimsr", "upscale", "a.png", "-o", "out", "--tile", "0"],
        stdout=subprocess.PIPE,
        stderr=follower,
        timeout=120,
        env=env,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    text = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, text
    final = [line for line in text.replace("\r", "\n").splitlines() if "tiles of a.png" in line]
    assert final and "1/1" in final[-1], text
