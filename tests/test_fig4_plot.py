"""benchmarks/plot_fig4.py: the compression paper's Fig. 4 (x2 PSNR, mean of Set5 and Set14,
against params and FLOPs) is drawn from Table I (published) and slimsr's own measurements
(shipped metrics.json, `slimsr eval` results.json), each point marked with its source."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from slimsr.weights import BUNDLED_DIR

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SHIPPED = {
    "edsrmini": BUNDLED_DIR / "compressed" / "edsrmini_x2.metrics.json",
    "swinirmini": BUNDLED_DIR / "compressed" / "swinirmini_x2.metrics.json",
    "bsrnmini": BUNDLED_DIR / "compressed" / "bsrnmini_x2.metrics.json",
}


@pytest.fixture(scope="module")
def fig4() -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCH))  # the script imports its sibling bench_models
        yield importlib.import_module("plot_fig4")


def _eval_entry(name: str, sets: dict[str, float]) -> dict:
    """One model's part of a `slimsr eval` results.json (only the fields the plot reads)."""
    return {
        "model": f"{name} ({name}_x2.pth)",
        "scale": 2,
        "protocol": "basicsr",
        "datasets": [
            {"dataset": d, "mean": {"psnr": v, "bicubic_psnr": v - 4}} for d, v in sets.items()
        ],
    }


def _write_evals(root: Path) -> Path:
    """A one-model file (bsrn), a `-w A -w B` file (rlfn_s with both sets, smfanet with Set5
    only) and an x4 file: only bsrn and rlfn_s are usable x2 Set5+Set14 points."""
    files = {
        "bsrn_x2": _eval_entry("bsrn", {"Set5": 38.0, "Set14": 33.7}),
        "pair_x2": {
            "scale": 2,
            "protocol": "basicsr",
            "models": [
                _eval_entry("rlfn_s", {"Set5": 38.04, "Set14": 33.62}),
                _eval_entry("smfanet", {"Set5": 38.04}),
            ],
        },
        "bsrn_x4": {**_eval_entry("bsrn", {"Set5": 32.3, "Set14": 28.7}), "scale": 4},
    }
    for name, rep in files.items():
        (root / name).mkdir(parents=True)
        (root / name / "results.json").write_text(json.dumps(rep))
    return root


def test_plot_marks_published_and_measured(fig4: ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib (slimsr[bench])")
    import numpy as np
    from PIL import Image

    out = tmp_path / "fig4.png"
    fig4.main(["--evals", str(_write_evals(tmp_path / "evals")), "-o", str(out)])

    data = json.loads(out.with_suffix(".json").read_text())
    assert data["flops_convention"] == "macs" and data["output_hw"] == [720, 1280]
    published = {p["model"]: p for p in data["points"] if p["kind"] == "published"}
    measured = {p["model"]: p for p in data["points"] if p["kind"] == "measured"}
    assert len(published) == 14
    assert all("Table I" in p["source"] for p in published.values())
    assert all(p["source"] == "measured by slimsr" for p in measured.values())
    mini = published["EDSRmini (ours)"]
    assert (mini["params_m_as_printed"], mini["flops"]) == (0.049, pytest.approx(11.7e9))
    assert mini["psnr"] == pytest.approx((37.67 + 33.21) / 2)
    assert published["RT4KSR-XL"]["flops"] is None

    # shipped files and the evals; smfanet (Set5 only) and the x4 file are left out
    assert set(measured) == {"edsrmini", "swinirmini", "bsrnmini", "bsrn", "rlfn_s"}
    for name, path in SHIPPED.items():
        results = json.loads(path.read_text())["results"]
        want = (results["Set5"]["psnr"] + results["Set14"]["psnr"]) / 2
        assert measured[name]["psnr"] == pytest.approx(want)
    # the bundled x2 is the shipped compressed EDSRmini (same numbers): one point, both files
    bundled = json.loads((BUNDLED_DIR / "default_x2.metrics.json").read_text())["results"]
    compressed = json.loads(SHIPPED["edsrmini"].read_text())["results"]
    same = all(bundled[d]["psnr"] == compressed[d]["psnr"] for d in ("Set5", "Set14"))
    assert sum(p["kind"] == "measured" for p in data["points"]) == (5 if same else 6)
    if same:
        assert "default_x2" in measured["edsrmini"]["label"]
        assert len(measured["edsrmini"]["files"]) == 2
    # counts are slimsr's (docs/efficiency.md, Table I comparison): 49,603 params, 11.65 G MACs
    assert measured["edsrmini"]["params"] == 49_603
    assert measured["edsrmini"]["flops"] / 1e9 == pytest.approx(11.65, abs=0.01)
    assert measured["bsrn"]["params"] == 331_628
    assert measured["bsrnmini"]["params"] == 292_776  # bsrn with its recorded num_feat 60
    assert measured["rlfn_s"]["psnr"] == pytest.approx((38.04 + 33.62) / 2)

    with Image.open(out) as im:
        assert im.format == "PNG" and im.width >= 1000 and im.height >= 400
        rgb = im.convert("RGB")
    px = np.asarray(rgb).reshape(-1, 3).astype(int)
    drawn = float((px.min(axis=1) < 240).mean())
    assert drawn > 0.02, f"only {drawn:.1%} of the image is drawn"
    assert len(np.unique(px, axis=0)) > 100
    r, g, b = px.T
    # filled red squares (measured) and blue hollow circles (published) are both drawn
    assert ((r > 180) & (g < 80) & (b < 80)).sum() > 100
    assert ((b > 150) & (r < 80) & (g > 90) & (g < 150)).sum() > 100


def test_params_that_do_not_match_the_registry_are_refused(
    fig4: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rep = json.loads(SHIPPED["edsrmini"].read_text())
    bad = tmp_path / "wide_x2.metrics.json"
    bad.write_text(json.dumps({**rep, "params": 123}))
    out = tmp_path / "fig4.png"
    with pytest.raises(SystemExit) as e:
        fig4.main(["--no-shipped", "--metrics", str(bad), "-o", str(out)])
    assert e.value.code == 2
    assert "123 params" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        fig4.main(["--no-shipped", "-o", str(out)])  # nothing measured: refused
    assert e.value.code == 2
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_a_compact_model_of_its_originals_family_is_counted_with_its_kwargs(
    fig4: ModuleType, tmp_path: Path
) -> None:
    """BSRNmini ships as `bsrn` with num_feat 60: its point is named by its file and counted
    with the kwargs its metrics.json records, not as the default BSRN (331,628 params)."""
    rep = json.loads(SHIPPED["edsrmini"].read_text())
    metrics = tmp_path / "bsrnmini_x2.metrics.json"
    bsrnmini = {**rep, "model": "bsrn", "params": 292_776}
    metrics.write_text(json.dumps({**bsrnmini, "kwargs": {"num_feat": 60}}))
    (point,) = fig4.measured_points([metrics], [], "macs")
    assert point["model"] == "bsrnmini" and point["arch"] == "bsrn"
    assert point["params"] == 292_776
    assert point["flops"] / 1e9 == pytest.approx(63.57, abs=0.01)  # docs/compression.md
    metrics.write_text(json.dumps(bsrnmini))  # without its kwargs it is the default BSRN
    with pytest.raises(ValueError, match="292,776 params"):
        fig4.measured_points([metrics], [], "macs")
