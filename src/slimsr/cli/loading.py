"""The model that a command's `-m NAME` / `-s SCALE` / `-w FILE` options name.

One loader for `eval`, `upscale`, `profile` and `export`, so a weights file is detected,
built and checked against `--scale` the same way everywhere. What a command does when no
weights are given differs on purpose (eval refuses random weights, upscale falls back to the
bundled model, profile counts a freshly built one), so that policy stays with each command;
this function is called once it is settled.
"""

from __future__ import annotations

from pathlib import Path

from slimsr.errors import SlimsrError
from slimsr.export.runners import Runner, is_runtime_path, load_runner
from slimsr.factory import create_model, load
from slimsr.model import SRModel


def load_model(
    model: str | None,
    scale: int | None,
    weights: Path | None,
    *,
    param_key: str | None = None,
    runtimes: bool = False,
    tflite_io: str = "auto",
) -> SRModel | Runner:
    """`-m NAME [-w FILE]` built (random weights without a file), or `-w FILE` detected.

    With `runtimes`, an ONNX / TFLite file becomes its runner. A model whose scale is not
    `scale` is refused, naming the file.
    """
    if weights is None:
        if model is None:
            raise SlimsrError("give -m NAME or --weights FILE")
        return create_model(model, scale)
    if runtimes and is_runtime_path(weights):
        return load_runner(weights, scale, arch=model, tflite_io=tflite_io)
    if model is None:
        net = load(weights, param_key=param_key)
    else:
        net = create_model(model, scale, weights, param_key=param_key)
    if scale is not None and net.scale != scale:
        raise SlimsrError(f"{weights} is a x{net.scale} model, not x{scale}")
    return net
