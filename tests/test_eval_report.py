"""`slimsr eval --report`: the page holds every model and image, its numbers are results.json's,
and every crop it shows is a real PNG of the same window in each column."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import slimsr
from slimsr.imaging import imresize, write_image
from tests.conftest import run_here

pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_image(h: int, w: int, seed: int) -> torch.Tensor:
    """A picture with structure (so bicubic is far from noise) plus one detailed patch."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 8, w // 8, generator=g)
    img = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[0]
    img[:, 4:20, 6:22] = torch.rand(3, 16, 16, generator=g)
    return img


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """A dataset root with HR and MATLAB-bicubic LR x2, and two small models' weights."""
    root = tmp_path / "toy"
    (root / "HR").mkdir(parents=True)
    (root / "LR_bicubic/X2").mkdir(parents=True)
    for i, name in enumerate(("bird", "zebra")):
        hr = smooth_image(48, 40, i)
        write_image(hr, root / "HR" / f"{name}.png")
        write_image(imresize(hr, 0.5, mode="uint8"), root / "LR_bicubic/X2" / f"{name}x2.png")
    for seed, name in ((1, "a.pth"), (2, "b.pth")):
        torch.manual_seed(seed)
        net = slimsr.create_model("edsrmini", 2, num_feat=4, num_block=1).net
        torch.save(net.state_dict(), tmp_path / name)
    return tmp_path


class ReportParser(HTMLParser):
    """Cells carrying data-metric, keyed by (table, dataset or image, model), and all <img src>."""

    def __init__(self) -> None:
        super().__init__()
        self.table: str | None = None
        self.row: str | None = None
        self.model: str | None = None
        self.metric: str | None = None
        self.cells: dict[tuple[str, str, str, str], str] = {}
        self.images: list[str] = []
        self.image_rows: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.table = a.get("id") or a.get("data-dataset")
        elif tag == "tr":
            self.row = a.get("data-dataset") or a.get("data-image")
            if "data-image" in a:
                self.image_rows.append(f"{self.table}/{a['data-image']}")
        elif tag == "td":
            self.model = a.get("data-model")
            self.metric = a.get("data-metric")
        elif tag == "span":
            self.metric = a.get("data-metric")
        elif tag == "img":
            assert a.get("src")
            self.images.append(str(a["src"]))

    def handle_data(self, data: str) -> None:
        if self.metric and self.table and self.row and self.model:
            self.cells[(self.table, self.row, self.model, self.metric)] = data.strip()
            self.metric = None


def test_report_compares_two_models_with_crops(toy: Path, capsys) -> None:
    out = toy / "res"
    args = ["eval", "-w", str(toy / "a.pth"), "-w", str(toy / "b.pth"), "--data", str(toy / "toy")]
    code, stdout, err = run_here([*args, "-o", str(out), "--report", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "report.html" in stdout
    summary = json.loads((out / "results.json").read_text())
    labels = [m["model"] for m in summary["models"]]
    assert labels == ["edsrmini (a.pth)", "edsrmini (b.pth)"]
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("model,dataset,image,psnr") and len(csv_lines) == 5

    page = ReportParser()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    assert sorted(page.image_rows) == ["toy/bird", "toy/zebra"]
    for run in summary["models"]:
        (ds,) = run["datasets"]
        mean = ds["mean"]
        label = run["model"]
        assert page.cells[("summary", "toy", label, "psnr")] == f"{mean['psnr']:.2f}"
        assert page.cells[("summary", "toy", label, "ssim")] == f"{mean['ssim']:.4f}"
        assert page.cells[("summary", "toy", "bicubic", "psnr")] == f"{mean['bicubic_psnr']:.2f}"
        for row in ds["rows"]:
            assert row["error"] is None
            assert page.cells[("toy", row["image"], label, "psnr")] == f"{row['psnr']:.2f}"
            assert page.cells[("toy", row["image"], label, "ssim")] == f"{row['ssim']:.4f}"
            bic = page.cells[("toy", row["image"], "bicubic", "psnr")]
            assert bic == f"{row['bicubic_psnr']:.2f}"
    # random-weight models score far below bicubic on these smooth pictures: numbers differ
    assert summary["models"][0]["datasets"][0]["mean"]["psnr"] != pytest.approx(
        summary["models"][0]["datasets"][0]["mean"]["bicubic_psnr"], abs=0.5
    )

    # per image: bicubic, two models, HR; each a real, non-constant PNG inside the folder
    assert len(page.images) == 2 * 4 and len(set(page.images)) == 8
    sizes = set()
    arrays = {}
    for src in page.images:
        assert not src.startswith(("/", "http", "data:")) and ".." not in src
        path = out / src
        assert path.resolve().is_relative_to(out.resolve())
        with Image.open(path) as im:
            assert im.format == "PNG"
            pixels = np.asarray(im.convert("RGB"))
        assert pixels.std() > 1.0, src
        sizes.add(pixels.shape)
        arrays[src] = pixels
    assert len(sizes) == 1  # one window, one enlargement: the columns line up
    bird = sorted(s for s in arrays if "bird" in s)
    hr = next(s for s in bird if s.endswith("__hr.png"))
    bicubic = next(s for s in bird if s.endswith("__bicubic.png"))
    # the same window: bicubic of a smooth picture is close to HR there
    diff = np.abs(arrays[hr].astype(float) - arrays[bicubic].astype(float)).mean()
    assert diff < 20, diff


def test_report_refusals_are_one_line(toy: Path, capsys) -> None:
    data = ["--data", str(toy / "toy")]
    a, b, x = str(toy / "a.pth"), str(toy / "b.pth"), str(toy / "x")
    cases = [
        (["eval", "-w", a, *data, "--report"], "--report needs -o DIR"),
        (["eval", "-w", a, "-w", b, *data], "several models needs -o DIR"),
        (["eval", "-m", "edsrmini", "-w", a, "-w", b, *data, "-o", x], "1 -m and 2 -w"),
        (["eval", "-m", "bicubic", "-m", "edsrmini", "-w", a, *data, "-o", x], "-m bicubic cannot"),
    ]
    for argv, needle in cases:
        code, _out, err = run_here(argv, capsys)
        assert code == 2, err
        assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err
    assert not (toy / "x").exists()


def test_single_model_results_are_unchanged_by_the_report(toy: Path, capsys) -> None:
    """One model: results.json keeps its old shape; --report only adds the page."""
    base = ["eval", "-w", str(toy / "a.pth"), "--data", str(toy / "toy"), "--device", "cpu"]
    assert run_here([*base, "-o", str(toy / "plain")], capsys)[0] == 0
    assert run_here([*base, "-o", str(toy / "rep"), "--report"], capsys)[0] == 0
    plain = json.loads((toy / "plain/results.json").read_text())
    assert list(plain) == [
        "model",
        "scale",
        "protocol",
        "self_ensemble",
        "dtype",
        "engine",
        "datasets",
    ]
    assert (toy / "rep/results.json").read_text() == (toy / "plain/results.json").read_text()
    assert (toy / "rep/results.csv").read_text() == (toy / "plain/results.csv").read_text()
    assert (toy / "rep/report.html").is_file() and not (toy / "plain/report.html").exists()
    code, _out, err = run_here([*base, "-o", str(toy / "rep"), "--report"], capsys)
    assert code == 2 and "exists from an earlier run" in err
