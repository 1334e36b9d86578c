"""SPAN: the swift parameter-free attention network (Wan et al., CVPRW 2024), NTIRE 2024 ESR winner.

Six SPABs, each three 3x3 convs (SiLU after the first two) whose output H gates the block:
`(H + x) * (sigmoid(H) - 0.5)`, an attention map with no parameters of its own. A 1x1
`conv_cat` fuses the stem, `conv_2(block_6)`, `block_1` and the activated first conv of
`block_6`; one conv + PixelShuffle upscales. Key names are those of hongyuanyu/SPAN
(`basicsr/archs/span_arch.py`): `conv_1`, `block_1..6.c{1,2,3}_r`, `conv_cat`, `conv_2`,
`upsampler.0`.

Every 3x3 conv is a `Conv3XC` in two forms:

* train form (`span_train`, the layout of the authors' released checkpoints): a 1x1 shortcut
  `sk` plus `conv` = 1x1 expand (x2) -> 3x3 (no padding, the input is zero-padded first) ->
  1x1 reduce, and `eval_conv`, a frozen 3x3 conv holding the fold of the two. In eval mode
  the official module re-folds `eval_conv` from the branches and runs it alone, so a stale
  `eval_conv` in a file changes nothing; here the fold is redone whenever the branch weights
  changed (and on `.eval()`, so FLOPs counters see the one conv that runs). "Changed" is
  checked by value against a copy of the branches taken at the last fold, since in-place
  edits through `.data` (BasicSR-style EMA `p.data.mul_()`) leave the version counter alone;
  the comparison reads each branch weight once, far cheaper than the fold or the forward.
* deploy form (`span`, `span_ntire`): `eval_conv` only, as the NTIRE 2024 challenge release
  (Amazingren/NTIRE2024_ESR `models/team38_SPAN.py`, 28 channels) stores it.
  `slimsr.reparam.reparameterize` turns the first into the second.

Parameter counts are `sum(p.numel() for p in net.parameters())` as the NTIRE harness counts
them: `eval_conv` is an `nn.Parameter` (frozen) in the official module, so the train form's
count includes it. Input RGB in [0,1]: the network subtracts the DIV2K mean and multiplies by
255 itself (official `img_range`, `rgb_mean`; the mean is not in the state dict) and returns
[0,1] without adding the mean back. Any input size works (3x3 convs only).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimsr.archs._detect import differing, has_all, pixelshuffle_scale
from slimsr.archs.blocks import DIV2K_MEAN, FoldableConv, OneStepUpsampler, conv1x1, conv3x3
from slimsr.registry import Detection, register_detector, register_family, register_model

NUM_BLOCKS = 6
"""Fixed in the official code (`block_1` and `block_6` feed `conv_cat` by name)."""
GAIN = 2
"""Conv3XC's expansion inside its 1x1-3x3-1x1 branch (`gain1=2` everywhere in SPAN)."""
IMG_RANGE = 255.0
CONV3XC_PARTS = tuple(
    f"{part}.{field}"
    for part in ("sk", "conv.0", "conv.1", "conv.2")
    for field in ("weight", "bias")
)
"""The train-form tensors of one Conv3XC, in the order `fold_conv3xc` takes them."""


def fold_conv3xc(
    sk_w: Tensor,
    sk_b: Tensor,
    w0: Tensor,
    b0: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
) -> tuple[Tensor, Tensor]:
    """One 3x3 kernel and bias equal to `conv(pad0(x)) + sk(x)`, computed in the inputs' dtype.

    Zero-padding x before the 1x1 expand (w0, b0) pads its output with b0, so the 3x3 (w1, b1)
    reads w0 * pad0(x) + b0 everywhere, borders included: the chain is one 3x3 conv with
    padding 1, W = w2 . w1 . w0 tap by tap, b = w2 (b1 + sum_uv w1 b0) + b2. The 1x1 shortcut
    adds its kernel at the centre tap and its bias.
    """
    a, c = w0[:, :, 0, 0], w2[:, :, 0, 0]
    weight = torch.einsum("on,nmuv,mi->oiuv", c, w1, a) + F.pad(sk_w, (1, 1, 1, 1))
    bias = c @ (b1 + torch.einsum("nmuv,m->n", w1, b0)) + b2 + sk_b
    return weight, bias


def _fold_dtype(t: Tensor) -> torch.dtype:
    return torch.float32 if t.device.type == "mps" else torch.float64  # MPS has no float64


class Conv3XC(FoldableConv):
    """Train-form re-parameterisable 3x3 conv (official `Conv3XC`, keys `sk`, `conv.0..2`,
    `eval_conv`): the branches in training mode (or their fold, recomputed every call, with
    `online_fold`), the stored fold (`eval_conv`) in eval mode."""

    def __init__(self, c_in: int, c_out: int, gain: int = GAIN) -> None:
        super().__init__()
        self.sk = conv1x1(c_in, c_out)
        self.conv = nn.Sequential(
            conv1x1(c_in, c_in * gain),
            nn.Conv2d(c_in * gain, c_out * gain, 3),
            conv1x1(c_out * gain, c_out),
        )
        self.eval_conv = conv3x3(c_in, c_out).requires_grad_(False)
        self._folded_from: tuple[tuple[int, int, torch.dtype], ...] | None = None
        self._folded_values: list[Tensor] = []
        self.refold()  # the official module also starts with eval_conv = fold(branches)

    def _branches(self) -> list[Tensor]:
        return [self.sk.weight, self.sk.bias] + [t for m in self.conv for t in (m.weight, m.bias)]

    def _branch_state(self) -> tuple[tuple[int, int, torch.dtype], ...]:
        """Identifies the branch weights: a step, a load or a `.to()` changes it."""
        return tuple((t._version, t.data_ptr(), t.dtype) for t in self._branches())

    @torch.no_grad()
    def _stale(self) -> bool:
        """True when `eval_conv` is not the fold of the branches as they are now: their
        identity changed (step, load, `.to()`) or, by value, an edit through `.data`."""
        if self._folded_from != self._branch_state():
            return True
        if any(t.is_meta for t in self._branches()):
            return False  # no values to compare (counting on the meta device): identity decides
        return not all(map(torch.equal, self._branches(), self._folded_values))

    @torch.no_grad()
    def refold(self) -> None:
        """Write the fold of the current branch weights into `eval_conv`."""
        ref = self.eval_conv.weight
        weight, bias = fold_conv3xc(*(t.detach().to(_fold_dtype(ref)) for t in self._branches()))
        self.eval_conv.weight.copy_(weight)
        self.eval_conv.bias.copy_(bias)  # type: ignore[union-attr]
        self._folded_from = self._branch_state()
        self._folded_values = [t.detach().clone() for t in self._branches()]

    def train(self, mode: bool = True) -> Conv3XC:
        super().train(mode)
        if not mode and self._stale():
            self.refold()
        return self

    def folded(self) -> tuple[Tensor, Tensor]:
        return fold_conv3xc(*self._branches())

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            if self.online_fold:
                return self.run_folded(x)
            return self.conv(F.pad(x, (1, 1, 1, 1))) + self.sk(x)
        if self._stale():
            self.refold()
        return self.eval_conv(x)


class DeployConv3XC(nn.Module):
    """Deploy-form Conv3XC: the folded 3x3 conv alone, under the official key `eval_conv`."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.eval_conv = conv3x3(c_in, c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.eval_conv(x)


def _conv(c_in: int, c_out: int, deploy: bool) -> nn.Module:
    return DeployConv3XC(c_in, c_out) if deploy else Conv3XC(c_in, c_out)


class SPAB(nn.Module):
    """Swift parameter-free attention block. Returns the block output and the activated output
    of its first conv (the official block's SiLU runs in place, so the tensor it hands on as
    `out1` is the activated one)."""

    def __init__(self, channels: int, deploy: bool) -> None:
        super().__init__()
        self.c1_r = _conv(channels, channels, deploy)
        self.c2_r = _conv(channels, channels, deploy)
        self.c3_r = _conv(channels, channels, deploy)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        first = F.silu(self.c1_r(x))
        h = self.c3_r(F.silu(self.c2_r(first)))
        return (h + x) * (torch.sigmoid(h) - 0.5), first


class SPAN(nn.Module):
    """SPAN in train form (`deploy=False`, Conv3XC branches) or deploy form (`eval_conv` only);
    RGB in [0,1]."""

    def __init__(self, scale: int, feature_channels: int = 48, deploy: bool = False) -> None:
        super().__init__()
        self.scale = scale
        self.deploy = deploy
        # `slimsr.fused.span` is built from the deploy form: re-parameterise the train form first.
        self.fusable = deploy
        self.hparams: dict[str, Any] = {"scale": scale, "feature_channels": feature_channels}
        self.register_buffer("mean", torch.tensor(DIV2K_MEAN).view(1, 3, 1, 1), persistent=False)
        self.conv_1 = _conv(3, feature_channels, deploy)
        for i in range(1, NUM_BLOCKS + 1):
            self.add_module(f"block_{i}", SPAB(feature_channels, deploy))
        self.conv_cat = conv1x1(4 * feature_channels, feature_channels)
        self.conv_2 = _conv(feature_channels, feature_channels, deploy)
        self.upsampler = OneStepUpsampler(feature_channels, 3, scale)

    def forward(self, x: Tensor) -> Tensor:
        stem = self.conv_1((x - self.mean.to(x.dtype)) * IMG_RANGE)
        block_1, _ = self.block_1(stem)
        y = block_1
        for i in range(2, NUM_BLOCKS + 1):
            y, first = getattr(self, f"block_{i}")(y)
        fused = self.conv_cat(torch.cat([stem, self.conv_2(y), block_1, first], dim=1))
        return self.upsampler(fused)


# Tiling: 3x3 and 1x1 convs and pointwise ops only (the SPAB attention is elementwise, the mean
# a constant), so with an overlap wider than the 21 px receptive radius tiles equal the whole
# image. CPU layout: not measured (benchmarks/bench_models.py --layout), so contiguous.
register_family("span", cpu_channels_last=False, tiling="exact")

_PAPER = (
    "Wan et al., Swift Parameter-free Attention Network for Efficient Super-Resolution, CVPRW 2024"
)
_NTIRE = _PAPER + " (NTIRE 2024 ESR entry, Amazingren/NTIRE2024_ESR team38_SPAN)"
SPAN_CONFIG: dict[str, Any] = {"feature_channels": 48}
SPAN_NTIRE_CONFIG: dict[str, Any] = {"feature_channels": 28}


@register_model(
    family="span",
    input_range=1.0,
    paper=_PAPER,
    params_note="deploy form (eval_conv only); repository default feature_channels=48",
)
def span(scale: int, **kwargs: Any) -> SPAN:
    """SPAN (deploy form): 48 features, 6 SPABs, each conv one folded 3x3."""
    return SPAN(scale, **{**SPAN_CONFIG, **kwargs}, deploy=True)


@register_model(
    family="span",
    input_range=1.0,
    paper=_PAPER,
    params_note="train-time form of the released checkpoints; count includes eval_conv",
    deploy_form="span",
)
def span_train(scale: int, **kwargs: Any) -> SPAN:
    """SPAN, train-time form (Conv3XC branches + eval_conv); re-parameterise into span."""
    return SPAN(scale, **{**SPAN_CONFIG, **kwargs})


@register_model(
    family="span",
    input_range=1.0,
    paper=_NTIRE,
    params_note="NTIRE 2024 release: x4 only, deploy form, 150,688 params at x4",
)
def span_ntire(scale: int, **kwargs: Any) -> SPAN:
    """SPAN NTIRE 2024 entry (deploy form): 28 features, 6 SPABs."""
    return SPAN(scale, **{**SPAN_NTIRE_CONFIG, **kwargs}, deploy=True)


@register_model(
    family="span",
    input_range=1.0,
    paper=_NTIRE,
    params_note="train-time form of span_ntire; count includes eval_conv",
    deploy_form="span_ntire",
)
def span_ntire_train(scale: int, **kwargs: Any) -> SPAN:
    """SPAN NTIRE 2024 entry, train-time form (28 features); re-parameterise into span_ntire."""
    return SPAN(scale, **{**SPAN_NTIRE_CONFIG, **kwargs})


# -- detection ---------------------------------------------------------------------------------

_KEYS = (
    "conv_1.eval_conv.weight",
    "block_1.c1_r.eval_conv.weight",
    "block_6.c3_r.eval_conv.weight",
    "conv_cat.weight",
    "conv_2.eval_conv.weight",
    "upsampler.0.weight",
)
_VARIANTS = {  # (feature_channels, train form) -> the variant whose defaults they are
    (48, False): "span",
    (48, True): "span_train",
    (28, False): "span_ntire",
    (28, True): "span_ntire_train",
}


@register_detector("span")
def detect_span(sd: dict[str, Tensor]) -> Detection | None:
    """`conv_1`, `block_1..6.c{1,2,3}_r`, `conv_2` as Conv3XC (`eval_conv`, plus `sk` and
    `conv.0..2` in the train form), `conv_cat`, `upsampler.0`, exactly; the width is read from
    `conv_1`, the form from the presence of `conv_1.sk`. Widths other than 48 and 28 are `span`
    / `span_train` with `feature_channels`."""
    if not has_all(sd, _KEYS) or any(sd[k].ndim != 4 for k in _KEYS):
        return None
    features, in_ch = sd["conv_1.eval_conv.weight"].shape[:2]
    scale = pixelshuffle_scale(sd["upsampler.0.weight"].shape[0])
    if in_ch != 3 or scale is None or scale < 2:
        return None
    train = "conv_1.sk.weight" in sd
    with torch.device("meta"):
        expected = SPAN(scale, features, deploy=not train).state_dict()
    if set(expected) != set(sd) or any(expected[k].shape != sd[k].shape for k in expected):
        return None
    name = _VARIANTS.get((features, train), "span_train" if train else "span")
    generic = name in ("span", "span_train")
    kwargs = differing({"feature_channels": features}, SPAN_CONFIG) if generic else {}
    return Detection(name, scale, kwargs, dict(sd))
