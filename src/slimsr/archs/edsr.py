"""EDSR, EDSR-baseline (official EDSR-PyTorch layout) and EDSRmini (BasicSR layout).

Two layouts exist for the same network and both are in use:
- official EDSR-PyTorch: `head/body/tail` keys, mean shift done by frozen 1x1 convs
  (`sub_mean`, `add_mean`, 24 parameters that the official parameter counts include), [0,255] input;
- BasicSR: `conv_first/body.i.conv1/.../conv_last`, mean shift as a plain tensor, [0,1] input.
`edsr` and `edsr_baseline` use the official layout (so their parameter counts match the papers);
BasicSR-keyed files of those sizes are translated on load. `edsrmini` (the compression paper's
16-feature, 8-block student) is a BasicSR EDSR, as in the authors' code.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from slimsr.archs._compression import ArchSpec, Built, Dims, check_net, weights_under
from slimsr.archs._detect import count_indices
from slimsr.archs.blocks import DIV2K_MEAN, PixelShuffleUpsampler, conv3x3
from slimsr.registry import Detection, register_detector, register_family, register_model

PAPER = "Lim et al., Enhanced Deep Residual Networks for Single Image SR, CVPRW 2017"


class MeanShift(nn.Conv2d):
    """Frozen 1x1 conv adding (sign=+1) or subtracting (-1) the DIV2K mean on [0,255] values."""

    def __init__(self, sign: int, rgb_range: float = 255.0) -> None:
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(DIV2K_MEAN))
        for p in self.parameters():
            p.requires_grad = False


class ResBlock(nn.Module):
    """Official layout: `body.0` conv, `body.1` ReLU, `body.2` conv; x + res_scale * body(x)."""

    def __init__(self, num_feat: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv3x3(num_feat, num_feat), nn.ReLU(True), conv3x3(num_feat, num_feat)
        )
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) * self.res_scale


class EDSR(nn.Module):
    """EDSR in the official EDSR-PyTorch layout; expects RGB in [0,255]."""

    def __init__(
        self, scale: int, num_feat: int = 64, num_block: int = 16, res_scale: float = 1.0
    ) -> None:
        super().__init__()
        self.sub_mean = MeanShift(-1)
        self.head = nn.Sequential(conv3x3(3, num_feat))
        blocks: list[nn.Module] = [ResBlock(num_feat, res_scale) for _ in range(num_block)]
        self.body = nn.Sequential(*blocks, conv3x3(num_feat, num_feat))
        self.tail = nn.Sequential(PixelShuffleUpsampler(scale, num_feat), conv3x3(num_feat, 3))
        self.add_mean = MeanShift(+1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.sub_mean(x))
        x = self.body(x) + x
        return self.add_mean(self.tail(x))


class ResidualBlockNoBN(nn.Module):
    """BasicSR layout: x + res_scale * conv2(relu(conv1(x)))."""

    def __init__(self, num_feat: int, res_scale: float) -> None:
        super().__init__()
        self.conv1 = conv3x3(num_feat, num_feat)
        self.conv2 = conv3x3(num_feat, num_feat)
        self.relu = nn.ReLU(inplace=True)
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


class EDSRBasicSR(nn.Module):
    """EDSR in the BasicSR layout; expects RGB in [0,1], mean shift as a plain (non-state) tensor."""

    def __init__(
        self,
        scale: int,
        num_feat: int = 16,
        num_block: int = 8,
        res_scale: float = 1.0,
        img_range: float = 255.0,
    ) -> None:
        super().__init__()
        self.img_range = img_range
        self.mean = torch.tensor(DIV2K_MEAN).view(1, 3, 1, 1)
        self.conv_first = conv3x3(3, num_feat)
        self.body = nn.Sequential(
            *[ResidualBlockNoBN(num_feat, res_scale) for _ in range(num_block)]
        )
        self.conv_after_body = conv3x3(num_feat, num_feat)
        self.upsample = PixelShuffleUpsampler(scale, num_feat)
        self.conv_last = conv3x3(num_feat, 3)

    def forward(self, x: Tensor) -> Tensor:
        mean = self.mean.to(x)
        x = self.conv_first((x - mean) * self.img_range)
        x = self.conv_after_body(self.body(x)) + x
        return self.conv_last(self.upsample(x)) / self.img_range + mean


# -- compression (slimsr.compress) ------------------------------------------------------------


class EDSRSpec(ArchSpec):
    """EDSR, EDSR-baseline, EDSRmini: N_c features, N_b residual blocks, N_l = 1.

    A residual block is conv-ReLU-conv: one layer plus the conv before its output, so N_l = 1
    and only 1 can be built. The compact model is always `edsrmini` (the BasicSR layout the
    paper's EDSRmini uses, without the official layout's 24 frozen mean-shift parameters).
    """

    family = "edsr"
    deep_feature = "residual blocks and the conv closing the body (weights only)"
    meaning = "N_c = features, N_l = 1 (conv-ReLU-conv blocks), N_b = residual blocks"
    _SIZE_KEYS = ("num_feat", "num_block")
    _MINI_DEFAULTS: ClassVar[dict[str, int]] = {"num_feat": 16, "num_block": 8}

    def dims(self, model: Built) -> Dims:
        net = check_net(model, (EDSR, EDSRBasicSR), self)
        if isinstance(net, EDSR):
            return Dims(net.head[0].out_channels, 1, len(net.body) - 1)
        return Dims(net.conv_first.out_channels, 1, len(net.body))

    def is_deep_feature(self, name: str) -> bool:
        return weights_under(name, ("body.", "conv_after_body."))

    def layer_bounds(self, dims: Dims) -> tuple[int, int | None]:
        return 1, 1

    def compact(self, model: Built, dims: Dims) -> tuple[str, dict[str, Any]]:
        kwargs: dict[str, Any] = {}
        if model.name == "edsrmini":  # keep its other settings (res_scale, img_range)
            kwargs = {k: v for k, v in model.kwargs.items() if k not in self._SIZE_KEYS}
        for key, value in (("num_feat", dims.channels), ("num_block", dims.blocks)):
            if value != self._MINI_DEFAULTS[key]:
                kwargs[key] = value
        return "edsrmini", kwargs


# CPU layout (channels_last / contiguous time at x2 / x3 / x4): edsr_baseline 0.90 / 0.77 /
# 0.81, edsrmini 0.83 / 0.70 / 0.73. Tiling: residual blocks of 3x3 convs, purely local.
register_family("edsr", cpu_channels_last=True, tiling="exact", compression=EDSRSpec())


@register_model(
    family="edsr",
    input_range=255.0,
    paper=PAPER,
    params_note="includes the 24 frozen MeanShift parameters, as the official code counts",
)
def edsr_baseline(scale: int, **kwargs: Any) -> EDSR:
    """EDSR-baseline: 16 residual blocks, 64 features (official layout)."""
    return EDSR(scale, **{"num_feat": 64, "num_block": 16, "res_scale": 1.0, **kwargs})


@register_model(
    family="edsr",
    input_range=255.0,
    paper=PAPER,
    params_note="includes the 24 frozen MeanShift parameters, as the official code counts",
)
def edsr(scale: int, **kwargs: Any) -> EDSR:
    """EDSR: 32 residual blocks, 256 features, residual scaling 0.1 (official layout)."""
    return EDSR(scale, **{"num_feat": 256, "num_block": 32, "res_scale": 0.1, **kwargs})


@register_model(
    family="edsr",
    input_range=1.0,
    default_scale=2,
    paper="Jiang et al., Compressing Deep Image Super-resolution Models, PCS 2024",
    params_note="paper: 49.6K at x2 (exact); the authors' config uses res_scale 2, ours defaults to 1",
    aliases=("edsr_mini",),
)
def edsrmini(scale: int, **kwargs: Any) -> EDSRBasicSR:
    """EDSRmini: BasicSR EDSR with 16 features and 8 blocks (compressed EDSR-baseline)."""
    return EDSRBasicSR(scale, **{"num_feat": 16, "num_block": 8, "res_scale": 1.0, **kwargs})


# -- detection ---------------------------------------------------------------------------------

_BASICSR_TO_OFFICIAL = (
    ("conv_first.", "head.0."),
    ("upsample.", "tail.0."),
    ("conv_last.", "tail.1."),
)


def _upsampler_scale(sd: dict[str, Tensor], prefix: str, num_feat: int) -> int | None:
    """x4 has two conv stages (`0`, `2`) of 4F channels; x2 one of 4F; x3 one of 9F."""
    first = sd.get(f"{prefix}0.weight")
    if first is None:
        return None
    if f"{prefix}2.weight" in sd:
        return 4
    ratio = first.shape[0] // num_feat
    return {4: 2, 9: 3}.get(ratio)


def _official_from_basicsr(sd: dict[str, Tensor], num_block: int) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        new = key
        if key.startswith("conv_after_body."):
            new = f"body.{num_block}." + key.split(".", 1)[1]
        elif key.startswith("body."):
            new = key.replace(".conv1.", ".body.0.").replace(".conv2.", ".body.2.")
        else:
            for old, rep in _BASICSR_TO_OFFICIAL:
                if key.startswith(old):
                    new = rep + key[len(old) :]
        out[new] = value
    # BasicSR keeps the mean as a constant; the official layout stores it in frozen convs.
    out.update(_mean_shift_state())
    return out


def _mean_shift_state() -> dict[str, Tensor]:
    """The fixed `sub_mean` / `add_mean` tensors of the official layout."""
    state: dict[str, Tensor] = {}
    for name, sign in (("sub_mean", -1), ("add_mean", +1)):
        shift = MeanShift(sign)
        state[f"{name}.weight"] = shift.weight.detach().clone()
        state[f"{name}.bias"] = shift.bias.detach().clone()
    return state


_OFFICIAL_SIZES = {(64, 16): "edsr_baseline", (256, 32): "edsr"}


@register_detector("edsr")
def detect_edsr(sd: dict[str, Tensor]) -> Detection | None:
    """Official (`head.0`, `tail.1`) or BasicSR (`conv_first`, `conv_after_body`) EDSR keys."""
    if "head.0.weight" in sd and "tail.1.weight" in sd and "body.0.body.0.weight" in sd:
        num_feat = sd["head.0.weight"].shape[0]
        num_block = count_indices(sd, r"body\.(\d+)\.body\.0\.weight")
        scale = _upsampler_scale(sd, "tail.0.", num_feat)
        if scale is None:
            return None
        # Some exports drop the frozen mean shift; it is a constant, so restore it.
        state = {**_mean_shift_state(), **sd}
        name = _OFFICIAL_SIZES.get((num_feat, num_block), "edsr_baseline")
        return Detection(name, scale, _size_kwargs(name, num_feat, num_block), state)

    if "conv_first.weight" in sd and "conv_after_body.weight" in sd and "body.0.conv1.weight" in sd:
        num_feat = sd["conv_first.weight"].shape[0]
        num_block = count_indices(sd, r"body\.(\d+)\.conv1\.weight")
        scale = _upsampler_scale(sd, "upsample.", num_feat)
        if scale is None or "conv_last.weight" not in sd:
            return None
        name = _OFFICIAL_SIZES.get((num_feat, num_block))
        if name is not None:  # a BasicSR conversion of an official model
            return Detection(name, scale, {}, _official_from_basicsr(sd, num_block))
        kwargs = _size_kwargs("edsrmini", num_feat, num_block)
        return Detection("edsrmini", scale, kwargs, dict(sd))
    return None


_DEFAULT_SIZES = {"edsr_baseline": (64, 16), "edsr": (256, 32), "edsrmini": (16, 8)}


def _size_kwargs(name: str, num_feat: int, num_block: int) -> dict[str, Any]:
    feat, block = _DEFAULT_SIZES[name]
    kwargs: dict[str, Any] = {}
    if num_feat != feat:
        kwargs["num_feat"] = num_feat
    if num_block != block:
        kwargs["num_block"] = num_block
    return kwargs
