"""TFLite export: the Keras rebuild (float file == PyTorch), INT8 of the official ABPN within 0.15 dB
on Set5 with an all-int8 graph and uint8 IO, the official INT8 files through `slimsr eval`,
the runner, and one-line errors (unsupported op, wrong IO kind, missing extras, no ranges)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import slimsr
from slimsr.data.folders import pair_folders
from slimsr.export import tflite as qtflite
from slimsr.export.calibration import calibration_crops
from slimsr.export.common import TFLiteError
from slimsr.export.runners import TFLiteUpscaler, is_runtime_path, load_runner
from slimsr.export.verify import smooth_test_images
from slimsr.imaging import read_image, write_image
from slimsr.metrics import evaluate_pair
from tests.conftest import official_weight, shared_file
from tests.test_export_onnx import cli_in_process

OFFICIAL_SET5_RGB = {"abpn_x3_int8_ptq.tflite": 31.404, "abpn_x3_int8_qat.tflite": 31.468}
"""Set5 x3 mean RGB PSNR of the official files (INT8_ROUTES.md, measured with LiteRT)."""


def needs_export() -> None:
    pytest.importorskip("tensorflow", reason="needs the tflite-export extra (tensorflow-cpu)")
    pytest.importorskip("ai_edge_litert", reason="needs the tflite extra (ai-edge-litert)")


def needs_runtime() -> None:
    pytest.importorskip("ai_edge_litert", reason="needs the tflite extra (ai-edge-litert)")


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`slimsr ARGS` in this process: exit code, stdout, stderr."""
    return cli_in_process(monkeypatch, capsys, *args)


def set5_psnr(runners: list) -> np.ndarray:
    hr_dir = shared_file("datasets", "Set5", "HR")
    dataset = pair_folders(hr_dir, hr_dir.parent / "LR_bicubic" / "X3", 3)
    psnr = np.zeros((len(dataset.pairs), len(runners)))
    for i, pair in enumerate(dataset.pairs):
        hr, lr = read_image(pair.hr).rgb, read_image(pair.lr).rgb[None]
        hr = hr[:, : lr.shape[2] * 3, : lr.shape[3] * 3]
        with torch.no_grad():
            for j, run in enumerate(runners):
                psnr[i, j] = evaluate_pair(run(lr), hr, 3, protocol="rgb")["psnr"]
    return psnr


def test_official_abpn_int8_tflite_is_all_int8_and_within_015_db(tmp_path) -> None:
    needs_export()
    model = slimsr.load(official_weight("abpn_x3_float_keras.npz"))
    crops = calibration_crops(shared_file("datasets", "T91", "HR"), 64, 48, downscale=3)

    fp = qtflite.export_tflite(model, tmp_path / "f.tflite")
    assert all(c.ok and c.max_abs_error <= 1e-4 for c in fp.checks), fp.checks
    assert fp.summary.tensor_dtypes.keys() == {"float32"}

    q = qtflite.export_tflite(model, tmp_path / "q.tflite", int8=True, calibration=crops)
    assert q.ranges == "calibrated" and all(c.ok for c in q.checks), q.checks
    s = qtflite.summarize(tmp_path / "q.tflite")
    # the official INT8 graph, op for op, with uint8 pixels in and out and dynamic H x W
    assert s.ops == [
        "QUANTIZE", "CONCATENATION", *["CONV_2D"] * 7, "ADD", "DEPTH_TO_SPACE", "MINIMUM",
        "RELU", "QUANTIZE",
    ]  # fmt: skip
    assert (s.input_dtype, s.output_dtype) == ("uint8", "uint8")
    assert s.input_quant == (1.0, 0) and s.output_quant == (1.0, 0)
    assert s.signature == [1, -1, -1, 3] and s.full_integer
    assert s.tensor_dtypes == {"uint8": 2, "int8": 21, "int32": 7}  # 7 int32 biases
    from ai_edge_litert.interpreter import Interpreter

    kernels = [
        t
        for t in Interpreter(model_path=str(tmp_path / "q.tflite")).get_tensor_details()
        if t["dtype"] == np.int8 and len(t["shape"]) == 4 and t["shape"][1] == 3
    ]
    assert sorted(int(t["shape"][0]) for t in kernels) == [27, 27, 28, 28, 28, 28, 28]
    assert all(len(t["quantization_parameters"]["scales"]) == t["shape"][0] for t in kernels)

    psnr = set5_psnr(
        [model, TFLiteUpscaler(tmp_path / "f.tflite"), load_runner(tmp_path / "q.tflite")]
    )
    float_db, tflite_float_db, int8_db = psnr.mean(0)
    assert float_db == pytest.approx(31.551, abs=2e-3)
    assert tflite_float_db == pytest.approx(float_db, abs=1e-3)
    assert 0 < float_db - int8_db < 0.15, psnr  # measured 0.090 (official PTQ file: 0.147)


@pytest.mark.parametrize("name", sorted(OFFICIAL_SET5_RGB))
def test_official_int8_files_evaluate_with_slimsr_eval(name, tmp_path, monkeypatch, capsys):
    needs_runtime()
    path = official_weight(name)
    data = shared_file("datasets", "Set5")
    code, _, err = cli(
        monkeypatch, capsys, "eval", "-w", str(path), "--data", str(data), "--protocol", "rgb",
        "--device", "cpu", "-o", str(tmp_path / "ev"), "--tflite-io", "uint8",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "results.json").read_text())
    mean = report["datasets"][0]["mean"]["psnr"]
    assert mean == pytest.approx(OFFICIAL_SET5_RGB[name], abs=5e-3)
    assert report["scale"] == 3


def test_runner_resizes_per_image_and_handles_quantised_io(tmp_path) -> None:
    needs_runtime()
    runner = load_runner(official_weight("abpn_x3_int8_ptq.tflite"))
    assert is_runtime_path("a.TFLITE") and runner.scale == 3 and runner.precision == "int8"
    model = slimsr.load(official_weight("abpn_x3_float_keras.npz"))
    gen = torch.Generator().manual_seed(4)
    for h, w in ((17, 23), (30, 12)):
        x = smooth_test_images((2, 3, h, w), gen)
        got = runner(x)
        with torch.no_grad():
            expected = model(x).clamp(0, 1)
        assert got.shape == (2, 3, 3 * h, 3 * w) and got.dtype == torch.float32
        assert torch.allclose(got * 255, (got * 255).round(), atol=1e-4)  # uint8 pixels
        assert float((got - expected).abs().mean()) < 2 / 255
    with pytest.raises(slimsr.errors.UnsupportedDtypeError, match="drop --fp16"):
        runner.to(dtype=torch.float16)
    with pytest.raises(TFLiteError, match="is a x3 model, not x4"):
        load_runner(official_weight("abpn_x3_int8_ptq.tflite"), scale=4)
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer" * 8)
    with pytest.raises(TFLiteError, match="not a readable TFLite model"):
        load_runner(bad)


@pytest.mark.parametrize("case", ["edsr", "shuffle_tail"])
def test_other_plain_graphs_get_the_uint8_pixel_output_grid(case, tmp_path) -> None:
    """EDSR (mean-shift convs, res_scale multiply, no clamp) and a net ending in a pixel
    shuffle (its range is shared, so a clip carries the output grid) are full-integer too."""
    needs_export()
    from slimsr.registry import get_model_info

    if case == "edsr":
        model = slimsr.create_model("edsr", 2, num_feat=8, num_block=1, res_scale=0.1).eval()
    else:
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.PixelShuffle(2))
        torch.nn.init.normal_(net[0].bias, 128, 40)
        model = slimsr.SRModel(net, get_model_info("abpn"), 2).eval()
    gen = torch.Generator().manual_seed(1)
    crops = [smooth_test_images((1, 3, 24, 24), gen).numpy() for _ in range(6)]
    result = qtflite.export_tflite(model, tmp_path / "q.tflite", int8=True, calibration=crops)
    s = result.summary
    assert s.full_integer and s.input_quant == (1.0, 0) and s.output_quant == (1.0, 0), s
    assert all(c.ok for c in result.checks), result.checks
    expected_ops = {"MUL", "ADD", "DEPTH_TO_SPACE"} if case == "edsr" else {"MINIMUM", "RELU"}
    assert expected_ops <= set(s.ops), s.ops


# -- CLI -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    """A small random ABPN x2, a BSRN and a folder of tiny images."""
    root = tmp_path_factory.mktemp("tfl")
    gen = torch.Generator().manual_seed(3)
    for i in range(2):
        write_image(smooth_test_images((1, 3, 40, 44), gen)[0], root / "img" / f"im{i}.png")
    slimsr.save(slimsr.create_model("abpn", 2, num_feat=8, num_mid=1), root / "abpn.safetensors")
    slimsr.save(slimsr.create_model("bsrn", 2, num_feat=16, num_block=1), root / "bsrn.safetensors")
    return root


def test_cli_export_float_and_int8_then_upscale(small_files, tmp_path, monkeypatch, capsys):
    needs_export()
    w = str(small_files / "abpn.safetensors")
    code, out, err = cli(monkeypatch, capsys, "export", "tflite", "-w", w, "-o",
                         str(tmp_path / "f.tflite"))  # fmt: skip
    assert code == 0, err
    assert "fp32" in out and "verified with LiteRT" in out
    code, out, err = cli(
        monkeypatch, capsys, "export", "tflite", "-w", w, "-o", str(tmp_path / "q.tflite"),
        "--int8", "--calib", str(small_files / "img"), "--calib-crops", "8", "--calib-size", "16",
    )  # fmt: skip
    assert code == 0, err
    assert "int8, ranges calibrated, uint8 pixel IO" in out and "QUANTIZE, CONCATENATION" in out
    assert qtflite.summarize(tmp_path / "q.tflite").full_integer
    code, _, err = cli(monkeypatch, capsys, "upscale", str(small_files / "img"), "-w",
                       str(tmp_path / "q.tflite"), "-o", str(tmp_path / "up"))  # fmt: skip
    assert code == 0, err
    assert read_image(tmp_path / "up" / "im0_x2.png").rgb.shape == (3, 80, 88)
    # default calibration: the bundled example image, said so
    code, out, err = cli(monkeypatch, capsys, "export", "tflite", "-w", w, "-o",
                         str(tmp_path / "d.tflite"), "--int8")  # fmt: skip
    assert code == 0, err
    assert "bundled example image" in out


def test_cli_bad_input_is_one_line_exit_2(small_files, tmp_path, monkeypatch, capsys):
    abpn, bsrn = str(small_files / "abpn.safetensors"), str(small_files / "bsrn.safetensors")
    out = str(tmp_path / "x.tflite")
    cases = [
        ("Conv2d 'fea_conv.dw'", ("export", "tflite", "-w", bsrn, "-o", out, "--int8")),
        ("Conv2d 'fea_conv.dw'", ("export", "tflite", "-w", bsrn, "-o", out)),
        ("carries no INT8 ranges", ("export", "tflite", "--qat-weights", abpn, "-o", out)),
        ("must end in .tflite", ("export", "tflite", "-w", abpn, "-o", str(tmp_path / "x.onnx"))),
    ]
    for expected, args in cases:
        code, _, err = cli(monkeypatch, capsys, *args)
        assert code == 2, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert expected in err, err
    assert not list(tmp_path.iterdir())  # nothing written

    # missing extras (the import fails as if not installed)
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    code, _, err = cli(monkeypatch, capsys, "export", "tflite", "-w", abpn, "-o", out)
    assert code == 2 and err.count("\n") == 1
    assert "pip install 'slimsr[tflite-export]'" in err, err
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    some_file = tmp_path / "m.tflite"
    some_file.write_bytes(b"\0" * 64)  # the runtime is looked for before the file is read
    code, _, err = cli(monkeypatch, capsys, "eval", "-w", str(some_file), "--hr",
                       str(small_files / "img"))  # fmt: skip
    assert code == 2 and err.count("\n") == 1
    assert "pip install 'slimsr[tflite]'" in err, err


def test_cli_io_kind_mismatch_is_one_line_exit_2(small_files, tmp_path, monkeypatch, capsys):
    needs_export()
    fp = tmp_path / "f.tflite"
    qtflite.export_tflite(slimsr.load(small_files / "abpn.safetensors"), fp, verify=False)
    img = str(small_files / "img")
    code, _, err = cli(monkeypatch, capsys, "eval", "-w", str(fp), "--hr", img,
                       "--tflite-io", "uint8")  # fmt: skip
    assert code == 2 and err.count("\n") == 1, err
    assert "INT8 file with uint8 IO is required" in err and "--int8" in err
    official = official_weight("abpn_x3_int8_qat.tflite")
    code, _, err = cli(monkeypatch, capsys, "eval", "-w", str(official), "--hr", img,
                       "--tflite-io", "float")  # fmt: skip
    assert code == 2 and err.count("\n") == 1, err
    assert "a float file is required" in err
