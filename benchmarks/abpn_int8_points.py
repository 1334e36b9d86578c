"""Where ABPN x3 loses its PSNR in INT8: each quantisation point's share, in fake quant.

The PyTorch fake-quant model (`slimsr.quant.qat`) predicts the INT8 TFLite file to a few
thousandths of a dB (docs/export.md), so each point's cost can be measured there: the model is
scored on Set5 (RGB PSNR, MAI protocol, LR by MATLAB-exact bicubic) with everything quantised,
then with one activation point at a time left in float, then with float weights and biases and
with float activations. The same QAT weights are measured twice:

- `learned add range`: the ranges as their QAT run stored them, the anchor add's included
  (what slimsr did before 2026-12-08: QAT c learned [-28, 315] for it, 1.35 per level, so the
  output was rounded onto that grid and then onto the output's);
- `graph`: as slimsr quantises now, the add on the output's pixel grid [0, 255]
  (`slimsr.quant.graph`, the tensor the output is only shuffled and clamped from).

    python benchmarks/abpn_int8_points.py --json benchmarks/results/abpn_int8_points.json

Default weights: the QAT c run of the ABPN x3 campaign (campaign/campaign_abpn_x3_qat_c, trained
with the learned add range); float reference: the shipped float model it started from.
Needs ../shared (Set5). No asserts.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

import slimsr
import slimsr.quant.qat as qat
from slimsr.data.folders import dataset_from_root
from slimsr.evaluate import evaluate_dataset
from slimsr.fileio import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
QAT_C = ROOT / "campaign" / "campaign_abpn_x3_qat_c" / "weights" / "final.safetensors"
FLOAT = ROOT / "src" / "slimsr" / "weights" / "abpn" / "abpn_x3.safetensors"
SCALE = 3


def set5_psnr(model: Callable[[torch.Tensor], torch.Tensor], shared: Path) -> float:
    data = dataset_from_root(shared / "datasets" / "Set5", SCALE, generate_lr=True)
    return round(evaluate_dataset(model, data, SCALE, protocol="rgb").mean("psnr"), 4)


@contextmanager
def in_float(module: torch.nn.Module) -> Iterator[None]:
    """`module` (an activation quantiser) passes values through unchanged meanwhile."""
    module.forward = lambda x: x  # type: ignore[method-assign]
    try:
        yield
    finally:
        del module.forward


@contextmanager
def float_weights() -> Iterator[None]:
    """Weights and biases unquantised meanwhile (the activations still are)."""
    saved = qat.fake_quant_weight, qat.fake_quant_bias
    qat.fake_quant_weight = lambda w: w
    qat.fake_quant_bias = lambda b, _s, _ws: b
    try:
        yield
    finally:
        qat.fake_quant_weight, qat.fake_quant_bias = saved


def fake_quant_model(weights: Path, learned_add: bool) -> slimsr.SRModel:
    model = qat.prepare_qat(slimsr.load(weights)).eval()
    net = qat.qat_net(model)
    ranges = qat.ranges_from_weights_file(weights)
    if ranges is None:
        raise SystemExit(f"error: {weights} carries no INT8 ranges (not a QAT run's weights)")
    net.load_ranges(ranges)  # the graph's fixed points keep their own range
    if learned_add:  # the stored range of the add, as applied before it was fixed
        lo, hi = ranges["activations"]["add"]
        with torch.no_grad():
            net.quant["add"].lo.fill_(float(lo))
            net.quant["add"].hi.fill_(float(hi))
    return model


def shares(model: slimsr.SRModel, shared: Path) -> dict[str, Any]:
    net = qat.qat_net(model)
    row: dict[str, Any] = {
        "add_range": [round(v, 3) for v in net.quant["add"].nudged()],
        "all quantised": set5_psnr(model, shared),
        "one point in float": {},
    }
    for point, quantiser in net.quant.items():
        with in_float(quantiser):
            row["one point in float"][point] = set5_psnr(model, shared)
    with float_weights():
        row["float weights and biases"] = set5_psnr(model, shared)
    with ExitStack() as stack:
        for quantiser in net.quant.values():
            stack.enter_context(in_float(quantiser))
        row["float activations"] = set5_psnr(model, shared)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=QAT_C, help="QAT weights with ranges")
    parser.add_argument("--float", type=Path, default=FLOAT, help="the float reference")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for path in (args.weights, args.float, args.shared / "datasets" / "Set5"):
        if not path.exists():
            raise SystemExit(f"error: {path} does not exist")
    result: dict[str, Any] = {
        "weights": str(args.weights),
        "protocol": "Set5 x3, RGB PSNR (MAI: border 3), LR by MATLAB-exact bicubic, fake quant",
        "float": set5_psnr(slimsr.load(args.float).eval(), args.shared),
        "QAT weights in float": set5_psnr(slimsr.load(args.weights).eval(), args.shared),
    }
    for label, learned in (("learned add range", True), ("graph", False)):
        result[label] = shares(fake_quant_model(args.weights, learned), args.shared)
        print(label, json.dumps(result[label]), flush=True)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
