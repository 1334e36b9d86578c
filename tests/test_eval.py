"""`slimsr eval` and the evaluation library: golden paper values and the bad-input paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import slimsr
from slimsr.data.folders import dataset_from_root, pair_folders
from slimsr.evaluate import bicubic_upscaler, evaluate_dataset, self_ensemble
from slimsr.imaging import write_image
from tests.conftest import official_weight, shared_file


def set5() -> Path:
    return shared_file("datasets", "Set5")


@pytest.mark.parametrize(
    ("filename", "scale", "paper_psnr", "paper_ssim"),
    [("bsrn_x2.pth", 2, 38.10, 0.9610), ("bsrn_x4.pth", 4, 32.35, 0.8966)],
)
def test_bsrn_reproduces_the_paper_on_set5(filename, scale, paper_psnr, paper_ssim) -> None:
    """BSRN paper Table 5 (Y, crop = scale) with the official weights and the shared LR files."""
    model = slimsr.load(official_weight(filename))
    result = evaluate_dataset(model, dataset_from_root(set5(), scale), scale)
    assert not [r.error for r in result.rows if r.error]
    assert abs(result.mean("psnr") - paper_psnr) <= 0.025
    assert abs(result.mean("ssim") - paper_ssim) <= 0.0005


@pytest.mark.parametrize("filename", ["e_rfdn_x4.pth", "fmen_s_x4_deploy.pt", "bsrn_s_x4.pth"])
def test_other_official_x4_weights_land_near_bsrn_s(filename: str) -> None:
    """No paper Y-PSNR exists for these on Set5; all are ~BSRN-S class (32.16 dB)."""
    model = slimsr.load(official_weight(filename))
    result = evaluate_dataset(model, dataset_from_root(set5(), 4), 4)
    assert abs(result.mean("psnr") - 32.16) <= 0.3


def test_bicubic_row_matches_the_published_baseline() -> None:
    res = evaluate_dataset(bicubic_upscaler(4), dataset_from_root(set5(), 4), 4)
    assert res.mean("psnr") == pytest.approx(28.43, abs=0.01)  # published 28.42


def test_self_ensemble_of_an_equivariant_upscaler_is_unchanged() -> None:
    nearest = lambda x: F.interpolate(x, scale_factor=2, mode="nearest")  # noqa: E731
    x = torch.rand(1, 3, 5, 7)
    torch.testing.assert_close(self_ensemble(nearest)(x), nearest(x))

    def shifted(x):
        return F.pad(x, (1, 0, 0, 0))[..., :-1].repeat_interleave(2, -1).repeat_interleave(2, -2)

    assert not torch.allclose(self_ensemble(shifted)(x), shifted(x))


def make_set(root: Path, sizes: dict[str, tuple[int, int]], scale: int) -> None:
    (root / "HR").mkdir(parents=True)
    (root / f"LR_bicubic/X{scale}").mkdir(parents=True)
    for name, (h, w) in sizes.items():
        write_image(torch.rand(3, h, w), root / "HR" / f"{name}.png")
        write_image(
            torch.rand(3, h // scale, w // scale), root / f"LR_bicubic/X{scale}/{name}x{scale}.png"
        )


def test_pairs_that_do_not_fit_are_reported_by_name(tmp_path) -> None:
    make_set(tmp_path / "toy", {"a": (24, 20), "b": (24, 20), "c": (24, 20)}, 2)
    lr = tmp_path / "toy/LR_bicubic/X2"
    write_image(torch.rand(3, 9, 9), lr / "bx2.png")  # wrong size
    (lr / "cx2.png").unlink()  # missing
    (tmp_path / "toy/HR/d.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # corrupt
    ds = dataset_from_root(tmp_path / "toy", 2)
    res = evaluate_dataset(lambda x: F.interpolate(x, scale_factor=2), ds, 2)
    errors = {r.image: r.error for r in res.rows}
    assert errors["a"] is None
    assert "needs 10x12" in errors["b"]
    assert "no LR image for c.png" in errors["c"]
    assert "d.png" in errors["d"]
    assert len(res.ok_rows) == 1


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slimsr", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_cli_writes_json_csv_images_and_exits_2_on_failed_pairs(tmp_path) -> None:
    make_set(tmp_path / "toy", {"a": (40, 36), "b": (40, 36)}, 2)
    weights = tmp_path / "w.pth"
    torch.save(
        slimsr.create_model("edsrmini", 2, num_feat=4, num_block=1).net.state_dict(), weights
    )
    out = run_cli(
        "eval",
        "-w",
        str(weights),
        "--data",
        str(tmp_path / "toy"),
        "-o",
        "res",
        "--save-images",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "res/results.json").read_text())
    assert report["scale"] == 2 and report["protocol"] == "basicsr"
    assert report["engine"] == "torch"
    assert [r["image"] for r in report["datasets"][0]["rows"]] == ["a", "b"]
    assert (tmp_path / "res/results.csv").read_text().startswith("dataset,image,psnr,ssim")
    assert (tmp_path / "res/images/toy/a.png").exists()
    assert (tmp_path / "res/images/toy/a_compare.png").exists()

    (tmp_path / "toy/LR_bicubic/X2/bx2.png").unlink()
    out = run_cli(
        "eval", "-w", str(weights), "--data", str(tmp_path / "toy"), "-o", "res2", cwd=tmp_path
    )
    assert out.returncode == 2
    assert (
        out.stderr.strip().splitlines()[-1]
        == "error: 1 image(s) could not be evaluated (see the note column)"
    )
    rows = json.loads((tmp_path / "res2/results.json").read_text())["datasets"][0]["rows"]
    assert "no LR image for b.png" in rows[1]["error"] and rows[0]["error"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "bsrn", "--scale", "2", "--hr", "{empty}"], "needs --weights"),
        (["-m", "bicubic", "--scale", "2", "--hr", "{empty}"], "no images in the HR folder"),
        (["-m", "bicubic", "--scale", "2", "--data", "{missing}"], "dataset folder not found"),
        (["-m", "bicubic", "--scale", "2", "--hr", "{empty}", "--protocol", "psnr"], "--protocol"),
        (["-m", "bicubic", "--scale", "2"], "no dataset"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, args, message) -> None:
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty", missing=tmp_path / "missing") for a in args]
    out = run_cli("eval", *args, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and message in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "eval_results").exists()


def test_pair_folders_accepts_plain_and_suffixed_names(tmp_path) -> None:
    for folder in ("hr", "lr"):
        (tmp_path / folder).mkdir()
    write_image(torch.rand(3, 8, 8), tmp_path / "hr/x.png")
    write_image(torch.rand(3, 8, 8), tmp_path / "hr/y.png")
    write_image(torch.rand(3, 4, 4), tmp_path / "lr/x.png")
    write_image(torch.rand(3, 4, 4), tmp_path / "lr/yx2.png")
    ds = pair_folders(tmp_path / "hr", tmp_path / "lr", 2)
    assert [(p.name, p.lr.name) for p in ds.pairs] == [("x", "x.png"), ("y", "yx2.png")]
