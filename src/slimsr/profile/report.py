"""`profile_model`: every efficiency figure of one model, gathered into a `ProfileReport`.

Everything profiles the raw network (`SRModel.net`) at its official input range, like the NTIRE
harness: counting on meta tensors (`counting`), runtime on the fast inference path (`timing`),
peak memory in a child process on CPU (`memory`). The report is what `slimsr profile` prints and
what its `--json` writes.
"""

from __future__ import annotations

import copy
import os
import platform
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimsr.errors import SlimsrError
from slimsr.inference_form import check_inference_dtype, inference_config, prepare_for_inference
from slimsr.profile.counting import CONVENTION_NOTES, Complexity, complexity
from slimsr.profile.memory import Memory, cpu_peak_memory, cuda_peak_memory
from slimsr.profile.sizes import lr_size_for_output
from slimsr.profile.timing import Timing, time_cpu, time_cuda
from slimsr.registry import ModelInfo, count_parameters, default_registry, get_model_info


def _twin_forms(info: ModelInfo | None, scale: int, kwargs: dict[str, Any]) -> dict[str, int]:
    """Parameters of both forms of a re-parameterisable model (train-time and deploy)."""
    if info is None:
        return {}
    train_name = deploy_name = None
    if info.deploy_form is not None:
        train_name, deploy_name = info.name, info.deploy_form
    else:
        trains = [i.name for i in default_registry() if i.deploy_form == info.name]
        if trains:
            train_name, deploy_name = trains[0], info.name
    if train_name is None or deploy_name is None:
        return {}
    forms = {}
    for form, name in (("train", train_name), ("deploy", deploy_name)):
        with torch.device("meta"):
            forms[form] = count_parameters(get_model_info(name).build(scale, **kwargs))
    return forms


@dataclass
class ProfileReport:
    """Everything `slimsr profile` prints, JSON-ready through `to_dict`."""

    model: str
    scale: int
    input_range: float
    params: int
    params_forms: dict[str, int]
    complexity: Complexity
    output_size_mode: bool
    """True when the size was given as an output size (the papers' "for a 1280x720 output")."""
    runtime: Timing | None = None
    memory: Memory | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        c = self.complexity
        return {
            "model": self.model,
            "scale": self.scale,
            "input_range": self.input_range,
            "input_hw": list(c.input_hw),
            "output_hw": list(c.output_hw),
            "size_given_as": "output" if self.output_size_mode else "input",
            "params": self.params,
            "params_forms": self.params_forms,
            "flops": dict(c.flops),
            "flops_conventions": dict(CONVENTION_NOTES),
            "activations": c.activations,
            "convs": c.convs,
            "runtime": self.runtime.to_dict() if self.runtime else None,
            "memory": self.memory.to_dict() if self.memory else None,
            "settings": self.settings,
        }


def profile_model(
    model: Any,
    *,
    input_hw: tuple[int, int] | None = None,
    output_hw: tuple[int, int] | None = None,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    warmup: int = 2,
    repeats: int = 10,
    channels_last: bool | None = None,
    compile: bool = False,
    fuse: bool | None = None,
    runtime: bool = True,
    memory: bool = True,
    dtype: torch.dtype = torch.float32,
) -> ProfileReport:
    """Profile an `SRModel`'s raw network at its official input range.

    Give the LR `input_hw` (default 256x256, the NTIRE setting) or an `output_hw` (the papers'
    "for a 1280x720 output": the input is floor(H/s) x floor(W/s)). Counting never runs real
    arithmetic; `runtime` and `memory` do (CPU: `threads` fixed; memory in a child process),
    on the fast inference path (`slimsr.inference_form.prepare_for_inference`: `fuse`,
    `channels_last`, `compile`; None picks the measured defaults) in `dtype` (float16 needs
    CUDA; architectures refuse precisions they are not safe in). Counts are dtype-independent.
    """
    if input_hw is not None and output_hw is not None:
        raise SlimsrError("give an input size or an output size, not both")
    info: ModelInfo = model.info
    scale = int(model.scale)
    lr_hw = lr_size_for_output(output_hw, scale) if output_hw else (input_hw or (256, 256))
    if min(lr_hw) < info.min_size:
        raise SlimsrError(
            f"{info.name} needs inputs of at least {info.min_size}x{info.min_size} px; "
            f"the input would be {lr_hw[1]}x{lr_hw[0]}"
        )
    dev = torch.device(device)
    if runtime or memory:
        check_inference_dtype(model, dtype, dev)
    net: nn.Module = model.net
    report = ProfileReport(
        model=info.name,
        scale=scale,
        input_range=info.input_range,
        params=count_parameters(net),
        params_forms=_twin_forms(info, scale, dict(getattr(model, "kwargs", {}) or {})),
        complexity=complexity(net, lr_hw),
        output_size_mode=output_hw is not None,
    )
    report.settings = {
        "device": str(dev),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "dtype": str(dtype).removeprefix("torch."),
    }
    if not (runtime or memory):
        return report
    run_net = prepare_for_inference(
        copy.deepcopy(net),
        dev,
        dtype,
        channels_last,
        compile,
        fuse=fuse,
        family=info.family,
        name=info.name,
    )
    cfg = inference_config(run_net)
    report.settings.update(channels_last=cfg.channels_last, compile=cfg.compiled, fused=cfg.fused)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, *lr_hw, generator=gen) * info.input_range
    x = x.to(dev, dtype).contiguous(memory_format=cfg.memory_format)
    if dev.type == "cuda":
        if runtime:
            report.runtime = time_cuda(run_net, x, warmup=warmup, repeats=repeats)
        if memory:
            report.memory = cuda_peak_memory(run_net, x)
        report.settings["gpu"] = torch.cuda.get_device_name(dev)
        return report
    if hasattr(os, "getloadavg"):
        report.settings["load_average_1m"] = round(os.getloadavg()[0], 2)
        report.settings["cpu_count"] = os.cpu_count()
    if runtime:
        report.runtime = time_cpu(run_net, x, threads=threads, warmup=warmup, repeats=repeats)
    used_threads = report.runtime.threads if report.runtime else threads
    report.settings["threads"] = used_threads or torch.get_num_threads()
    if memory:
        report.memory = cpu_peak_memory(
            net,
            tuple(x.shape),
            info.input_range,
            threads=report.settings["threads"],
            channels_last=cfg.channels_last,
            fuse=cfg.fused,
            dtype=dtype,
        )
    return report
