"""`create_model` (by name) and `load` (by file, architecture detected): the two ways in.

Both return an `SRModel`, which takes and returns float RGB in [0,1] whatever the network's
own convention. Weights are always loaded strictly; a file that does not fit raises a
`CheckpointError` that says what does not fit and what the file looks like instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from slimsr.errors import CheckpointError, UnsupportedScaleError
from slimsr.model import SRModel
from slimsr.registry import default_registry, get_model_info
from slimsr.weight_files import (
    Checkpoint,
    key_diff,
    load_into,
    no_fit_message,
    read_checkpoint,
    save_weights,
)


def create_model(
    name: str,
    scale: int | None = None,
    weights: str | Path | None = None,
    *,
    param_key: str | None = None,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> SRModel:
    """Build a registered model; with `weights`, load them strictly.

    Official key variants (BasicSR vs EDSR-PyTorch names, NTIRE vs repository names, the
    Keras ABPN layout) are translated automatically.
    """
    info = get_model_info(name)
    scale = info.default_scale if scale is None else int(scale)
    net = info.build(scale, **kwargs)
    model = SRModel(net, info, scale, kwargs)
    if weights is not None:
        ckpt = read_checkpoint(weights, param_key=param_key)
        _load_checkpoint_into(model, ckpt)
    model.eval()
    return model.to(device) if device is not None else model


def _load_checkpoint_into(model: SRModel, ckpt: Checkpoint) -> None:
    what = f"{ckpt.path} into {model.name} x{model.scale}"
    state = ckpt.state_dict
    if key_diff(model.net.state_dict(), state).total == 0:
        load_into(model.net, state, what)
        return
    found = default_registry().detect(state)
    if (
        found is not None
        and found.name == model.name
        and found.scale == model.scale
        and key_diff(model.net.state_dict(), found.state_dict).total == 0
    ):
        load_into(model.net, found.state_dict, what)
        return
    diff = key_diff(model.net.state_dict(), state)
    looks = ""
    if found is not None:
        extra = f" with {found.kwargs}" if found.kwargs else ""
        looks = f"; the file looks like {found.name} x{found.scale}{extra}"
    raise CheckpointError(
        f"{ckpt.path} does not fit {model.name} x{model.scale}: {diff.summary()}{looks}"
    )


def load(
    path: str | Path,
    *,
    param_key: str | None = None,
    device: str | torch.device | None = None,
) -> SRModel:
    """Load any supported weights file; architecture, scale and hyper-parameters are detected.

    Files written by slimsr carry their description (sidecar JSON or safetensors header);
    anything else is recognised from its keys and tensor shapes alone.
    """
    ckpt = read_checkpoint(path, param_key=param_key)
    if ckpt.meta is not None and "arch" in ckpt.meta:
        try:
            model = create_model(
                ckpt.meta["arch"], ckpt.meta["scale"], **dict(ckpt.meta.get("kwargs") or {})
            )
        except (UnsupportedScaleError, TypeError) as exc:
            raise CheckpointError(f"{ckpt.path}: its description does not build ({exc})") from None
        _load_checkpoint_into(model, ckpt)
    else:
        found = default_registry().detect(ckpt.state_dict)
        if found is None:
            raise CheckpointError(no_fit_message(ckpt.path, ckpt.state_dict))
        info = get_model_info(found.name)
        model = SRModel(info.build(found.scale, **found.kwargs), info, found.scale, found.kwargs)
        load_into(model.net, found.state_dict, f"{ckpt.path} as {found.name} x{found.scale}")
    model.eval()
    return model.to(device) if device is not None else model


def save(model: SRModel, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write a model's weights as safetensors + JSON sidecar (atomically); returns the sidecar."""
    return save_weights(
        model.net, path, arch=model.name, scale=model.scale, kwargs=model.kwargs, extra=extra
    )
