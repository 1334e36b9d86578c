"""Read, recognise and write weight files.

Reading is safe by construction: `.pth/.pt` go through `torch.load(weights_only=True)` (no
arbitrary unpickling), `.safetensors` through safetensors, `.npz` with `allow_pickle=False`.
Whatever the trainer wrapped the weights in (`params_ema`, `params`, `state_dict`, `model`,
DDP's `module.` prefix, torch.compile's `_orig_mod.`) is removed by `canonicalize`.

Writing produces safetensors plus a JSON sidecar naming the architecture, scale and
hyper-parameters, so `slimsr.load` never has to guess for files slimsr wrote.
"""

from __future__ import annotations

import json
import pickletools
import re
import warnings
import zipfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimsr.errors import CheckpointError
from slimsr.fileio import atomic_path, atomic_write_text
from slimsr.registry import ModelRegistry, default_registry

SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors", ".npz")
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model_state_dict", "model", "net", "net_g")
STRIP_PREFIXES = ("module.", "_orig_mod.", "netG.")
SIDECAR_FORMAT = "slimsr-weights"
_METADATA_KEY = "slimsr"


@dataclass
class Checkpoint:
    """A canonical state dict and what its file says about itself (sidecar / metadata)."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] | None = None
    """Our sidecar content (`arch`, `scale`, `kwargs`, ...) when the file was written by slimsr."""


def sidecar_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def read_checkpoint(path: str | Path, param_key: str | None = None) -> Checkpoint:
    """Read any supported weights file into a canonical state dict, or raise CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"weights file not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a weights file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CheckpointError(
            f"{path}: unsupported weights format {suffix or '(no suffix)'!r}; "
            f"expected one of {', '.join(SUFFIXES)}"
        )
    meta: dict[str, Any] | None = None
    if suffix == ".safetensors":
        raw, meta = _read_safetensors(path)
    elif suffix == ".npz":
        raw = _read_npz(path)
    else:
        raw = _read_torch(path)
    state = canonicalize(raw, param_key=param_key, source=path)
    side = sidecar_path(path)
    if side.is_file():
        try:
            side_meta = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{side}: unreadable sidecar JSON ({exc})") from None
        if isinstance(side_meta, dict) and side_meta.get("format") == SIDECAR_FORMAT:
            meta = side_meta
    return Checkpoint(path, state, meta)


def _read_torch(path: Path) -> Any:
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": we explain below
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to parse a user's file is that file's problem
        raise CheckpointError(_torch_load_problem(path, exc)) from None


def _torch_load_problem(path: Path, exc: Exception) -> str:
    """One line saying why `torch.load(weights_only=True)` refused `path`.

    Three cases a user can tell apart: a checkpoint holding Python objects besides tensors
    (a pickled class: refused for safety), a plain `pickle.dump` file (not a torch.save
    checkpoint), and bytes that are neither (corrupt, truncated or another format).
    """
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"{path}: holds Python objects besides tensors ({found.group(1)}); refusing to "
            "unpickle it (only plain state dicts are loaded, for safety)"
        )
    if not zipfile.is_zipfile(path) and _starts_with_pickle(path):
        return (
            f"{path}: a plain Python pickle, not a torch.save checkpoint; refusing to unpickle "
            "it (save the state dict with torch.save or safetensors)"
        )
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    detail = lines[0] if lines else type(exc).__name__
    if "Weights only load failed" in detail:  # torch's preamble: the reason is further down
        reason = [ln for ln in lines if "Unsupported" in ln or "error" in ln.lower()]
        detail = reason[-1] if reason else "not a pickle or zip archive torch can read"
    detail = detail.split(". ")[0]  # torch/miniz add paragraphs of advice
    if " " not in detail:  # a bare KeyError / IndexError value says nothing alone
        detail = f"{type(exc).__name__} {detail}"
    return f"{path}: not a readable checkpoint (corrupt, truncated or another format: {detail})"


def _starts_with_pickle(path: Path, limit: int = 1 << 20) -> bool:
    """True when the file opens with one complete, well-formed pickle (read, never executed)."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit)
        for opcode, _arg, _pos in pickletools.genops(data):
            if opcode.name == "STOP":
                return True
    except Exception:  # malformed opcodes, truncated data
        return False
    return False


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors file ({exc})") from None
    meta = None
    if _METADATA_KEY in metadata:
        try:
            meta = json.loads(metadata[_METADATA_KEY])
        except json.JSONDecodeError:
            meta = None
    return tensors, meta


def _read_npz(path: Path) -> dict[str, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: torch.from_numpy(np.array(archive[k])) for k in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path}: corrupt or unsupported .npz archive ({exc})") from None


def canonicalize(
    obj: Any, param_key: str | None = None, source: Path | str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Unwrap trainer containers and strip wrapper prefixes; keep tensors only.

    `param_key` picks a container explicitly (e.g. "params" to skip an EMA copy); by default
    `params_ema` is preferred over `params`, as the EMA weights are the ones to deploy.
    """
    if param_key is not None:
        if not isinstance(obj, Mapping) or param_key not in obj:
            raise CheckpointError(f"{source}: has no {param_key!r} entry")
        obj = obj[param_key]
    for _ in range(4):  # nested wrappers, e.g. {"state_dict": {"model": {...}}}
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None and len(obj) == 1:
            inner = next(iter(obj.values()))
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source}: does not contain a state dict (found {type(obj).__name__})"
        )
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{source}: contains no tensors")
    for prefix in STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


# -- fitting a state dict to a network ---------------------------------------------------------


@dataclass
class KeyDiff:
    """How a state dict differs from what a network expects."""

    missing: list[str]
    unexpected: list[str]
    misshaped: list[str]

    @property
    def total(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.misshaped)

    def summary(self) -> str:
        parts = [
            f"{len(self.missing)} missing",
            f"{len(self.unexpected)} unexpected",
            f"{len(self.misshaped)} mis-shaped",
        ]
        example = (self.misshaped or self.missing or self.unexpected)[:1]
        return ", ".join(parts) + " keys" + (f" (e.g. {example[0]})" if example else "")


def key_diff(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]) -> KeyDiff:
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    misshaped = [
        k for k in expected if k in got and tuple(expected[k].shape) != tuple(got[k].shape)
    ]
    return KeyDiff(missing, unexpected, misshaped)


def closest_architecture(
    state_dict: Mapping[str, torch.Tensor], registry: ModelRegistry | None = None
) -> tuple[str, int, KeyDiff] | None:
    """The registered (variant, scale) whose default shapes differ least from `state_dict`.

    Networks are built on the meta device, so even EDSR's 43M parameters cost nothing.
    """
    registry = registry or default_registry()
    best: tuple[str, int, KeyDiff] | None = None
    for info in registry:
        for scale in info.scales:
            try:
                with torch.device("meta"):
                    expected = info.build(scale).state_dict()
            except Exception:  # a builder that cannot run on meta is skipped, not fatal
                continue
            diff = key_diff(expected, state_dict)
            if best is None or diff.total < best[2].total:
                best = (info.name, scale, diff)
    return best


def no_fit_message(source: Path | str, state_dict: Mapping[str, torch.Tensor]) -> str:
    closest = closest_architecture(state_dict)
    if closest is None:
        return f"{source}: matches no registered architecture"
    name, scale, diff = closest
    return (
        f"{source}: matches no registered architecture; closest is {name} x{scale} "
        f"({diff.summary()})"
    )


def load_into(net: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Strict load with one clear error instead of PyTorch's multi-line report."""
    diff = key_diff(net.state_dict(), state_dict)
    if diff.total:
        raise CheckpointError(f"{what}: {diff.summary()}")
    net.load_state_dict(dict(state_dict), strict=True)


def load_matching(
    net: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str
) -> tuple[list[str], list[str]]:
    """Copy the tensors of `state_dict` whose name and shape match `net`; the rest are skipped.

    Used to warm-start a model from a relative with another scale or tail (the body carries
    over, the upsampler is trained afresh). Returns (copied, skipped) key lists; raises when
    nothing fits, because then the "initialisation" would silently be random.
    """
    own = net.state_dict()
    fits = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    if not fits:
        raise CheckpointError(f"{what}: no tensor matches the model by name and shape")
    own.update({k: v.to(own[k].dtype) for k, v in fits.items()})
    net.load_state_dict(own, strict=True)
    skipped = sorted(set(own) - set(fits)) + sorted(set(state_dict) - set(own))
    return sorted(fits), skipped


# -- writing -----------------------------------------------------------------------------------


def save_weights(
    net: nn.Module,
    path: str | Path,
    *,
    arch: str,
    scale: int,
    kwargs: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    exclude: Collection[str] = (),
) -> Path:
    """Write `net`'s state dict as safetensors + JSON sidecar, each atomically.

    The same description is embedded in the safetensors header, so a file separated from its
    sidecar still loads without guessing. `exclude` leaves out entries that loading rebuilds
    (SwinIR's attention masks: 94% of a SwinIRmini file). Returns the sidecar path.
    """
    from safetensors.torch import save_file

    from slimsr.registry import count_parameters, get_model_info

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path}: slimsr writes weights as .safetensors")
    info = get_model_info(arch)
    meta: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "version": 1,
        "arch": info.name,
        "family": info.family,
        "scale": int(scale),
        "kwargs": dict(kwargs or {}),
        "input_range": info.input_range,
        "params": count_parameters(net),
        **dict(extra or {}),
    }
    state = net.state_dict()
    unknown = sorted(set(exclude) - state.keys())
    if unknown:
        raise CheckpointError(f"cannot exclude {unknown[:3]}: not in the state dict")
    tensors = {
        k: v.detach().to("cpu").contiguous().clone() for k, v in state.items() if k not in exclude
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_METADATA_KEY: json.dumps(meta, sort_keys=True)})
    side = sidecar_path(path)
    atomic_write_text(side, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return side
