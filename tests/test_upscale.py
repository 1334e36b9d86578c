"""`slimsr upscale` as users run it: files, folders, globs, odd images, and every way to fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

import slimsr
from slimsr.imaging import read_image, write_image
from slimsr.upscale import UpscaleOptions, upscale_file, upscale_image
from slimsr.weights import default_model


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A small local model saved the way users have weights (x2, [0,255] network)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "abpn_x2.pth"
    torch.save(
        {"params": slimsr.create_model("abpn", 2, num_feat=8, num_mid=1).net.state_dict()}, path
    )
    return path


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slimsr", "upscale", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_file_folder_and_glob_inputs(tmp_path, weights) -> None:
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        write_image(torch.rand(3, 20, 16), tmp_path / "in" / f"{name}.png")
    write_image(torch.rand(3, 10, 12), tmp_path / "c.jpg")
    out = run(
        str(tmp_path / "in"), str(tmp_path / "c.jpg"), "-w", str(weights), "-o", "out", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a_x2.png",
        "b_x2.png",
        "c_x2.jpg",
    ]
    assert read_image(tmp_path / "out/a_x2.png").tensor.shape == (3, 40, 32)
    out = run(
        str(tmp_path / "in" / "*.png"),
        "-w",
        str(weights),
        "-o",
        "g",
        "--suffix",
        "",
        "--ext",
        "webp",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["a.webp", "b.webp"]


def test_rgba_gray_16bit_and_exif_are_kept(tmp_path, weights) -> None:
    model = slimsr.load(weights)
    rgba = torch.rand(4, 12, 10)
    write_image(rgba, tmp_path / "rgba.png")
    upscale_file(model, tmp_path / "rgba.png", tmp_path / "o_rgba.png")
    got = read_image(tmp_path / "o_rgba.png")
    assert got.had_alpha and got.tensor.shape == (4, 24, 20)
    write_image(torch.rand(1, 12, 10), tmp_path / "gray.png", bit_depth=16)
    upscale_file(model, tmp_path / "gray.png", tmp_path / "o_gray.png")
    got = read_image(tmp_path / "o_gray.png")
    assert got.was_gray and got.bit_depth == 16 and got.tensor.shape == (1, 24, 20)
    arr = (np.random.default_rng(0).random((12, 10, 3)) * 255).astype(np.uint8)
    im = PILImage.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    im.save(tmp_path / "rot.jpg", exif=exif)
    upscale_file(model, tmp_path / "rot.jpg", tmp_path / "o_rot.png")
    assert read_image(tmp_path / "o_rot.png").tensor.shape == (3, 20, 24)  # upright, then x2


def test_existing_outputs_are_skipped_and_inputs_never_overwritten(tmp_path, weights) -> None:
    write_image(torch.rand(3, 8, 8), tmp_path / "a.png")
    before = (tmp_path / "a.png").read_bytes()
    out = run("a.png", "-w", str(weights), "-o", ".", "--suffix", "", cwd=tmp_path)
    assert out.returncode == 2 and "would overwrite an input" in out.stderr
    assert (tmp_path / "a.png").read_bytes() == before
    out = run("a.png", "-w", str(weights), "-o", ".", cwd=tmp_path)  # OUT = the input folder
    assert out.returncode == 0 and (tmp_path / "a_x2.png").exists()
    stamp = (tmp_path / "a_x2.png").stat().st_mtime_ns
    out = run("a.png", "-w", str(weights), "-o", ".", cwd=tmp_path)
    assert out.returncode == 0 and "skipped" in out.stdout
    assert (tmp_path / "a_x2.png").stat().st_mtime_ns == stamp
    assert (tmp_path / "a.png").read_bytes() == before


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["missing.png"], "no such file or folder"),
        ("empty_dir", ["empty"], "no images in this folder"),
        ("corrupt", ["bad.png"], "bad.png"),
        ("truncated", ["trunc.png"], "trunc.png"),
        ("empty_file", ["zero.png"], "empty file"),
        ("good", ["good.png", "-m", "nosuchnet", "-w", "{weights}"], "unknown model"),
        ("good", ["good.png", "-w", "{weights}", "-s", "4"], "x2 model, not x4"),
        ("good", ["good.png", "-w", "{weights}", "--fp16", "--device", "cpu"], "--fp16"),
        ("good", ["*.nothing"], "no images match"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path, weights, setup, args, message
) -> None:
    if setup == "empty_dir":
        (tmp_path / "empty").mkdir()
    elif setup == "corrupt":
        (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    elif setup == "truncated":
        write_image(torch.rand(3, 64, 64), tmp_path / "full.png")
        (tmp_path / "trunc.png").write_bytes((tmp_path / "full.png").read_bytes()[:300])
    elif setup == "empty_file":
        (tmp_path / "zero.png").write_bytes(b"")
    elif setup == "good":
        write_image(torch.rand(3, 8, 8), tmp_path / "good.png")
    snapshot = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    args = [a.format(weights=weights) for a in args]
    out = run(*args, "-o", "out", *([] if "-w" in args else ["-w", str(weights)]), cwd=tmp_path)
    assert out.returncode == 2, out.stdout
    last = out.stderr.strip().splitlines()[-1]
    assert "Traceback" not in out.stderr and last.startswith("error: ")
    assert message in out.stderr
    out_dir = tmp_path / "out"
    assert not out_dir.exists() or not any(out_dir.iterdir())
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == snapshot


def test_outscale_and_pil_api(tmp_path, weights) -> None:
    model = slimsr.load(weights)
    write_image(torch.rand(3, 10, 10), tmp_path / "a.png")
    opts = UpscaleOptions(outscale=3.5)
    upscale_file(model, tmp_path / "a.png", tmp_path / "b.png", opts)
    assert read_image(tmp_path / "b.png").tensor.shape == (3, 35, 35)
    im = upscale_image(model, PILImage.new("RGB", (9, 7), (120, 30, 200)), tile=4)
    assert im.size == (18, 14)


def test_torchrun_splits_inputs_across_two_ranks(tmp_path, weights) -> None:
    (tmp_path / "in").mkdir()
    for i in range(5):
        write_image(torch.rand(3, 8, 8), tmp_path / "in" / f"{i}.png")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            "29533",
            "-m",
            "slimsr",
            "upscale",
            "in",
            "-w",
            str(weights),
            "-o",
            "out",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i}_x2.png" for i in range(5)]
    assert "(rank 0/2)" in out.stdout and "(rank 1/2)" in out.stdout


def test_library_upscale_image_equals_the_command(tmp_path) -> None:
    """`slimsr.upscale_image(model, path)` is `slimsr upscale`'s pipeline (fast path, border,
    tiles, quantisation): the bundled model gives the same bytes both ways, for a file and for
    the same picture handed over as a PIL image. (The API's engine is torch unless asked;
    the command's auto choice is tests/test_engines.py's.)"""
    rng = np.random.default_rng(3)
    PILImage.fromarray(rng.integers(0, 256, (13, 11, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    res = run("a.png", "-o", "out", "-s", "2", "--engine", "torch", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    cli = np.asarray(PILImage.open(tmp_path / "out" / "a_x2.png"))
    model = default_model(2)
    grads = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    from_path = np.asarray(slimsr.upscale_image(model, tmp_path / "a.png"))
    assert from_path.shape == (26, 22, 3) and np.array_equal(from_path, cli)
    from_pil = np.asarray(slimsr.upscale_image(model, PILImage.open(tmp_path / "a.png")))
    assert np.array_equal(from_pil, cli)
    # the caller's model is untouched (the inference form is built on a copy)
    assert [p.requires_grad for p in model.parameters()] == grads
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.is_contiguous() for p in model.parameters())
