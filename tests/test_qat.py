"""QAT: the fake-quantised network (ranges, weight grid, uint8 IO), PTQ quality of the official
ABPN, training through the engine (runs, exports the ranges, resumes bit for bit), the recipe's
validation, and agreement with the INT8 TFLite file written from the trained ranges."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import slimsr
from slimsr.data.folders import pair_folders
from slimsr.export.calibration import calibration_crops
from slimsr.export.verify import smooth_test_images
from slimsr.imaging import read_image
from slimsr.metrics import evaluate_pair
from slimsr.quant.graph import QuantError, UnsupportedOpError, plain_graph
from slimsr.quant.qat import (
    RANGES_FORMAT,
    calibrate,
    fake_quant_weight,
    prepare_qat,
    qat_net,
    ranges_from_weights_file,
)
from slimsr.train import Trainer, load_config, resume_config, train
from slimsr.train.config import ConfigError, TrainConfig
from tests.conftest import official_weight, shared_file
from tests.train_utils import assert_same_tensors, final_state, tiny_recipe

SMALL_ABPN = {"num_feat": 8, "num_mid": 1}


def small_abpn(scale: int = 3) -> slimsr.SRModel:
    return slimsr.create_model("abpn", scale, **SMALL_ABPN).eval()


def images(n: int, size: int = 24, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [smooth_test_images((1, 3, size, size), gen) for _ in range(n)]


def test_abpn_graph_points_and_layout() -> None:
    graph = plain_graph(small_abpn(3))
    kinds = [op.kind for op in graph.ops]
    assert kinds == ["input", "repeat", *["conv"] * 4, "add", "shuffle", "clamp"]
    assert [op.relu for op in graph.ops if op.kind == "conv"] == [True, True, True, False]
    # anchor and last conv are stored in TF's DCR order for depth_to_space (as the official
    # graph), the shuffle and the anchor reuse their input's range, the ends are fixed, and so
    # is the anchor add: the output is only its shuffle, clamped to the pixel range
    assert set(graph.dcr) == {"repeat_interleave", "convs_3", "add"}
    assert graph.points["repeat_interleave"] == "x" and graph.points["shuffle"] == "add"
    assert graph.own_points == ["x", "convs_0", "convs_1", "convs_2", "convs_3", "add", "clamp"]
    assert graph.fixed == {"x": (0.0, 255.0), "add": (0.0, 255.0), "clamp": (0.0, 255.0)}


class _Tail(torch.nn.Module):
    """conv + conv -> pixel shuffle -> clamp, with the variants that must not fix the add."""

    def __init__(self, bounds: tuple[float, float] = (0.0, 255.0), reuse: bool = False) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.skip = torch.nn.Conv2d(4, 4, 1)
        self.bounds, self.reuse = bounds, reuse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x) + self.skip(x)
        out = torch.clamp(torch.nn.functional.pixel_shuffle(y, 2), *self.bounds)
        if self.reuse:  # the add also feeds another op: its clip would change that op
            out = out + torch.nn.functional.pixel_shuffle(torch.relu(y), 2)
        return out


@pytest.mark.parametrize(
    ("bounds", "reuse", "add_fixed"),
    [
        ((0.0, 255.0), False, True),  # ABPN's tail
        ((-5.0, 300.0), False, True),  # a clamp wider than the pixel range keeps the grid
        ((16.0, 235.0), False, False),  # a clamp inside it cuts values the grid would keep
        ((0.0, 255.0), True, False),  # the add has a second user
    ],
)
def test_the_add_feeding_the_output_takes_the_pixel_grid_only_when_that_is_exact(
    bounds, reuse, add_fixed
) -> None:
    graph = plain_graph(_Tail(bounds, reuse), input_range=255.0)
    assert ("add" in graph.fixed) == add_fixed
    if add_fixed:
        assert graph.fixed["add"] == (0.0, 255.0)


def test_a_fixed_point_keeps_its_range_over_a_file_and_rounds_once() -> None:
    model = prepare_qat(small_abpn())
    calibrate(model, images(4))
    net = qat_net(model)
    assert (float(net.quant["add"].lo), float(net.quant["add"].hi)) == (0.0, 255.0)
    # ranges saved before the add was fixed carry a learned one: the graph's range wins
    old = net.export_ranges()
    old["activations"]["add"] = [-28.3, 315.4]
    net.load_ranges(old)
    assert net.export_ranges()["activations"]["add"] == [0.0, 255.0]
    # and so does a checkpoint's state (a QAT run saved before): the fixed range wins there too
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["quant.add.lo"], state["quant.add.hi"] = torch.tensor(-28.3), torch.tensor(315.4)
    state["quant.convs_0.hi"] = torch.tensor(99.0)  # a learned range is taken as stored
    net.load_state_dict(state)
    assert (float(net.quant["add"].lo), float(net.quant["add"].hi)) == (0.0, 255.0)
    assert float(net.quant["convs_0"].hi) == 99.0
    # the add is on the output grid already: the clamp after its shuffle changes nothing and
    # the output is the add's values moved (one rounding, not two)
    seen: list[torch.Tensor] = []
    net.quant["add"].register_forward_hook(lambda _m, _a, out: seen.append(out))
    with torch.no_grad():
        y = model.net(images(1, seed=3)[0] * 255)
    added = seen[-1]
    assert torch.equal(added, added.round()) and added.min() >= 0 and added.max() <= 255
    assert torch.equal(y, torch.nn.functional.pixel_shuffle(added, 3))


def test_weights_are_per_channel_symmetric_int8() -> None:
    w = torch.randn(6, 4, 3, 3) * torch.linspace(0.01, 3, 6).view(6, 1, 1, 1)
    q = fake_quant_weight(w)
    for c in range(6):
        step = float(w[c].abs().max()) / 127
        levels = q[c] / step
        assert torch.allclose(levels, levels.round(), atol=1e-3)  # on the channel's own grid
        assert float(levels.abs().max()) == pytest.approx(127, abs=1e-3)
        assert float((q[c] - w[c]).abs().max()) <= step / 2 + 1e-6
    w.requires_grad_(True)
    fake_quant_weight(w).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # straight-through


def test_ranges_start_uninitialised_then_calibrate_to_min_max() -> None:
    model = prepare_qat(small_abpn())
    net = qat_net(model)
    assert not net.initialized
    with pytest.raises(QuantError, match="calibrate"):
        model(images(1)[0])
    crops = images(6)
    calibrate(model, crops)
    assert net.initialized
    # a range is the min/max of the float activation over the calibration images
    inner = small_abpn()
    inner.net.load_state_dict(net.net.state_dict())
    acts = {}
    hook = inner.net.convs[0].register_forward_hook(
        lambda m, i, o: acts.setdefault("c", []).append(o)
    )
    with torch.no_grad():
        for x in crops:
            inner(x)
    hook.remove()
    first = torch.relu(torch.cat(acts["c"]))
    q = net.quant["convs_0"]
    assert float(q.lo) == 0.0 and float(q.hi) == pytest.approx(float(first.max()), rel=1e-5)
    assert (float(net.quant["x"].lo), float(net.quant["x"].hi)) == (0.0, 255.0)
    # uint8 pixels out: every output value is on the 1/255 grid, in [0, 1]
    with torch.no_grad():
        y = model(crops[0]) * 255
    assert torch.allclose(y, y.round(), atol=1e-3) and y.min() >= 0 and y.max() <= 255
    ranges = net.export_ranges()
    assert ranges["format"] == RANGES_FORMAT and set(ranges["activations"]) == set(net.quant)
    for lo, hi in ranges["activations"].values():
        scale = (hi - lo) / 255
        assert -lo / scale == pytest.approx(round(-lo / scale), abs=1e-3)  # zero on the grid
    other = prepare_qat(small_abpn())
    other.net.load_ranges(json.loads(json.dumps(ranges)))
    other.net.net.load_state_dict(net.net.state_dict())
    with torch.no_grad():
        assert torch.equal(other(crops[1]), model(crops[1]))


def test_training_mode_follows_an_ema_of_batch_ranges() -> None:
    model = prepare_qat(small_abpn())
    calibrate(model, images(4))
    q = qat_net(model).quant["convs_3"]  # the last conv: a signed range of its own
    before = (float(q.lo), float(q.hi))
    seen: list[torch.Tensor] = []
    q.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    model.train()
    with torch.no_grad():
        model(images(1, seed=5)[0] * 0.2)  # a dark batch: smaller activations
    batch = seen[-1]
    expected_hi = 0.999 * before[1] + 0.001 * float(batch.max())
    expected_lo = 0.999 * before[0] + 0.001 * float(batch.min())
    assert float(q.hi) == pytest.approx(expected_hi, rel=1e-6)
    assert float(q.lo) == pytest.approx(expected_lo, rel=1e-6, abs=1e-6)
    assert float(q.hi) < before[1]
    model.eval()  # frozen in eval mode
    with torch.no_grad():
        model(images(1, seed=6)[0])
    assert float(q.hi) == pytest.approx(expected_hi, rel=1e-6)


def test_official_abpn_ptq_fake_quant_loses_under_008_db_on_set5() -> None:
    model = slimsr.load(official_weight("abpn_x3_float_keras.npz"))
    crops = calibration_crops(shared_file("datasets", "T91", "HR"), 64, 48, downscale=3)
    q = calibrate(prepare_qat(model), crops)
    hr_dir = shared_file("datasets", "Set5", "HR")
    dataset = pair_folders(hr_dir, hr_dir.parent / "LR_bicubic" / "X3", 3)
    psnr = np.zeros((len(dataset.pairs), 2))
    for i, pair in enumerate(dataset.pairs):
        hr, lr = read_image(pair.hr).rgb, read_image(pair.lr).rgb[None]
        hr = hr[:, : lr.shape[2] * 3, : lr.shape[3] * 3]
        with torch.no_grad():
            for j, net in enumerate((model, q)):
                psnr[i, j] = evaluate_pair(net(lr), hr, 3, protocol="rgb")["psnr"]
    float_db, int8_db = psnr.mean(0)
    assert float_db == pytest.approx(31.551, abs=2e-3)
    # measured 0.065; 0.092 while the anchor add had a learned range of its own (rounded twice)
    assert 0 < float_db - int8_db < 0.08, psnr


def test_non_plain_networks_are_refused_naming_the_op() -> None:
    with pytest.raises(UnsupportedOpError, match=r"Conv2d 'fea_conv\.dw' \(groups=") as info:
        prepare_qat(slimsr.create_model("bsrn", 4, num_feat=16, num_block=1))
    assert "\n" not in str(info.value)
    with pytest.raises(UnsupportedOpError, match="tracing it failed"):
        prepare_qat(slimsr.create_model("swinirmini", 2, depths=(2,), num_heads=(6,)))


# -- through the training engine ---------------------------------------------------------------


def qat_recipe(tmp: Path, name: str, **over) -> dict:
    recipe = tiny_recipe(
        tmp,
        name,
        model__name="abpn",
        model__scale=3,
        model__kwargs=SMALL_ABPN,
        data__train__patch_size=8,
        train__scheduler={"type": "multistep", "milestones": [2], "gamma": 0.5},
        quant={"qat": True, "calibration_batches": 2},
        **over,
    )
    recipe["train"].pop("ema", None)
    return recipe


def test_recipe_validation(tmp_path) -> None:
    base = qat_recipe(tmp_path, "v")
    assert TrainConfig.model_validate(base).quant.qat
    bad = json.loads(json.dumps(base))
    bad["model"] = {"name": "bsrn", "scale": 4, "kwargs": {"num_feat": 16}}
    bad["data"]["train"]["patch_size"] = 16
    # the graph check needs the network built: it runs with the recipe (train.recipe), not in
    # the data-only schema
    with pytest.raises(ConfigError, match=r"quant\.qat: bsrn: Conv2d 'fea_conv\.dw'"):
        load_config(bad, check_paths=False)
    bad = json.loads(json.dumps(base))
    bad["train"]["precision"] = "bf16"
    with pytest.raises(ValidationError, match=r"needs train\.precision fp32"):
        TrainConfig.model_validate(bad)
    bad = json.loads(json.dumps(base))
    bad["quant"]["range_decay"] = 1.5
    with pytest.raises(ValidationError, match="range_decay"):
        TrainConfig.model_validate(bad)
    bundled = TrainConfig.model_validate(
        __import__("yaml").safe_load(
            (Path(__file__).parents[1] / "configs" / "abpn_x3_qat.yaml").read_text()
        )
    )
    assert bundled.quant.qat and bundled.train.lr == 1e-4
    assert bundled.train.scheduler.milestones == [50000, 100000, 150000]


def test_qat_through_the_engine_runs_exports_ranges_and_resumes(tmp_path, one_thread) -> None:
    n = 4
    straight = train(load_config(qat_recipe(tmp_path, "straight", train__iterations=n)))
    assert straight.iteration == n and straight.metrics is not None
    state = final_state(straight.run_dir)
    quant_keys = sorted(k for k in state["params"] if k.startswith("quant."))
    assert "quant.add.hi" in quant_keys and "net.convs.0.weight" in state["params"]

    # the exported weights are a plain float ABPN; the ranges travel in the sidecar
    weights = straight.weights[0]
    loaded = slimsr.load(weights)
    assert loaded.name == "abpn" and loaded.kwargs == SMALL_ABPN
    ranges = ranges_from_weights_file(weights)
    assert ranges is not None and ranges["format"] == RANGES_FORMAT
    acts = ranges["activations"]
    lo, hi = acts["convs_3"]  # a learned range (the last conv's, signed)
    assert lo < 0 < hi
    assert acts["x"] == acts["add"] == acts["clamp"] == [0.0, 255.0]  # the fixed ones
    sidecar = json.loads(weights.with_suffix(".json").read_text())
    assert sidecar["training"]["iteration"] == n

    # stop (SIGTERM: the state is saved) after n/2 iterations, resume: bit-exact, ranges too
    recipe = qat_recipe(tmp_path, "stopped", train__iterations=n)
    run_dir = Path(recipe["output_dir"]) / "stopped"

    def stop(event: str, trainer: Trainer) -> None:
        if event == "step" and trainer.iteration == n // 2:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = Trainer(load_config(recipe), callbacks=[stop]).run()
    assert (stopped.iteration, stopped.interrupted) == (n // 2, True)
    resumed = train(resume_config(run_dir), resume=True)
    assert resumed.iteration == n
    assert_same_tensors(state["params"], final_state(run_dir)["params"])


# -- agreement with the INT8 TFLite file ---------------------------------------------------------


def test_fake_quant_forward_matches_the_int8_tflite_file(tmp_path, one_thread) -> None:
    pytest.importorskip("tensorflow", reason="needs the tflite-export extra")
    pytest.importorskip("ai_edge_litert", reason="needs the tflite extra")
    from slimsr.export.runners import TFLiteUpscaler
    from slimsr.export.tflite import export_tflite

    result = train(load_config(qat_recipe(tmp_path, "q", train__iterations=3)))
    weights = result.weights[0]
    ranges = ranges_from_weights_file(weights)
    model = prepare_qat(slimsr.load(weights))
    model.net.load_ranges(ranges)
    model.eval()
    out = tmp_path / "q.tflite"
    exported = export_tflite(slimsr.load(weights), out, int8=True, ranges=ranges)
    assert exported.ranges == "qat" and exported.summary.full_integer
    # the file's activation scales are the trained ranges (not recalibrated)
    from ai_edge_litert.interpreter import Interpreter

    scales = [
        float(t["quantization"][0])
        for t in Interpreter(model_path=str(out)).get_tensor_details()
        if t["dtype"] in (np.int8, np.uint8) and len(t["shape"]) == 4 and t["quantization"][0]
    ]
    for point, (lo, hi) in ranges["activations"].items():
        target = (hi - lo) / 255
        assert any(abs(s - target) <= 1e-5 * target for s in scales), (point, target, scales)

    runner = TFLiteUpscaler(out, io="uint8")
    gen = torch.Generator().manual_seed(9)
    x = smooth_test_images((1, 3, 40, 36), gen)
    with torch.no_grad():
        expected = model(x) * 255
    got = runner(x) * 255
    levels = (got - expected).abs().round()
    assert got.shape == (1, 3, 120, 108)
    counts = levels.flatten().long().bincount()
    assert float((levels == 0).float().mean()) >= 0.95, counts
    assert float((levels <= 1).float().mean()) >= 0.99, counts
    assert float(levels.max()) <= 4, counts
