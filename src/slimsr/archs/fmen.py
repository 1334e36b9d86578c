"""FMEN / FMEN-S: Fast and Memory-Efficient Network (Du et al., NTIRE 2022 efficient SR winner).

FMEN is trained in an over-parameterised form and deployed as a plain stack of 3x3 convs:
- train time (`TrainFMEN`): each 3x3 conv of an enhanced residual block (ERB) is an RRRB,
  1x1 expand -> 3x3 (+ inner skip) -> 1x1 reduce (+ outer skip), and each high-frequency
  attention block (HFAB) has three BatchNorms around its convs;
- deploy time (`FMEN`): every RRRB is one 3x3 conv (`rep_conv`) and the BatchNorms are folded
  into the neighbouring convs. `slimsr.reparam` turns the first into the second, exactly.

The train graph pads the inputs of its unpadded 3x3 convs with the constant a zero input would
have produced there (the 1x1 bias, or BN(0)); that makes it equal to "zero-pad, then 1x1/BN, then
3x3" so the fold also holds on the borders.

Both forms take RGB in [0,255] (EDSR framework), use LeakyReLU(0.1) and no mean shift. Keys are
the official ones (NJU-Jet/FMEN `train_fmen.py` / `test_fmen.py`); the NTIRE 2022 submission
names `ERBs`/`HFABs` `basic_blocks`/`hfabs`, which the detector renames.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimsr.archs._compression import ArchSpec, Built, Dims, check_net, weights_under
from slimsr.archs._detect import has_all, indices, pixelshuffle_scale
from slimsr.archs._switches import choose
from slimsr.archs.blocks import ESA, CCALayer, FoldableConv, OneStepUpsampler, conv3x3
from slimsr.registry import Detection, register_detector, register_family, register_model

NEG_SLOPE = 0.1
PAPER = (
    "Du et al., Fast and Memory-Efficient Network Towards Efficient Image Super-Resolution, "
    "CVPRW 2022 (NTIRE 2022 ESR)"
)


BLOCKS = ("erb", "rb", "pb")
"""Backbone block types of the paper's Table 1 / Fig. 5: ERB (FMEN's), RB (EDSR's), plain."""
ATTENTIONS = ("hfab", "cca", "esa", "none")
"""Attention of the paper's Table 2: HFAB (FMEN's), contrast-aware channel, enhanced spatial."""


def _act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, NEG_SLOPE)


def pad_with(x: Tensor, value: Tensor) -> Tensor:
    """Pad H and W by one pixel whose value is `value[c]` per channel (not zero).

    The border then holds what a 1x1 conv / BN would output for a zero-padded input, which is
    what makes the train-time graph re-parameterisable including the image borders.
    """
    c, h, w = x.shape[1:]
    # pad(x) + border * value: exact (the interior adds 0 * value = 0, the border 0 + value),
    # in x's memory format, and two plain ops, so the backward is a slice and a sum. (Building
    # the tensor by slice assignment made autograd clone the whole padded map per assignment,
    # and an NCHW result made the next conv reorder a channels-last map: 14% of a 1-thread
    # FMEN-S train step.)
    border = torch.ones((1, 1, h + 2, w + 2), dtype=x.dtype, device=x.device)
    border[:, :, 1:-1, 1:-1] = 0
    return torch.addcmul(F.pad(x, (1, 1, 1, 1)), border, value.to(x.dtype).view(1, c, 1, 1))


def bn_zero_response(bn: nn.BatchNorm2d) -> Tensor:
    """BN(0) with the running statistics: beta - mean * gamma / sqrt(var + eps)."""
    assert bn.running_mean is not None and bn.running_var is not None
    return bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)


# -- train-time blocks --------------------------------------------------------------------------


def _centre_identity(n: int, like: Tensor) -> Tensor:
    """I at the centre tap of an n x n x 3 x 3 kernel: a skip connection as a 3x3 conv."""
    eye = torch.eye(n, dtype=like.dtype, device=like.device)
    return F.pad(eye[:, :, None, None], (1, 1, 1, 1))


def rrrb_kernel(
    k0: Tensor, b0: Tensor, k1: Tensor, b1: Tensor, k2: Tensor, b2: Tensor
) -> tuple[Tensor, Tensor]:
    """One 3x3 kernel and bias (padding 1) equal to an RRRB with expand (k0, b0), fea (k1, b1)
    and reduce (k2, b2), computed in the inputs' dtype with differentiable ops (the algebra is
    written down in `slimsr.reparam`; the training fast path folds through it every step)."""
    a, c = k0[:, :, 0, 0], k2[:, :, 0, 0]
    k1 = k1 + _centre_identity(k1.shape[0], k1)  # fea(p) + e: e is p's centre tap
    k01 = torch.einsum("omuv,mi->oiuv", k1, a)
    b01 = b1 + torch.einsum("omuv,m->o", k1, b0)
    weight = torch.einsum("pm,miuv->piuv", c, k01) + _centre_identity(c.shape[0], c)
    return weight, c @ b01 + b2


class RRRB(FoldableConv):
    """Residual-in-residual re-parameterisable block: stands in for one 3x3 conv while training.

    out = reduce(fea(pad(expand(x))) + expand(x)) + x; all three convs fold into one 3x3 conv
    (`rrrb_kernel`), which `online_fold` runs instead of the three while training.
    """

    def __init__(self, n_feats: int, ratio: int = 2) -> None:
        super().__init__()
        self.expand_conv = nn.Conv2d(n_feats, ratio * n_feats, 1)
        self.fea_conv = nn.Conv2d(ratio * n_feats, ratio * n_feats, 3)  # no padding: see pad_with
        self.reduce_conv = nn.Conv2d(ratio * n_feats, n_feats, 1)

    def folded(self) -> tuple[Tensor, Tensor]:
        parts = (self.expand_conv, self.fea_conv, self.reduce_conv)
        return rrrb_kernel(*(t for m in parts for t in (m.weight, m.bias)))  # type: ignore[misc]

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.online_fold:
            return self.run_folded(x)
        e = self.expand_conv(x)
        y = self.fea_conv(pad_with(e, self.expand_conv.bias)) + e
        return self.reduce_conv(y) + x


class TrainHFAB(nn.Module):
    """High-frequency attention block with BatchNorms (train time): x * sigmoid(branch(x)).

    The BNs give the attention branch global context and keep the sigmoid out of saturation;
    in eval mode they are affine maps and fold into `squeeze` / `excitate`.
    """

    def __init__(self, n_feats: int, up_blocks: int, mid_feats: int, ratio: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(n_feats)
        self.bn2 = nn.BatchNorm2d(mid_feats)
        self.bn3 = nn.BatchNorm2d(n_feats)
        self.squeeze = nn.Conv2d(n_feats, mid_feats, 3)
        self.convs = nn.Sequential(
            *(ERB(RRRB(mid_feats, ratio), RRRB(mid_feats, ratio)) for _ in range(up_blocks))
        )
        self.excitate = nn.Conv2d(mid_feats, n_feats, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = pad_with(self.bn1(x), bn_zero_response(self.bn1))
        y = _act(self.squeeze(y))
        y = _act(self.convs(y))
        y = pad_with(self.bn2(y), bn_zero_response(self.bn2))
        return torch.sigmoid(self.bn3(self.excitate(y))) * x


# -- deploy blocks ------------------------------------------------------------------------------


class RepConv(nn.Module):
    """A folded RRRB: one padded 3x3 conv under the official key `rep_conv`."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.rep_conv = conv3x3(n_feats, n_feats)

    def forward(self, x: Tensor) -> Tensor:
        return self.rep_conv(x)


class ERB(nn.Module):
    """Enhanced residual block: conv1 -> LeakyReLU -> conv2 (RRRBs or their folded convs)."""

    def __init__(self, conv1: nn.Module, conv2: nn.Module) -> None:
        super().__init__()
        self.conv1 = conv1
        self.conv2 = conv2

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(_act(self.conv1(x)))


class ResidualBlock(ERB):
    """EDSR's residual block (RB) in ERB's keys: conv1 -> LeakyReLU -> conv2, plus the input.

    The "RB" of the paper's Fig. 5 / Table 1 (`block="rb"`); unlike an ERB its skip stays in the
    deploy graph.
    """

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(_act(self.conv1(x))) + x


class HFAB(nn.Module):
    """High-frequency attention block, deploy form (BNs folded): x * sigmoid(branch(x))."""

    def __init__(self, n_feats: int, up_blocks: int, mid_feats: int) -> None:
        super().__init__()
        self.squeeze = conv3x3(n_feats, mid_feats)
        self.convs = nn.Sequential(
            *(ERB(RepConv(mid_feats), RepConv(mid_feats)) for _ in range(up_blocks))
        )
        self.excitate = conv3x3(mid_feats, n_feats)

    def forward(self, x: Tensor) -> Tensor:
        y = _act(self.squeeze(x))
        y = _act(self.convs(y))
        return torch.sigmoid(self.excitate(y)) * x


# -- networks -----------------------------------------------------------------------------------


class _FMENBase(nn.Module):
    """head -> warm-up (conv, HFAB) -> [ERB, HFAB] x down_blocks -> lr_conv (+ head) -> tail.

    The warm-up HFAB is 4 channels narrower than the others, as in the official code.
    `hparams` records the constructor arguments so the other form can be built from them.
    The paper's ablations are switches; the defaults are the published network:

    - `block`: "erb" (default), "rb" (EDSR residual block) or "pb" (plain block, RB without its
      skip) for the backbone blocks `ERBs.*` (Table 1, Fig. 5; the ERBs inside HFABs stay). RB
      and PB are two plain 3x3 convs in both forms, so they have no RRRB to fold;
    - `attn`: "hfab" (default), "cca", "esa" or "none" in every attention slot (the warm-up one
      and `HFABs.*`; Table 2). With anything but "hfab", `mid_feats`, `up_blocks`' values and
      `attention_expand_ratio` go unused. ESA needs inputs of at least 15x15.
    """

    def __init__(
        self,
        scale: int,
        n_feats: int = 50,
        mid_feats: int = 16,
        down_blocks: int = 4,
        up_blocks: Sequence[int] = (2, 1, 1, 1, 1),
        backbone_expand_ratio: int = 2,
        attention_expand_ratio: int = 2,
        block: str = "erb",
        attn: str = "hfab",
    ) -> None:
        super().__init__()
        up_blocks = tuple(int(u) for u in up_blocks)
        if len(up_blocks) != down_blocks + 1:
            raise ValueError(
                f"up_blocks needs down_blocks + 1 = {down_blocks + 1} entries (warm-up HFAB first),"
                f" got {list(up_blocks)}"
            )
        if mid_feats <= 4:
            raise ValueError(
                f"mid_feats must exceed 4 (the warm-up HFAB uses mid_feats - 4), got {mid_feats}"
            )
        self.block = choose("fmen", "block", block, BLOCKS)
        self.attn = choose("fmen", "attn", attn, ATTENTIONS)
        self.hparams: dict[str, Any] = {
            "scale": scale,
            "n_feats": n_feats,
            "mid_feats": mid_feats,
            "down_blocks": down_blocks,
            "up_blocks": up_blocks,
            "backbone_expand_ratio": backbone_expand_ratio,
            "attention_expand_ratio": attention_expand_ratio,
            "block": block,
            "attn": attn,
        }
        # `slimsr.fused.fmen` covers the published graph: plain ERBs and HFABs.
        self.fusable = block != "rb" and attn == "hfab"
        self.down_blocks = down_blocks
        self.head = conv3x3(3, n_feats)
        self.warmup = nn.Sequential(
            conv3x3(n_feats, n_feats),
            self._attention(n_feats, up_blocks[0], mid_feats - 4, attention_expand_ratio),
        )
        self.ERBs = nn.ModuleList(
            self._block(n_feats, backbone_expand_ratio) for _ in range(down_blocks)
        )
        self.HFABs = nn.ModuleList(
            self._attention(n_feats, up_blocks[i + 1], mid_feats, attention_expand_ratio)
            for i in range(down_blocks)
        )
        self.lr_conv = conv3x3(n_feats, n_feats)
        self.tail = OneStepUpsampler(n_feats, 3, scale)

    def _block(self, n_feats: int, ratio: int) -> nn.Module:
        """A backbone block: the form's ERB, or (Table 1 / Fig. 5) an RB or a plain block."""
        if self.block == "rb":
            return ResidualBlock(RepConv(n_feats), RepConv(n_feats))
        if self.block == "pb":
            return ERB(RepConv(n_feats), RepConv(n_feats))
        return self._erb(n_feats, ratio)

    def _attention(self, n_feats: int, up_blocks: int, mid_feats: int, ratio: int) -> nn.Module:
        """An attention slot: the form's HFAB, or (Table 2) CCA, ESA or nothing."""
        if self.attn == "none":
            return nn.Identity()
        if self.attn == "cca":
            return CCALayer(n_feats)
        if self.attn == "esa":
            return ESA(n_feats)  # RFDN's form: plain convs, ReLU, C/4 inside
        return self._hfab(n_feats, up_blocks, mid_feats, ratio)

    def _erb(self, n_feats: int, ratio: int) -> nn.Module:
        raise NotImplementedError

    def _hfab(self, n_feats: int, up_blocks: int, mid_feats: int, ratio: int) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(x)
        h = self.warmup(x)
        for erb, hfab in zip(self.ERBs, self.HFABs, strict=True):
            h = hfab(erb(h))
        return self.tail(self.lr_conv(h) + x)


class FMEN(_FMENBase):
    """FMEN in deploy form (official `TEST_FMEN`): plain 3x3 convs; expects RGB in [0,255].

    The expand ratios are accepted (and recorded) only so that a train-time configuration can be
    passed unchanged; they do not change the deploy graph.
    """

    def _erb(self, n_feats: int, ratio: int) -> nn.Module:
        return ERB(RepConv(n_feats), RepConv(n_feats))

    def _hfab(self, n_feats: int, up_blocks: int, mid_feats: int, ratio: int) -> nn.Module:
        return HFAB(n_feats, up_blocks, mid_feats)


class TrainFMEN(_FMENBase):
    """FMEN in train form (official `TRAIN_FMEN`): RRRBs + BatchNorm; RGB in [0,255].

    Fold it into `FMEN` with `slimsr.reparam.reparameterize` for inference.
    """

    def _erb(self, n_feats: int, ratio: int) -> nn.Module:
        return ERB(RRRB(n_feats, ratio), RRRB(n_feats, ratio))

    def _hfab(self, n_feats: int, up_blocks: int, mid_feats: int, ratio: int) -> nn.Module:
        return TrainHFAB(n_feats, up_blocks, mid_feats, ratio)


# -- variants -----------------------------------------------------------------------------------

FMEN_S_CONFIG: dict[str, Any] = {
    "n_feats": 50,
    "mid_feats": 16,
    "down_blocks": 4,
    "up_blocks": (2, 1, 1, 1, 1),
    "backbone_expand_ratio": 2,
    "attention_expand_ratio": 2,
}
FMEN_CONFIG: dict[str, Any] = {
    **FMEN_S_CONFIG,
    "n_feats": 64,
    "mid_feats": 32,
    "up_blocks": (3, 2, 2, 2, 2),
}
_FULL_NOTE = (
    "config inferred from the paper's counts (not in official code): 64 feats, 4 ERB-HFAB pairs, "
    "mid 32 (warm-up 28), up_blocks [3,2,2,2,2]; paper 748K/757K/769K (x2/x3/x4, truncated)"
)


# -- compression (slimsr.compress) ------------------------------------------------------------


class FMENSpec(ArchSpec):
    """FMEN / FMEN-S (deploy or train form): N_c = n_feats, N_b = ERB-HFAB pairs, N_l = 1.

    A pair is an ERB (two convs: one layer plus the conv before its output, like an EDSR
    block) and an HFAB attention branch; the structure is fixed, so N_l stays 1. The HFAB width
    `mid_feats` follows N_c in proportion (at least 5: the warm-up HFAB uses mid_feats - 4).
    """

    family = "fmen"
    deep_feature = "warm-up, ERB and HFAB blocks and lr_conv (weights only)"
    meaning = "N_c = n_feats, N_l = 1 (fixed ERB structure), N_b = ERB-HFAB pairs"
    min_channels = 4

    def dims(self, model: Built) -> Dims:
        net = check_net(model, (FMEN, TrainFMEN), self)
        return Dims(net.hparams["n_feats"], 1, net.hparams["down_blocks"])

    def is_deep_feature(self, name: str) -> bool:
        return weights_under(name, ("warmup.", "ERBs.", "HFABs.", "lr_conv."))

    def layer_bounds(self, dims: Dims) -> tuple[int, int | None]:
        return 1, 1

    def compact(self, model: Built, dims: Dims) -> tuple[str, dict[str, Any]]:
        hp = check_net(model, (FMEN, TrainFMEN), self).hparams
        up = list(hp["up_blocks"])
        pairs = up[1:] + [up[-1]] * max(0, dims.blocks - (len(up) - 1))
        mid = max(5, round(hp["mid_feats"] * dims.channels / hp["n_feats"]))
        return model.name, {
            **model.kwargs,
            "n_feats": dims.channels,
            "down_blocks": dims.blocks,
            "up_blocks": [up[0], *pairs[: dims.blocks]],
            "mid_feats": mid,
        }


# CPU layout (channels_last / contiguous time at x2 / x3 / x4): fmen 0.94 / 0.91 / 0.87, fmen_s
# 0.75 / 0.76 / 0.73; the train-time forms are the exception (`cpu_channels_last=False` below):
# fmen_s_train 0.98 / 1.00 / 0.98, fmen_train 1.13 / 1.34 / 1.37 (they pad every RRRB and BN input
# into a freshly built NCHW tensor, so NHWC weights probably pay a reorder per conv).
# Tiling: 3x3 convs and a per-pixel attention gate, purely local.
register_family("fmen", cpu_channels_last=True, tiling="exact", compression=FMENSpec())


@register_model(
    family="fmen",
    input_range=255.0,
    supports_fp16=False,  # HFAB attention activations exceed fp16 range (measured 4.6e7)
    paper=PAPER,
    params_note="paper: 341K at x4 (exact: 341,066); deploy (re-parameterised) form",
)
def fmen_s(scale: int, **kwargs: Any) -> FMEN:
    """FMEN-S (deploy form): 50 features, 4 ERB-HFAB pairs, plain 3x3 convs."""
    return FMEN(scale, **{**FMEN_S_CONFIG, **kwargs})


@register_model(
    family="fmen",
    input_range=255.0,
    supports_fp16=False,  # HFAB attention activations exceed fp16 range (measured 4.6e7)
    paper=PAPER,
    params_note=_FULL_NOTE,
)
def fmen(scale: int, **kwargs: Any) -> FMEN:
    """FMEN (deploy form): 64 features, 4 ERB-HFAB pairs, plain 3x3 convs."""
    return FMEN(scale, **{**FMEN_CONFIG, **kwargs})


@register_model(
    family="fmen",
    input_range=255.0,
    supports_fp16=False,  # HFAB attention activations exceed fp16 range (measured 4.6e7)
    paper=PAPER,
    params_note="train-time form (RRRB + BatchNorm), 1,045,866 params at x4; folds into fmen_s",
    deploy_form="fmen_s",
    cpu_channels_last=False,  # measured slower in NHWC (above)
)
def fmen_s_train(scale: int, **kwargs: Any) -> TrainFMEN:
    """FMEN-S, train-time form (RRRBs + BatchNorm); re-parameterise into fmen_s to deploy."""
    return TrainFMEN(scale, **{**FMEN_S_CONFIG, **kwargs})


@register_model(
    family="fmen",
    input_range=255.0,
    supports_fp16=False,  # HFAB attention activations exceed fp16 range (measured 4.6e7)
    paper=PAPER,
    params_note="train-time form (RRRB + BatchNorm); folds into fmen. " + _FULL_NOTE,
    deploy_form="fmen",
    cpu_channels_last=False,  # measured slower in NHWC (above)
)
def fmen_train(scale: int, **kwargs: Any) -> TrainFMEN:
    """FMEN, train-time form (RRRBs + BatchNorm); re-parameterise into fmen to deploy."""
    return TrainFMEN(scale, **{**FMEN_CONFIG, **kwargs})


# -- detection ----------------------------------------------------------------------------------

_NTIRE_RENAMES = (("basic_blocks.", "ERBs."), ("hfabs.", "HFABs."))
_REQUIRED = ("head.weight", "warmup.0.weight", "lr_conv.weight", "tail.0.weight")
_ATTENTION_KEYS = (
    ("hfab", "warmup.1.squeeze.weight"),
    ("cca", "warmup.1.conv_du.0.weight"),
    ("esa", "warmup.1.conv1.weight"),
)
_VARIANTS = (("fmen_s", FMEN_S_CONFIG), ("fmen", FMEN_CONFIG))
_DEFAULT_SWITCHES = {"block": "erb", "attn": "hfab"}


def _rename_ntire(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        for old, new in _NTIRE_RENAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


def _erb_count(sd: dict[str, Tensor], hfab_prefix: str) -> int:
    return len(indices(sd, re.escape(hfab_prefix) + r"convs\.(\d+)\.conv1\..+"))


def _attention_of(sd: dict[str, Tensor]) -> str:
    """Table 2's attention type, from the warm-up slot's keys (none has no keys at all)."""
    return next((name for name, key in _ATTENTION_KEYS if key in sd), "none")


def _infer_config(sd: dict[str, Tensor], train: bool) -> dict[str, Any]:
    n_feats = sd["head.weight"].shape[0]
    down_blocks = len(indices(sd, r"ERBs\.(\d+)\.conv1\..+"))
    config: dict[str, Any] = {"n_feats": n_feats, "down_blocks": down_blocks}
    attn = _attention_of(sd)
    if attn != "hfab":
        config["attn"] = attn  # no HFAB: mid_feats and up_blocks leave no trace
    else:
        warm_mid = sd["warmup.1.squeeze.weight"].shape[0]
        mid_feats = sd["HFABs.0.squeeze.weight"].shape[0] if down_blocks else warm_mid + 4
        if warm_mid != mid_feats - 4:
            raise ValueError("warm-up HFAB is not mid_feats - 4 wide")
        prefixes = ["warmup.1."] + [f"HFABs.{i}." for i in range(down_blocks)]
        config["mid_feats"] = mid_feats
        config["up_blocks"] = tuple(_erb_count(sd, p) for p in prefixes)
    # RB and PB leave the same keys (two plain convs); only a sidecar tells RB apart.
    plain_backbone = down_blocks and "ERBs.0.conv1.rep_conv.weight" in sd
    if train and plain_backbone:
        config["block"] = "pb"
    if train:  # the expand ratios only show in the train form
        if down_blocks and not plain_backbone:
            config["backbone_expand_ratio"] = (
                sd["ERBs.0.conv1.expand_conv.weight"].shape[0] // n_feats
            )
        if attn == "hfab":
            prefixes = ["warmup.1."] + [f"HFABs.{i}." for i in range(down_blocks)]
            expands = [k for p in prefixes if (k := f"{p}convs.0.conv1.expand_conv.weight") in sd]
            if expands:  # the first HFAB that has an ERB
                width = (
                    config["mid_feats"] - 4
                    if expands[0].startswith("warmup.")
                    else config["mid_feats"]
                )
                config["attention_expand_ratio"] = sd[expands[0]].shape[0] // width
    return config


def _closest_variant(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The variant whose defaults differ from `config` in the fewest keys, and those keys."""
    best: tuple[str, dict[str, Any]] | None = None
    for name, defaults in _VARIANTS:
        diff = {k: v for k, v in config.items() if _DEFAULT_SWITCHES.get(k, defaults.get(k)) != v}
        if best is None or len(diff) < len(best[1]):
            best = (name, diff)
    assert best is not None
    name, diff = best
    if "up_blocks" in diff:  # JSON-friendly, as weight sidecars store it
        diff["up_blocks"] = list(diff["up_blocks"])
    return name, diff


@register_detector("fmen")
def detect_fmen(sd: dict[str, Tensor]) -> Detection | None:
    """Deploy (official or NTIRE `basic_blocks`/`hfabs` keys) or train-time FMEN state dicts."""
    if not has_all(sd, _REQUIRED):
        return None
    state = (
        _rename_ntire(sd)
        if any(k.startswith(("basic_blocks.", "hfabs.")) for k in sd)
        else dict(sd)
    )
    train = any(".expand_conv." in k for k in state) or "warmup.1.bn1.weight" in state
    try:
        config = _infer_config(state, train)
        scale = pixelshuffle_scale(state["tail.0.weight"].shape[0])
    except (KeyError, IndexError, ValueError):
        return None
    if scale is None:
        return None
    name, kwargs = _closest_variant(config)
    defaults = dict(_VARIANTS)[name]
    if "up_blocks" not in config and len(defaults["up_blocks"]) != config["down_blocks"] + 1:
        kwargs["up_blocks"] = [1] * (config["down_blocks"] + 1)  # unused, but must fit
    return Detection(name + "_train" if train else name, scale, kwargs, state)
