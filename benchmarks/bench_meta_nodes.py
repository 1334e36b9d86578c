"""ABPN's meta-node latency table (Du et al. 2021, Table 1) on this CPU: every node alone, in
PyTorch fp32 and in TFLite fp32 / full-integer INT8 (LiteRT, XNNPACK), same input, same run.

The paper times each node on a Synaptics Dolphin NPU: resize nodes on the network input, the
others "on 1080P network output". Here that output is read as the tensor ABPN holds before its
depth-to-space at x3: 640x360 with 27 channels has exactly the 1920x1080x3 elements of a 1080p
frame. Tensor, convolution and activation nodes therefore run on a 1x360x640x28 tensor (ABPN's
width, 28 channels; the splits and concats on its two halves), resize nodes take the
1x360x640x3 input to 1080x1920. Three nodes of ABPN itself are added: the anchor (the input
repeated 9x along channels), the depth-to-space at x3 and the clip to 0..255.

    python benchmarks/bench_meta_nodes.py --threads 1 --json benchmarks/results/meta_nodes_cpu1.json
    python benchmarks/bench_meta_nodes.py --threads 2 --repeats 20

Prints a table (median ms, round-robin over every node and engine so load changes hit all
alike) and writes JSON with every timing. INT8 files are post-training quantised with random
representative tensors of the same shape (only latency is measured here). No asserts.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from bench_int8 import measure  # round-robin timing, shared by the benchmarks
from rich.console import Console
from rich.table import Table

from slimsr.fileio import atomic_write_text

FEAT = (1, 28, 360, 640)  # N, C, H, W of the feature nodes (ABPN x3 at 1080p output)
IMAGE = (1, 3, 360, 640)  # the network input of the resize nodes


@dataclass(frozen=True)
class MetaNode:
    kind: str  # the paper's "main type"
    name: str
    paper_ms: float | None  # Table 1 (Dolphin NPU); None for the nodes added here
    shape: tuple[int, int, int, int]  # NCHW input
    torch_fn: Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]
    tf_fn: Callable[[Any, dict[str, Any], Any], Any]  # (x NHWC, weights, tf) -> y


def _split(x: torch.Tensor) -> torch.Tensor:
    _, kept = torch.split(x, x.shape[1] // 2, dim=1)
    return kept  # the kept half; the split itself is the work


NODES: tuple[MetaNode, ...] = (
    MetaNode(
        "tensor operator",
        "Channel split",
        9.8,
        FEAT,
        lambda x, w: _split(x),
        lambda x, w, tf: tf.split(x, 2, axis=3)[1],
    ),
    MetaNode(
        "tensor operator",
        "Channel concat",
        10.4,
        FEAT,
        lambda x, w: torch.cat([x, x], 1),
        lambda x, w, tf: tf.concat([x, x], 3),
    ),
    MetaNode(
        "tensor operator",
        "Add two tensors",
        5.2,
        FEAT,
        lambda x, w: x + w["other"],
        lambda x, w, tf: x + w["other"],
    ),
    MetaNode(
        "tensor operator",
        "Multiply two tensors",
        9.6,
        FEAT,
        lambda x, w: x * w["other"],
        lambda x, w, tf: x * w["other"],
    ),
    MetaNode(
        "tensor operator",
        "Global max pooling",
        20.0,
        FEAT,
        lambda x, w: torch.amax(x, dim=(2, 3), keepdim=True),
        lambda x, w, tf: tf.reduce_max(x, axis=[1, 2], keepdims=True),
    ),
    MetaNode(
        "tensor operator",
        "Global average pooling",
        13.1,
        FEAT,
        lambda x, w: torch.mean(x, dim=(2, 3), keepdim=True),
        lambda x, w, tf: tf.reduce_mean(x, axis=[1, 2], keepdims=True),
    ),
    MetaNode(
        "convolution",
        "3x3 Convolution",
        4.3,
        FEAT,
        lambda x, w: F.conv2d(x, w["w3"], w["b"], padding=1),
        lambda x, w, tf: tf.nn.conv2d(x, w["w3"], 1, "SAME") + w["b"],
    ),
    MetaNode(
        "convolution",
        "1x1 Convolution",
        2.9,
        FEAT,
        lambda x, w: F.conv2d(x, w["w1"], w["b"]),
        lambda x, w, tf: tf.nn.conv2d(x, w["w1"], 1, "SAME") + w["b"],
    ),
    MetaNode(
        "activation", "ReLU", 1.3, FEAT, lambda x, w: F.relu(x), lambda x, w, tf: tf.nn.relu(x)
    ),
    MetaNode(
        "activation",
        "Leaky ReLU",
        3.6,
        FEAT,
        lambda x, w: F.leaky_relu(x, 0.05),
        lambda x, w, tf: tf.nn.leaky_relu(x, 0.05),
    ),
    MetaNode(
        "resize",
        "Nearest neighbor",
        57.6,
        IMAGE,
        lambda x, w: F.interpolate(x, scale_factor=3, mode="nearest"),
        lambda x, w, tf: tf.image.resize(x, (1080, 1920), method="nearest"),
    ),
    MetaNode(
        "resize",
        "Bilinear",
        75.4,
        IMAGE,
        lambda x, w: F.interpolate(x, scale_factor=3, mode="bilinear", align_corners=False),
        lambda x, w, tf: tf.image.resize(x, (1080, 1920), method="bilinear"),
    ),
    MetaNode(
        "ABPN",
        "Anchor (input repeated 9x)",
        None,
        IMAGE,
        lambda x, w: torch.cat([x] * 9, 1),
        lambda x, w, tf: tf.concat([x] * 9, 3),
    ),
    MetaNode(
        "ABPN",
        "Depth-to-space x3",
        None,
        (1, 27, 360, 640),
        lambda x, w: F.pixel_shuffle(x, 3),
        lambda x, w, tf: tf.nn.depth_to_space(x, 3),
    ),
    MetaNode(
        "ABPN",
        "Clip 0..255",
        None,
        (1, 3, 1080, 1920),
        lambda x, w: torch.clamp(x, 0.0, 255.0),
        lambda x, w, tf: tf.clip_by_value(x, 0.0, 255.0),
    ),
)


def weights_for(shape: tuple[int, int, int, int], gen: torch.Generator) -> dict[str, torch.Tensor]:
    c = shape[1]
    return {
        "other": torch.rand(shape, generator=gen) * 255,
        "w3": torch.randn(c, c, 3, 3, generator=gen) * 0.05,
        "w1": torch.randn(c, c, 1, 1, generator=gen) * 0.1,
        "b": torch.zeros(c),
    }


def tflite_models(node: MetaNode, w: dict[str, torch.Tensor], x: np.ndarray) -> dict[str, bytes]:
    """fp32 and full-integer INT8 (int8 inside, uint8 IO: ABPN's deployment) .tflite bytes."""
    import tensorflow as tf

    tw = {
        "other": tf.constant(w["other"].permute(0, 2, 3, 1).numpy()),
        "w3": tf.constant(w["w3"].permute(2, 3, 1, 0).numpy()),  # HWIO
        "w1": tf.constant(w["w1"].permute(2, 3, 1, 0).numpy()),
        "b": tf.constant(w["b"].numpy()),
    }
    spec = tf.TensorSpec([1, *x.shape[1:]], tf.float32)
    fn = tf.function(lambda t: node.tf_fn(t, tw, tf), input_signature=[spec])
    out: dict[str, bytes] = {}
    for key in ("tflite_fp32", "tflite_int8"):
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [fn.get_concrete_function()], fn
        )
        if key == "tflite_int8":

            def representative(rng: Any = np.random.default_rng(0)) -> Any:
                for _ in range(4):
                    yield [(rng.random(x.shape, dtype=np.float32) * 255).astype(np.float32)]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.uint8
        out[key] = bytes(converter.convert())
    return out


def calls_for(node: MetaNode, threads: int, tflite: bool) -> dict[str, Callable[[], Any]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(node.shape, generator=gen) * 255
    w = weights_for(node.shape, gen)

    def pytorch() -> Any:
        with torch.inference_mode():
            return node.torch_fn(x, w)

    calls: dict[str, Callable[[], Any]] = {"pytorch_fp32": pytorch}
    if not tflite:
        return calls
    from slimsr.export.runners import tflite_interpreter

    nhwc = x.permute(0, 2, 3, 1).contiguous().numpy()
    for key, blob in tflite_models(node, w, nhwc).items():
        it = tflite_interpreter(blob, f"{node.name} {key}", threads)
        it.allocate_tensors()
        inp, outs = it.get_input_details()[0], it.get_output_details()
        data = (np.round(nhwc) if inp["dtype"] == np.uint8 else nhwc).astype(inp["dtype"])

        def run(
            it: Any = it, i: int = inp["index"], o: int = outs[0]["index"], d: Any = data
        ) -> Any:
            it.set_tensor(i, d)
            it.invoke()
            return it.get_tensor(o)

        calls[key] = run
    return calls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-tflite", action="store_true", help="PyTorch only")
    parser.add_argument("--json", type=Path, default=Path("meta_nodes.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    all_calls: dict[str, Callable[[], Any]] = {}
    for node in NODES:
        for engine, call in calls_for(node, args.threads, not args.no_tflite).items():
            all_calls[f"{node.name}|{engine}"] = call
    times = measure(all_calls, args.warmup, args.repeats)
    engines = sorted(
        {k.split("|")[1] for k in times}, key=["pytorch_fp32", "tflite_fp32", "tflite_int8"].index
    )
    rows = []
    for node in NODES:
        med = {e: statistics.median(times[f"{node.name}|{e}"]) for e in engines}
        rows.append(
            {
                "kind": node.kind,
                "node": node.name,
                "input_nchw": list(node.shape),
                "paper_ms_dolphin_npu": node.paper_ms,
                **{f"{e}_ms": round(v, 3) for e, v in med.items()},
            }
        )
    table = Table(
        title=f"ABPN meta-node latency (median ms of {args.repeats}, {args.threads} thread(s))"
    )
    for col in ("type", "meta-node", "input NCHW", "paper (NPU)", *engines):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["kind"],
            r["node"],
            "x".join(map(str, r["input_nchw"])),
            "-" if r["paper_ms_dolphin_npu"] is None else f"{r['paper_ms_dolphin_npu']}",
            *(f"{r[f'{e}_ms']:.2f}" for e in engines),
        )
    Console(width=200).print(table)
    report = {
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the ISA ATen dispatches to
        "paper_source": "Du et al. 2021 (ABPN), Table 1: Synaptics Dolphin NPU",
        "rows": rows,
        "times_ms": times,
    }
    atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
