"""A run's `weights/` (final, best): files anyone can load, safetensors + JSON sidecar.

Written with `slimsr.save`; deployment files (ONNX / TFLite) are `slimsr export`'s job.

Train-time forms (FMEN with RRRB + BatchNorm) are also written re-parameterised, as the plain
deploy network (`slimsr.reparam.reparameterize_model`), next to the train-time weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from slimsr.factory import save
from slimsr.model import SRModel
from slimsr.registry import ModelInfo


def write_run_weights(
    net: nn.Module,
    info: ModelInfo,
    scale: int,
    kwargs: dict[str, Any],
    path: Path,
    extra: dict[str, Any],
) -> list[Path]:
    """Write `path` (and `<stem>_deploy.safetensors` for a train-time form); the paths written."""
    model = SRModel(net, info, scale, kwargs)
    was_training = net.training
    net.eval()
    try:
        written = [path]
        save(model, path, extra=extra)
        if info.deploy_form is not None:
            from slimsr.reparam import reparameterize_model

            deploy = reparameterize_model(model)
            deploy_path = path.with_name(f"{path.stem}_deploy{path.suffix}")
            save(deploy, deploy_path, extra={**extra, "reparameterized_from": info.name})
            written.append(deploy_path)
    finally:
        net.train(was_training)
    return written
