"""`SRModel`: one calling convention in front of networks that each have their own.

Official networks expect different value ranges ([0,1] or [0,255]) and some need the input
size to be a multiple of a window. Every model the API returns takes float RGB in [0,1],
NCHW, of any size, and returns float RGB in [0,1]: clamped in eval mode; in train mode the
output is `raw`, unclamped (a clamp would zero the gradients of out-of-range pixels).
The raw network stays in `.net` with its official keys, so state dicts remain official.

Borders: networks pad every convolution with zeros, which a flat colour image shows as a dark
or bright rim (the bundled x4 turned a 1x1 image 95 levels off). `model(x)` keeps the
networks' own zero padding, because that is what the papers evaluate and what `slimsr eval`
reproduces; the picture-making pipeline (`slimsr.upscale`, `slimsr upscale`) adds `BORDER`
LR pixels of mirrored context (`pad_border`) around the whole image and crops it off.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimsr.archs.blocks import pad_to_multiple
from slimsr.errors import UnsupportedDtypeError
from slimsr.registry import ModelInfo, count_parameters

BORDER = 8
"""LR pixels of mirrored context added on every side before a prediction (see module doc).

Measured on flat-colour images (1x1, 3x17, 8x8, 24x24; five colours): with 8, the bundled
x2/x3/x4, BSRN x4, BSRN-S x4, E-RFDN x4 and FMEN-S x4 are all within 0.3 levels of the colour
(4 gives 1.4 for the bundled x4, 0 gives up to 155). docs/efficiency.md has the table."""


def pad_border(x: torch.Tensor, margin: int) -> torch.Tensor:
    """Pad H and W by `margin` on every side by symmetric mirroring (edge pixel repeated).

    Index arithmetic rather than `F.pad(mode="reflect")`, so images smaller than the margin
    (1x1, 1xN) mirror repeatedly instead of failing.
    """
    if margin <= 0:
        return x
    h, w = x.shape[-2:]
    return x[..., _mirror_index(h, margin, x.device)[:, None], _mirror_index(w, margin, x.device)]


def _mirror_index(n: int, margin: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(-margin, n + margin, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


class MirrorPadded:
    """`pad_border(x, margin)` converted to `device`/`dtype`, gathered tile by tile.

    The tiled pipeline reads the padded image only through `[..., rows, cols]` slices, so
    nothing of image size is copied: each slice gathers its own mirrored pixels (the same
    values `pad_border` gives). Saves a padded float copy of the input (290 MB at 6000x4000).
    """

    def __init__(
        self, x: torch.Tensor, margin: int, device: torch.device | str, dtype: torch.dtype
    ) -> None:
        self.x, self.device, self.dtype = x, torch.device(device), dtype
        h, w = x.shape[-2:]
        self.rows = _mirror_index(h, margin, x.device)
        self.cols = _mirror_index(w, margin, x.device)
        self.shape = torch.Size((*x.shape[:-2], len(self.rows), len(self.cols)))

    def __getitem__(self, key: tuple[Any, slice, slice]) -> torch.Tensor:
        rows, cols = key[-2], key[-1]
        tile = self.x[..., self.rows[rows][:, None], self.cols[cols]]
        return tile.to(device=self.device, dtype=self.dtype)


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
        """`raw`, clamped to [0,1] in eval mode (see the module docstring)."""
        y = self.raw(x)
        return y if self.training else y.clamp(0, 1)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """The network under the [0,1] convention, zero-padded at the image edge, unclamped
        (what ONNX export captures and what a distillation teacher gives)."""
        h, w = x.shape[-2:]
        x, ph, pw = pad_to_multiple(x, self.info.size_multiple, self.info.min_size)
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
