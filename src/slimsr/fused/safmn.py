"""The fused form of SAFMN and its NTIRE 2023 entry (`slimsr.archs.safmn.SAFMN`).

The plain graph runs NCHW (channels-last measured no faster for it) and spends its time in
passes over memory, not arithmetic (22% of the GEMM peak): the channel LayerNorm as six
element-wise ops, four channel chunks, three nearest upsamplings to full size, a
concatenation, a GELU and a product per SAFM layer. The fused form, channels-last throughout:

- the channel LayerNorm is `F.layer_norm` over the last axis of the NHWC memory (one kernel);
- SAFM's 1x1 `aggr` over concat(level 0, up(level 1), up(level 2), up(level 3)) is split by
  its input groups. A 1x1 conv commutes with nearest upsampling, so each pooled level gets
  its share of `aggr` while small, and the three are summed coarse to fine (when the size
  divides, nearest upsampling by 2 composes exactly), so one full-size map is built instead
  of three upsampled ones and a concatenation. Level 0's depthwise 3x3 and its share of
  `aggr` are one dense 3x3 conv (9 -> C channels) whose kernel adds the coarse sum;
- the GELU in place, the modulation and residual as one `addcmul`; the CCM's GELU a conv
  post-op and its 1x1 an add post-op into the residual stream;
- GRN (NTIRE entry) as one per-channel scale and shift.

Same outputs as the plain network to float rounding; inference only: derived tensors, no
parameters, no state dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimsr.archs.blocks import ChannelsLastPixelShuffle, nearest_resize, pool_to_fraction
from slimsr.archs.safmn import N_LEVELS, SAFM, SAFMN, AttBlock
from slimsr.fused.forms import fused_form
from slimsr.fused.kernels import (
    Act,
    as_pointwise_weight,
    channels_last,
    fused_conv,
    fused_conv_add,
    linear_of,
)
from slimsr.fused.modules import FusedConv, FusedLayerNorm, FusedModule

_GELU = Act("gelu")


class FusedSAFM(FusedModule):
    """gelu(aggr(concat(levels))), returned for the caller to multiply into its input."""

    def __init__(self, safm: SAFM) -> None:
        super().__init__()
        self.first_level = safm.first_level
        w, b = linear_of(safm.aggr)  # (C, C), (C,)
        c = w.shape[0]
        self.chunk = chunk = c // N_LEVELS
        ref = safm.aggr.weight
        # level 0: depthwise 3x3 then its share of aggr = one dense 3x3 from its 9 channels
        dw0 = safm.mfr[0]
        k = dw0.weight.detach().double()[:, 0]  # (chunk, 3, 3)
        w0 = w[:, :chunk]
        self.buffer("level0_weight", channels_last((w0[:, :, None, None] * k[None]).to(ref.dtype)))
        bias = b.clone()
        if dw0.bias is not None:
            bias += w0 @ dw0.bias.detach().double()
        no_bias = safm.aggr.bias is None and dw0.bias is None
        self.buffer("level0_bias", None if no_bias else bias.to(ref.dtype))
        self.mfr = nn.ModuleList(FusedConv(m) for m in safm.mfr[1:])
        for i in range(1, N_LEVELS):
            share = w[:, i * chunk : (i + 1) * chunk]
            self.buffer(f"share{i}", as_pointwise_weight(share, ref))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        chunk = self.chunk
        divisors = [2 ** (i + self.first_level - 1) for i in range(1, N_LEVELS)]
        # each coarse level with its share of aggr, while small: (C channels at 1/d)
        shares = []
        for i, d in enumerate(divisors, start=1):
            pooled = pool_to_fraction(x[:, i * chunk : (i + 1) * chunk], d)
            level = self.mfr[i - 1](channels_last(pooled))
            shares.append(fused_conv(level, getattr(self, f"share{i}"), None))
        nested = h % divisors[-1] == 0 and w % divisors[-1] == 0
        if nested:  # coarse to fine, each step an exact nearest x2 (the divisors double)
            acc = shares[-1]
            for share in reversed(shares[:-1]):
                acc = share.add_(_up_to(acc, *share.shape[-2:], 2))
            coarse = _up_to(acc, h, w, divisors[0])
        else:
            coarse = channels_last(nearest_resize(shares[0], h, w))
            for share in shares[1:]:
                coarse.add_(nearest_resize(share, h, w))
        level0 = channels_last(x[:, :chunk])
        out = fused_conv_add(
            level0, self.level0_weight, self.level0_bias, coarse, padding=1, into_other=True
        )
        return _GELU(out)


def _up_to(x: Tensor, h: int, w: int, factor: int) -> Tensor:
    """Nearest upsampling by an integer `factor` to (h, w) = factor * x's size, channels-last."""
    n, c, hs, ws = x.shape
    out = channels_last(torch.empty((n, c, h, w), dtype=x.dtype, device=x.device))
    view = out.permute(0, 2, 3, 1).view(n, hs, factor, ws, factor, c)
    view.copy_(x.permute(0, 2, 3, 1)[:, :, None, :, None, :].expand(n, hs, factor, ws, factor, c))
    return out


class FusedAttBlock(FusedModule):
    """x + gelu(safm(norm1 x)) * norm1 x, then + ccm(norm2 x); in place after the first."""

    def __init__(self, block: AttBlock) -> None:
        super().__init__()
        self.ntire = block.ntire
        if not block.ntire:
            self.norm1, self.norm2 = FusedLayerNorm(block.norm1), FusedLayerNorm(block.norm2)
        self.safm = FusedSAFM(block.safm)
        self.expand = FusedConv(block.ccm.ccm[0])
        self.squeeze = FusedConv(block.ccm.ccm[2])

    def forward(self, x: Tensor, overwrite: bool) -> Tensor:
        xn = x if self.ntire else self.norm1.channels(x)
        gate = self.safm(xn)
        x = x.addcmul_(gate, xn) if overwrite else torch.addcmul(x, gate, xn, out=gate)
        del gate
        xn = x if self.ntire else self.norm2.channels(x)
        return self.squeeze.add(self.expand(xn, _GELU), x, overwrite=True)


class FusedSAFMN(FusedModule):
    """SAFMN (either form) for inference, built from a trained `SAFMN`."""

    def __init__(self, net: SAFMN) -> None:
        super().__init__()
        self.ntire, self.scale = net.ntire, net.scale
        if net.ntire:
            self.buffer("grn_gamma", net.norm.gamma.reshape(-1))
            self.buffer("grn_beta", net.norm.beta)
        self.to_feat = FusedConv(net.to_feat)
        self.blocks = nn.ModuleList(FusedAttBlock(b) for b in net.feats)
        self.to_img = FusedConv(net.to_img[0])
        self.shuffle = ChannelsLastPixelShuffle(net.to_img[1].upscale_factor)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.to_feat(channels_last(x))
        if self.ntire:
            feat = self._grn(feat)
        y = feat
        for i, block in enumerate(self.blocks):
            y = block(y, overwrite=i > 0 or self.ntire)  # feat is kept for the paper's skip
        if not self.ntire:
            y = y.add_(feat) if y is not feat else y + feat
        out = self.shuffle(self.to_img(y))
        if self.ntire:
            out = out.add_(F.interpolate(x, scale_factor=self.scale, mode="bilinear"))
        return out

    def _grn(self, x: Tensor) -> Tensor:
        """gamma * (x * relative) + beta + x as one per-channel scale and shift."""
        norms = torch.linalg.vector_norm(x, 2, dim=(2, 3), keepdim=True)
        relative = norms / (norms.mean(dim=1, keepdim=True) + 1e-6)
        scale = self.grn_gamma.view(1, -1, 1, 1) * relative + 1.0
        return channels_last(torch.addcmul(self.grn_beta, x, scale))


@fused_form(SAFMN)
def fuse_safmn(net: SAFMN) -> FusedSAFMN:
    return FusedSAFMN(net)
