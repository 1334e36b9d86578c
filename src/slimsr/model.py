"""`SRModel`: one calling convention in front of networks that each have their own.

Official networks expect different value ranges ([0,1] or [0,255]) and some need the input
size to be a multiple of a window. Every model the API returns takes float RGB in [0,1],
NCHW, of any size, and returns float RGB in [0,1] (not clamped: metrics and writers quantise).
The raw network stays in `.net` with its official keys, so state dicts remain official.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimsr.errors import UnsupportedDtypeError
from slimsr.registry import ModelInfo, count_parameters


def pad_input(
    x: torch.Tensor, multiple: int = 1, min_size: int = 1
) -> tuple[torch.Tensor, int, int]:
    """Pad bottom/right to a multiple and at least `min_size`, by reflection.

    Replicate padding is used where reflection is impossible (padding >= the image size).
    Returns the padded tensor and the (bottom, right) padding added.
    """
    h, w = x.shape[-2:]
    th, tw = max(h, min_size), max(w, min_size)
    ph, pw = th - h + (-th) % multiple, tw - w + (-tw) % multiple
    if ph == 0 and pw == 0:
        return x, 0, 0
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), ph, pw


class SRModel(nn.Module):
    """A registered network behind the [0,1] RGB convention; see module docstring."""

    def __init__(
        self, net: nn.Module, info: ModelInfo, scale: int, kwargs: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.net = net
        self.info = info
        self.scale = int(scale)
        self.kwargs: dict[str, Any] = dict(kwargs or {})
        """Hyper-parameters beyond the variant's defaults (recorded in weight sidecars)."""

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def input_range(self) -> float:
        return self.info.input_range

    def num_parameters(self) -> int:
        return count_parameters(self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x, ph, pw = pad_input(x, self.info.size_multiple, self.info.min_size)
        r = self.info.input_range
        y = self.net(x * r) / r if r != 1.0 else self.net(x)
        if ph or pw:
            y = y[..., : h * self.scale, : w * self.scale]
        return y

    def check_dtype(self, dtype: torch.dtype) -> None:
        """Refuse a precision the architecture is not safe in (clear error, not NaNs)."""
        if dtype == torch.float16 and not self.info.supports_fp16:
            raise UnsupportedDtypeError(f"{self.name} does not support fp16; use fp32 or bf16")
        if dtype == torch.bfloat16 and not self.info.supports_bf16:
            raise UnsupportedDtypeError(f"{self.name} does not support bf16; use fp32")

    def to(self, *args: Any, **kwargs: Any) -> SRModel:  # type: ignore[override]
        dtype = kwargs.get("dtype") or next((a for a in args if isinstance(a, torch.dtype)), None)
        if dtype is not None:
            self.check_dtype(dtype)
        return super().to(*args, **kwargs)

    def half(self) -> SRModel:
        self.check_dtype(torch.float16)
        return super().half()

    def bfloat16(self) -> SRModel:
        self.check_dtype(torch.bfloat16)
        return super().bfloat16()

    def extra_repr(self) -> str:
        return f"name={self.name}, scale={self.scale}, input_range={self.input_range:g}"
