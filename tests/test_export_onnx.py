"""ONNX export: every registered model, dynamic N/H/W, verified against PyTorch; fp16; INT8 QDQ
of the official ABPN; the CLI (export, eval and upscale of .onnx files, one-line errors)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

import slimsr
from slimsr.cli import main
from slimsr.data.folders import pair_folders
from slimsr.export import OnnxError, OnnxUpscaler, calibration_crops, export_onnx
from slimsr.export import common as ecommon
from slimsr.export import onnx as qonnx
from slimsr.export import verify as everify
from slimsr.imaging import imresize, read_image, write_image
from slimsr.metrics import evaluate_pair
from tests.conftest import official_weight, shared_file

FMEN_SMALL = {"n_feats": 16, "mid_feats": 8, "down_blocks": 1, "up_blocks": (1, 1)}
SMALL: dict[str, dict] = {
    "bsrn": {"num_feat": 16, "num_block": 2},
    "bsrn_s": {"num_feat": 16, "num_block": 2},
    "e_rfdn": {"num_feat": 16, "num_block": 2},
    "edsr": {"num_feat": 16, "num_block": 2},
    "edsr_baseline": {"num_feat": 16, "num_block": 2},
    "fmen": FMEN_SMALL,
    "fmen_s": FMEN_SMALL,
    "fmen_s_train": FMEN_SMALL,
    "fmen_train": FMEN_SMALL,
    "safmn": {"dim": 8, "n_blocks": 1},
    "safmn_ntire": {"dim": 8, "n_blocks": 1},
    "smfanet": {"dim": 8, "n_blocks": 1},
    "span": {"feature_channels": 8},
    "span_ntire": {"feature_channels": 8},
    "span_ntire_train": {"feature_channels": 8},
    "span_train": {"feature_channels": 8},
    "swinir_m": {"embed_dim": 12, "depths": (2,), "num_heads": (2,), "num_feat": 16},
    "swinir_s": {"embed_dim": 12, "depths": (2,), "num_heads": (2,)},
    "swinirmini": {"depths": (2,), "num_heads": (6,)},  # one plain and one shifted block
}
"""Small hyper-parameters so the whole file stays fast; the graph structure is the same."""


def small_model(name: str, scale: int | None = None) -> slimsr.SRModel:
    model = slimsr.create_model(name, scale, **SMALL.get(name, {}))
    for m in model.net.modules():  # non-trivial BN statistics, so the FMEN folds are exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("name", slimsr.list_models())
def test_every_model_exports_with_dynamic_sizes_and_verifies(name, tmp_path) -> None:
    model = small_model(name)
    info = model.info
    path = tmp_path / f"{name}.onnx"
    result = export_onnx(model, path)
    assert path.is_file() and result.precision == "fp32" and result.opset == qonnx.DEFAULT_OPSET
    assert [c.shape[0] for c in result.checks] == [1, 2]  # batch is dynamic too
    assert len({c.shape[2:] for c in result.checks}) == 2  # two different sizes
    assert all(c.ok and c.max_abs_error <= 1e-4 for c in result.checks), result.checks
    # FMEN train-time models are exported in their folded deploy form.
    assert result.arch == (info.deploy_form or name)

    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["slimsr.arch"] == result.arch and meta["slimsr.scale"] == str(model.scale)
    assert meta["slimsr.input_range"] == "[0, 1]"
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    if info.deploy_form:
        assert meta["slimsr.reparameterized_from"] == name
        assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)

    # A third size, below the minimum size and not a multiple of the window: the padding
    # inside the graph (reflect or replicate, as SRModel) keeps up.
    runner = OnnxUpscaler(path)
    assert runner.scale == model.scale and runner.name == result.arch
    for shape in ((1, 3, 13, 9), (1, 3, 4, 19)):
        x = everify.smooth_test_images(shape, torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected = model.raw(x)  # the graph is the unclamped network, as `raw`
        got = runner(x)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-4


def test_fp16_export_halves_the_file_and_stays_close(tmp_path) -> None:
    model = small_model("edsr_baseline", 2)
    fp32 = export_onnx(model, tmp_path / "a.onnx")
    fp16 = export_onnx(model, tmp_path / "b.onnx", dtype="fp16")
    assert fp16.size_bytes < 0.6 * fp32.size_bytes
    assert all(c.ok and c.max_abs_error <= everify.FP16_TOLERANCE for c in fp16.checks)
    proto = onnx.load(str(tmp_path / "b.onnx"))
    f16 = onnx.TensorProto.FLOAT16
    assert any(t.data_type == f16 for t in proto.graph.initializer)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # IO fp32
    x = everify.smooth_test_images((1, 3, 20, 30), torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (OnnxUpscaler(tmp_path / "b.onnx")(x) - model(x)).abs().max() <= 1e-2
    with pytest.raises(slimsr.errors.UnsupportedDtypeError):
        export_onnx(small_model("swinirmini"), tmp_path / "c.onnx", dtype="fp16")


def test_failed_verify_or_static_shape_is_reported_and_writes_nothing(
    tmp_path, monkeypatch
) -> None:
    model = small_model("fmen_s", 2)
    static = export_onnx(model, tmp_path / "static.onnx", dynamic=False, input_size=(24, 20))
    assert [c.shape for c in static.checks] == [(1, 3, 24, 20)]
    runner = OnnxUpscaler(tmp_path / "static.onnx")
    assert runner(torch.rand(1, 3, 24, 20)).shape == (1, 3, 48, 40)
    with pytest.raises(OnnxError, match="onnxruntime failed on a 1x3x30x30 input"):
        runner(torch.rand(1, 3, 30, 30))
    monkeypatch.setattr(everify, "FP32_TOLERANCE", -1.0)
    with pytest.raises(ecommon.OnnxVerifyError, match="nothing written"):
        export_onnx(model, tmp_path / "never.onnx")
    assert not list(tmp_path.glob("*never*"))  # no partial or temporary file either


def test_int8_qdq_abpn_official_loses_under_0065_db_on_set5(tmp_path) -> None:
    model = slimsr.load(official_weight("abpn_x3_float_keras.npz"))
    t91 = shared_file("datasets", "T91", "HR")
    crops = calibration_crops(t91, count=64, size=48, downscale=3)
    assert {c.shape for c in crops} == {(1, 3, 48, 48)}
    export_onnx(model, tmp_path / "f.onnx", verify=False)
    result = export_onnx(model, tmp_path / "q.onnx", dtype="int8", calibration=crops)
    assert all(c.ok for c in result.checks)
    proto = onnx.load(str(tmp_path / "q.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Conv") == 7 and "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {t.name: t for t in proto.graph.initializer}
    int8 = [t for t in inits.values() if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert sorted(t.dims[0] for t in int8) == [27, 27, 28, 28, 28, 28, 28]  # all 7 conv kernels
    dequant = {n.input[0]: n for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    for kernel in int8:  # one scale per output channel
        assert list(inits[dequant[kernel.name].input[1]].dims) == [kernel.dims[0]]

    hr_dir = shared_file("datasets", "Set5", "HR")
    dataset = pair_folders(hr_dir, hr_dir.parent / "LR_bicubic" / "X3", 3)
    runners = OnnxUpscaler(tmp_path / "f.onnx"), OnnxUpscaler(tmp_path / "q.onnx")
    psnr = np.zeros((len(dataset.pairs), 2))
    for i, pair in enumerate(dataset.pairs):
        hr, lr = read_image(pair.hr).rgb, read_image(pair.lr).rgb[None]
        hr = hr[:, : lr.shape[2] * 3, : lr.shape[3] * 3]
        for j, run in enumerate(runners):
            psnr[i, j] = evaluate_pair(run(lr), hr, 3, protocol="rgb")["psnr"]
    float_db, int8_db = psnr.mean(0)
    assert float_db == pytest.approx(31.551, abs=2e-3)  # the official float model, RGB
    # measured 0.053 (percentile); 0.074 while the anchor add, its depth-to-space, the clamp and
    # the output had calibrated ranges of their own (rounded twice)
    assert float_db - int8_db < 0.065, psnr
    # the anchor add (the last quantised tensor; the clamp and the scaling run in float) is on
    # the output's pixel grid: [0, 255] with int8 scale 1, zero point -128
    add_q = next(
        n
        for n in proto.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] == "/net/Add_output_0"
    )
    assert float(onnx.numpy_helper.to_array(inits[add_q.input[1]])) == pytest.approx(1.0)
    assert int(onnx.numpy_helper.to_array(inits[add_q.input[2]])) == -128


def _tail_graph(clip: tuple[float, float] | None, second_user: bool = False) -> onnx.ModelProto:
    """x -> Add(x, x) -> DepthToSpace -> [Clip] -> Div 255 -> output (+ a second Add user)."""
    from onnx import TensorProto, helper

    consts = [
        helper.make_tensor("c255", TensorProto.FLOAT, [], [255.0]),
        helper.make_tensor("lo", TensorProto.FLOAT, [], [clip[0] if clip else 0.0]),
        helper.make_tensor("hi", TensorProto.FLOAT, [], [clip[1] if clip else 0.0]),
    ]
    nodes = [
        helper.make_node("Add", ["x", "x"], ["sum"]),
        helper.make_node("DepthToSpace", ["sum"], ["moved"], blocksize=2, mode="CRD"),
    ]
    last = "moved"
    if clip is not None:
        nodes.append(helper.make_node("Clip", ["moved", "lo", "hi"], ["clipped"]))
        last = "clipped"
    nodes.append(helper.make_node("Div", [last, "c255"], ["output"]))
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)]
    if second_user:
        nodes.append(helper.make_node("Relu", ["sum"], ["other"]))
        outputs.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, None))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])
    return helper.make_model(helper.make_graph(nodes, "tail", [x], outputs, consts))


@pytest.mark.parametrize(
    ("clip", "second_user", "expected"),
    [
        ((0.0, 255.0), False, {"output": 1.0, "clipped": 255.0, "moved": 255.0, "sum": 255.0}),
        (None, False, {}),  # no clamp: the float output may leave [0, 1]
        ((0.0, 200.0), False, {}),  # a clamp that is not the pixel range
        ((0.0, 255.0), True, {"output": 1.0, "clipped": 255.0, "moved": 255.0}),  # sum shared
    ],
)
def test_output_grid_ranges_follow_the_output_back_only_where_exact(
    clip, second_user, expected
) -> None:
    from slimsr.export.calibration import output_grid_ranges

    assert output_grid_ranges(_tail_graph(clip, second_user)) == expected


def test_int8_activations_are_int8_so_avx2_cpus_do_not_saturate(tmp_path) -> None:
    """U8S8 (uint8 activations) runs on AVX2-only CPUs through VPMADDUBSW, whose int16 pair
    sums saturate: the official ABPN x3 lost 0.955 dB on Set5 there against 0.074 on a VNNI CPU
    (measured under qemu -cpu EPYC-Rome). Every activation QuantizeLinear must be int8 (S8S8),
    which gives bit-identical outputs on both."""
    crops = [np.random.default_rng(i).random((1, 3, 16, 16), np.float32) for i in range(4)]
    export_onnx(small_model("abpn"), tmp_path / "q.onnx", dtype="int8", calibration=crops)
    proto = onnx.load(str(tmp_path / "q.onnx"))
    inits = {t.name: t for t in proto.graph.initializer}
    quant = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert quant
    zero_point_types = {inits[n.input[2]].data_type for n in quant}
    assert zero_point_types == {onnx.TensorProto.INT8}


def test_int8_refuses_graphs_that_are_not_plain_conv(tmp_path) -> None:
    crops = [np.random.rand(1, 3, 16, 16).astype(np.float32) for _ in range(4)]
    with pytest.raises(OnnxError, match="Softmax"):
        export_onnx(small_model("swinirmini"), tmp_path / "s.onnx", dtype="int8", calibration=crops)
    assert not (tmp_path / "s.onnx").exists()


def test_missing_extra_names_the_install_command(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ecommon.OnnxNotInstalledError, match=r"pip install slimsr\[onnx\]"):
        ecommon.require_onnx("onnxruntime")


# -- CLI --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """Tiny HR images and random x2 ABPN weights (a slimsr safetensors + sidecar)."""
    root = tmp_path_factory.mktemp("cli")
    hr = root / "hr"
    gen = torch.Generator().manual_seed(3)
    for i in range(2):
        write_image(everify.smooth_test_images((1, 3, 24, 28), gen)[0], hr / f"im{i}.png")
    model = slimsr.create_model("abpn", 2)
    slimsr.save(model, root / "abpn.safetensors")
    return root, model


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slimsr", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_export_then_eval_and_upscale_the_onnx_file(cli_files) -> None:
    root, model = cli_files
    out = root / "abpn.onnx"
    done = run_cli("export", "onnx", "-w", str(root / "abpn.safetensors"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "abpn x2" in done.stdout and "verified with onnxruntime" in done.stdout

    done = run_cli("eval", "-w", str(out), "--hr", str(root / "hr"), "--protocol", "rgb",
                   "-o", str(root / "ev"), "--device", "cpu")  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads((root / "ev" / "results.json").read_text())["datasets"][0]["rows"]
    dataset = pair_folders(root / "hr", None, 2)
    for row, pair in zip(rows, dataset.pairs):
        hr = read_image(pair.hr).rgb
        lr = imresize(hr, 0.5, mode="uint8")  # as eval makes LR when given no LR folder
        with torch.no_grad():
            expected = evaluate_pair(model(lr[None]), hr, 2, protocol="rgb")["psnr"]
        assert row["psnr"] == pytest.approx(expected, abs=1e-3)

    done = run_cli("upscale", str(root / "hr"), "-w", str(out), "-o", str(root / "up"))
    assert done.returncode == 0, done.stderr
    src = read_image(root / "hr" / "im0.png").rgb
    got = read_image(root / "up" / "im0_x2.png").rgb
    from slimsr.upscale import UpscaleOptions, upscale_rgb

    expected = upscale_rgb(model, src, UpscaleOptions(tile=0))  # same pipeline, in PyTorch
    assert got.shape == (3, 48, 56)
    assert (got - expected).abs().max() <= 1.01 / 255  # same pixels up to uint8 rounding


def cli_in_process(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run `slimsr ARGS` in this process (no interpreter start-up): exit code, out, err."""
    monkeypatch.setattr(sys, "argv", ["slimsr", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_int8_export_in_process(cli_files, tmp_path, monkeypatch, capsys) -> None:
    root, _ = cli_files
    code, out, err = cli_in_process(
        monkeypatch, capsys, "export", "onnx", "-w", str(root / "abpn.safetensors"),
        "-o", str(tmp_path / "q.onnx"), "--int8", "--calib", str(root / "hr"),
        "--calib-crops", "8", "--calib-size", "16",
    )  # fmt: skip
    assert code == 0, err
    assert "int8" in out and "PSNR >= 30 dB" in out
    assert OnnxUpscaler(tmp_path / "q.onnx").metadata["slimsr.precision"] == "int8"


def test_cli_bad_input_is_one_line_exit_2(cli_files, tmp_path, monkeypatch, capsys) -> None:
    root, _ = cli_files
    weights = str(root / "abpn.safetensors")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage, not a protobuf model" * 4)
    cases = [
        ("unknown model", ("export", "onnx", "-m", "nosuchnet", "-w", weights, "-o",
                           str(tmp_path / "x.onnx"))),
        ("cannot write", ("export", "onnx", "-w", weights, "-o", str(blocker / "sub" / "x.onnx"))),
        ("needs --calib", ("export", "onnx", "-w", weights, "-o", str(tmp_path / "y.onnx"),
                           "--int8")),
        ("not a readable ONNX model", ("eval", "-w", str(corrupt), "--hr", str(root / "hr"))),
        ("not a readable ONNX model", ("upscale", str(root / "hr"), "-w", str(corrupt), "-o",
                                       str(tmp_path / "up"))),
    ]  # fmt: skip
    for expected, args in cases:
        code, _, err = cli_in_process(monkeypatch, capsys, *args)
        assert code == 2, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert expected in err, err
    assert {p.name for p in tmp_path.iterdir()} == {"a_file", "corrupt.onnx"}  # nothing written
