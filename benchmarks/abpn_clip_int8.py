"""ABPN with and without its clip node, float and full-integer INT8 (ABPN paper, Sec. 3.4 and
4.5: without the clip node "the converter would think that there are negative values of real
images"; the authors' first MAI 2021 submission had none and scored "less than 20dB").

The same trained float weights (the shipped ABPN x3, `src/slimsr/weights/abpn/abpn_x3`) are
built twice, `clip=True` (the published graph) and `clip=False`, and each is quantised two ways:

- `slimsr`: `slimsr export tflite --int8` (post-training, ranges calibrated in PyTorch on 64
  LR-like crops of T91). slimsr fixes the input and output quantisation to the uint8 pixel grid
  (scale 1, zero point 0) whatever the graph ends with, so the missing clip costs nothing;
- `converter`: what the authors did, the TFLite converter's own post-training quantisation with
  the same crops as its representative dataset and uint8 IO. It calibrates the output range
  from the data, so without the clip node the output grid is shifted and stretched.

Each file is measured on Set5 (RGB PSNR, MAI protocol, LR by slimsr's MATLAB-exact bicubic) as
the MAI harness runs it: raw uint8 pixels in, the raw uint8 output taken as pixels. The
converter's files are also read "dequantised" (with the file's output scale and zero point) to
show the values are right and only the pixel grid is wrong.

    python benchmarks/abpn_clip_int8.py --json benchmarks/results/abpn_clip_int8.json

Needs ../shared (Set5, T91) and the TFLite extras (tensorflow-cpu, ai-edge-litert). No asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import slimsr
from slimsr.data.folders import dataset_from_root
from slimsr.evaluate import evaluate_dataset
from slimsr.export.calibration import calibration_crops
from slimsr.export.runners import tflite_interpreter
from slimsr.export.tflite import build_keras, export_tflite, summarize
from slimsr.fileio import atomic_write_text
from slimsr.quant.graph import plain_graph

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "src" / "slimsr" / "weights" / "abpn" / "abpn_x3.safetensors"
SCALE = 3


def set5(upscale: Any, shared: Path) -> dict[str, float]:
    data = dataset_from_root(shared / "datasets" / "Set5", SCALE, generate_lr=True)
    res = evaluate_dataset(upscale, data, SCALE, protocol="rgb")
    return {"psnr": round(res.mean("psnr"), 4), "ssim": round(res.mean("ssim"), 4)}


def converter_int8(model: slimsr.SRModel, crops: list[np.ndarray]) -> bytes:
    """The TFLite converter's own full-integer PTQ of the float graph, uint8 IO."""
    import tensorflow as tf

    kmodel = build_keras(plain_graph(model), model.net)
    pixels = [np.transpose(c, (0, 2, 3, 1)).astype(np.float32) * 255.0 for c in crops]

    def representative() -> Any:
        for p in pixels:
            yield [p]

    converter = tf.lite.TFLiteConverter.from_keras_model(kmodel)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    with contextlib.redirect_stdout(io.StringIO()):
        return bytes(converter.convert())


class RawUint8:
    """A uint8 .tflite run as the MAI harness runs it: pixels in, output bytes taken as pixels
    (`dequantise=True`: the output mapped through the file's scale and zero point instead)."""

    def __init__(self, blob: bytes, dequantise: bool) -> None:
        self.it = tflite_interpreter(blob, "int8 file", 1)
        self.dequantise = dequantise

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        it = self.it
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        pixels = np.round(x[0].permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)[None]
        it.resize_tensor_input(inp["index"], list(pixels.shape), strict=False)
        it.allocate_tensors()
        it.set_tensor(inp["index"], pixels)
        it.invoke()
        y = it.get_tensor(out["index"])[0].astype(np.float32)
        if self.dequantise:
            s, z = out["quantization"]
            y = np.clip((y - z) * s, 0.0, 255.0)
        return torch.from_numpy(y / 255.0).permute(2, 0, 1)[None]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=SHIPPED)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--json", type=Path, default=Path("abpn_clip_int8.json"))
    args = parser.parse_args(argv)
    shipped = slimsr.load(args.weights)
    crops = calibration_crops(args.shared / "datasets" / "T91" / "HR", 64, 48, downscale=SCALE)
    rows = []
    with tempfile.TemporaryDirectory(prefix="slimsr-abpn-clip-") as tmp:
        for clip in (True, False):
            model = slimsr.create_model("abpn", SCALE, clip=clip)
            model.net.load_state_dict(shipped.net.state_dict())
            model.eval()
            path = Path(tmp) / f"clip_{clip}.tflite"
            export_tflite(model, path, int8=True, calibration=crops, verify=False)
            blob = converter_int8(model, crops)
            row: dict[str, Any] = {"clip": clip, "float": set5(model, args.shared)}
            for label, data, dequantise in (
                ("slimsr_int8", path.read_bytes(), False),
                ("converter_int8", blob, False),
                ("converter_int8_dequantised", blob, True),
            ):
                graph = summarize(data)
                row[label] = {
                    **set5(RawUint8(data, dequantise), args.shared),
                    "output_scale": round(graph.output_quant[0], 5),
                    "output_zero_point": graph.output_quant[1],
                }
                print(f"clip={clip} {label}: {row[label]}", flush=True)
            print(f"clip={clip} float: {row['float']}", flush=True)
            rows.append(row)
    report = {
        "weights": "src/slimsr/weights/abpn/abpn_x3.safetensors"
        if args.weights == SHIPPED
        else str(args.weights),
        "protocol": "Set5 x3, RGB PSNR, border 3 (MAI); LR by MATLAB-exact bicubic; uint8 in/out",
        "calibration": "64 crops of T91 (48 px, LR-like: downscaled by 3)",
        "rows": rows,
    }
    atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
