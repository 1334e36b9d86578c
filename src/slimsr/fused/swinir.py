"""The fused form of SwinIR, SwinIR-S and SwinIRmini (`slimsr.archs.swinir.SwinIR`).

Where the plain graph spends its time on CPU (profiled, SwinIRmini x2, 128x128, 1 thread): the
attention core, 80% (scores materialised per window and head, the bias and mask added in a
separate pass, softmax, product with V), then the copies around it (token <-> image
transposes, rolls, window partition and merge). The fused form:

- runs each attention through `F.scaled_dot_product_attention` (oneDNN's / ATen's fused CPU
  kernel: scores never leave the cache), with the position bias gathered once at build time;
- splits shifted windows into those the shift mask leaves alone (every window but the last
  row and column: they take the bias alone, broadcast) and the border windows, whose bias +
  mask is precomputed per feature-map size (a few windows, not all of them);
- keeps tokens as a channels-last image, so tokens and image are the same memory (the plain
  graph transposes at every RSTB);
- gathers the tokens of all windows (the cyclic shift included) with one `index_select`,
  and adds the attention output back to the residual stream with one `index_add_`;
- folds the query scale into the qkv weights, each GELU into its linear layer where oneDNN
  can, each conv with its residual add into one kernel, and the output range and mean into
  the last conv.

Same outputs as the plain network to float rounding (tested at every upsampler and residual
connection); inference only: derived tensors, no parameters, no state dict.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimsr.archs.blocks import ChannelsLastPixelShuffle, pad_to_multiple
from slimsr.archs.swinir import MASK_VALUE, SwinIR, SwinTransformerBlock
from slimsr.fused.forms import fused_form
from slimsr.fused.kernels import Act, channels_last
from slimsr.fused.modules import FusedConv, FusedLayerNorm, FusedModule

_LEAKY = Act("leaky_relu", 0.2)
_LAYOUT_CACHE = 4
"""Window layouts (token orders) kept per network, by feature-map size."""


class WindowLayout:
    """How the tokens of an h x w map are grouped into windows for one shift: the gather
    order (window by window, windows grouped by their mask) and the groups.

    A group is a run of windows with the same shift mask: the interior windows (no mask), and
    for a shifted layout the few mask patterns of the last window row and column (three: the
    last column, the last row, the corner). Each group's attention takes one (1, heads, n, n)
    bias broadcast over its windows, so no per-window mask tensor is ever built.
    """

    def __init__(self, h: int, w: int, window: int, shift: int, like: Tensor) -> None:
        rows, cols = h // window, w // window
        r = (torch.arange(h, device=like.device) + shift) % h  # roll by -shift: r' reads r'+s
        c = (torch.arange(w, device=like.device) + shift) % w
        flat = (r[:, None] * w + c[None, :]).view(rows, window, cols, window).permute(0, 2, 1, 3)
        flat = flat.reshape(rows * cols, window * window)  # token index of each window's tokens
        self.groups: list[tuple[int, int, Tensor | None]] = [(0, rows * cols, None)]
        if shift:
            # the region (0-2 per axis) of every position of the rolled map, as the plain
            # graph's `shifted_window_mask` defines it; windows with the same regions share a
            # mask, and only those few patterns are built (the full mask is nW x n x n)
            pos_r, pos_c = torch.arange(h, device=like.device), torch.arange(w, device=like.device)
            band_r = (pos_r >= h - window).long() + (pos_r >= h - shift).long()
            band_c = (pos_c >= w - window).long() + (pos_c >= w - shift).long()
            region = (band_r[:, None] * 3 + band_c[None, :]).view(rows, window, cols, window)
            region = region.permute(0, 2, 1, 3).reshape(rows * cols, window * window)
            patterns, which = torch.unique(region, dim=0, return_inverse=True)
            order = torch.argsort(which, stable=True)
            flat = flat[order]
            counts = torch.bincount(which, minlength=patterns.shape[0]).tolist()
            self.groups, lo = [], 0
            for pattern, count in zip(patterns, counts, strict=True):
                differ = pattern[:, None] != pattern[None, :]
                mask = None
                if bool(differ.any()):
                    mask = torch.zeros(differ.shape, dtype=like.dtype, device=like.device)
                    mask = mask.masked_fill_(differ, MASK_VALUE)[None, None]
                self.groups.append((lo, lo + count, mask))
                lo += count
        self.order = flat.reshape(-1)


class FusedSwinBlock(FusedModule):
    """A Swin block: LN, (shifted-)window attention, residual; LN, MLP, residual."""

    def __init__(self, block: SwinTransformerBlock) -> None:
        super().__init__()
        attn = block.attn
        self.window, self.shift, self.heads = block.window, block.shift, attn.num_heads
        self.norm1, self.norm2 = FusedLayerNorm(block.norm1), FusedLayerNorm(block.norm2)
        dim = attn.qkv.in_features
        w = attn.qkv.weight.detach().double().clone()
        b = (
            attn.qkv.bias.detach().double().clone()
            if attn.qkv.bias is not None
            else torch.zeros(3 * dim, dtype=torch.float64, device=w.device)
        )
        # SDPA's own scale would multiply the scores; folding it into q is exact and free
        w[:dim] *= attn.scale
        b[:dim] *= attn.scale
        ref = attn.qkv.weight
        self.buffer("qkv_weight", w.to(ref.dtype))
        self.buffer("qkv_bias", b.to(ref.dtype))
        self.buffer("proj_weight", attn.proj.weight)
        self.buffer("proj_bias", attn.proj.bias)
        self.buffer("bias", attn.position_bias().detach()[None].contiguous())  # (1, heads, n, n)
        self.buffer("fc1_weight", block.mlp.fc1.weight)
        self.buffer("fc1_bias", block.mlp.fc1.bias)
        self.buffer("fc2_weight", block.mlp.fc2.weight)
        self.buffer("fc2_bias", block.mlp.fc2.bias)

    CHUNK_BYTES = 8 << 20
    """Largest intermediate (qkv, or the MLP's hidden layer) of one chunk of windows or tokens.
    Whole, they grow with the image (qkv of SwinIR-S at 256x256: 47 MB, past glibc's 32 MB mmap
    ceiling, so page-faulted afresh in every block); in chunks they stay small and cached."""

    def forward(self, x: Tensor, layout: WindowLayout) -> Tensor:
        """x: tokens (B, H*W, C), contiguous; updated in place and returned."""
        b, tokens_n, c = x.shape
        n = self.window * self.window
        per_token = max(3 * c, self.fc1_weight.shape[0]) * x.element_size() * b
        chunk_tokens = max(n, self.CHUNK_BYTES // per_token)
        normed = self.norm1(x)
        for lo, hi, mask in layout.groups:
            bias = self.bias if mask is None else self.bias + mask
            step = max(1, chunk_tokens // n)
            for w0 in range(lo, hi, step):
                order = layout.order[w0 * n : min(hi, w0 + step) * n]
                x.index_add_(1, order, self._attention(normed.index_select(1, order), bias))
        del normed
        for t0 in range(0, tokens_n, chunk_tokens):
            part = x[:, t0 : t0 + chunk_tokens]
            hidden = F.gelu(F.linear(self.norm2(part), self.fc1_weight, self.fc1_bias))
            part.add_(F.linear(hidden, self.fc2_weight, self.fc2_bias))
        return x

    def _attention(self, tokens: Tensor, bias: Tensor) -> Tensor:
        """proj(attention) of whole windows of tokens (B, windows * n, C), all with `bias`."""
        b, m, c = tokens.shape
        n = self.window * self.window
        heads, d, windows = self.heads, c // self.heads, m // n
        qkv = F.linear(tokens, self.qkv_weight, self.qkv_bias)
        qkv = qkv.view(b * windows, n, 3, heads, d).permute(2, 0, 3, 1, 4)  # (3, bW, h, n, d)
        q, k, v = qkv.unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        attended = y.transpose(1, 2).reshape(b, m, c)
        return F.linear(attended, self.proj_weight, self.proj_bias)


class FusedResiConv(FusedModule):
    """The conv closing an RSTB and the body ("1conv", or "3conv"'s 3x3-1x1-3x3 with
    LeakyReLU post-ops), its residual added in the last conv's kernel."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        layers = [conv] if isinstance(conv, nn.Conv2d) else [conv[0], conv[2], conv[4]]
        self.convs = nn.ModuleList(FusedConv(c) for c in layers)

    def add(self, image: Tensor, residual: Tensor) -> Tensor:
        """conv(image) + residual, written into `residual` (channels-last)."""
        y = image
        for conv in self.convs[:-1]:
            y = conv(y, _LEAKY)
        return self.convs[-1].add(y, residual, overwrite=True)


class FusedSwinIR(FusedModule):
    """SwinIR for inference, built from a trained `SwinIR`; same outputs to float rounding."""

    def __init__(self, net: SwinIR) -> None:
        super().__init__()
        self.window, self.scale = net.window_size, net.upscale
        self.upsampler, self.img_range = net.upsampler, float(net.img_range)
        mean = net.mean.detach().reshape(-1).double()
        channels = net.conv_first.in_channels
        mean = mean.expand(channels) if mean.numel() == 1 else mean
        ref = net.conv_first.weight
        self.buffer("mean", mean.to(ref.dtype).view(1, -1, 1, 1))
        self.shift = net.shift_size
        self._layouts: dict[tuple[Any, ...], tuple[WindowLayout, WindowLayout]] = {}
        self.conv_first = FusedConv(net.conv_first)
        self.embed_norm = (
            FusedLayerNorm(net.patch_embed.norm) if net.patch_embed.norm is not None else None
        )
        self.layers = nn.ModuleList(
            nn.ModuleList(FusedSwinBlock(blk) for blk in layer.residual_group.blocks)
            for layer in net.layers
        )
        self.layer_convs = nn.ModuleList(FusedResiConv(layer.conv) for layer in net.layers)
        self.norm = FusedLayerNorm(net.norm)
        self.conv_after_body = FusedResiConv(net.conv_after_body)
        r = self.img_range
        if self.upsampler == "pixelshuffledirect":
            last, s = net.upsample[0], self.scale
            self.last = self._output_conv(last, mean, r, repeat=s * s)
            self.shuffle = ChannelsLastPixelShuffle(s)
        else:
            self.before = FusedConv(net.conv_before_upsample[0])
            self.before_act = Act.of(net.conv_before_upsample[1])
            if self.upsampler == "pixelshuffle":
                layers = list(net.upsample)
                self.stages = nn.ModuleList(FusedConv(m) for m in layers[::2])
                self.stage_factors = [m.upscale_factor for m in layers[1::2]]
            else:  # nearest+conv
                ups = [net.conv_up1] + ([net.conv_up2] if self.scale == 4 else [])
                self.ups = nn.ModuleList(FusedConv(c) for c in ups)
                self.conv_hr = FusedConv(net.conv_hr)
                self.up_act = Act.of(net.lrelu)
            self.last = self._output_conv(net.conv_last, mean, r, repeat=1)

    @staticmethod
    def _output_conv(conv: nn.Conv2d, mean: Tensor, img_range: float, repeat: int) -> FusedConv:
        """The last conv with `/ img_range + mean` folded in (exact: it follows the conv).
        `repeat`: output channels per colour (s^2 before a pixel shuffle, colour-major)."""
        fused = FusedConv(conv)
        w = conv.weight.detach().double() / img_range
        b = conv.bias.detach().double() / img_range + mean.to(w.device).repeat_interleave(repeat)
        fused.weight = channels_last(w.to(conv.weight.dtype))
        fused.bias = b.to(conv.weight.dtype)
        return fused

    def forward(self, x: Tensor) -> Tensor:
        h0, w0 = x.shape[-2:]
        x, _, _ = pad_to_multiple(x, self.window)
        n, _, h, w = x.shape
        # (x - mean) * range on the 3-channel input: one small pass (folding it into
        # conv_first would be wrong on the border, where the conv pads the normalised image)
        x = channels_last((x - self.mean) * self.img_range)
        feat = self.conv_first(x)  # channels-last: its memory is the token sequence
        c = feat.shape[1]
        tokens = feat.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view
        norm = self.embed_norm
        tokens = norm(tokens) if norm is not None else tokens.clone()  # feat must survive
        layouts = self._layouts_for(h, w, feat)
        for blocks, conv in zip(self.layers, self.layer_convs, strict=True):
            y = tokens.clone()
            for block in blocks:
                y = block(y, layouts[1 if block.shift else 0])
            conv.add(_image(y, h, w), _image(tokens, h, w))  # tokens += conv(y), in place
        body = _image(self.norm(tokens), h, w)
        y = self.conv_after_body.add(body, feat)
        return self._tail(y)[..., : h0 * self.scale, : w0 * self.scale]

    def _layouts_for(self, h: int, w: int, like: Tensor) -> tuple[WindowLayout, WindowLayout]:
        """The (unshifted, shifted) window layouts of an h x w map; a few sizes are kept (the
        tiles of one image share one size)."""
        key = (h, w, like.device, like.dtype)
        layouts = self._layouts.get(key)
        if layouts is None:
            if len(self._layouts) >= _LAYOUT_CACHE:
                self._layouts.pop(next(iter(self._layouts)))
            layouts = (
                WindowLayout(h, w, self.window, 0, like),
                WindowLayout(h, w, self.window, self.shift, like),
            )
            self._layouts[key] = layouts
        return layouts

    def _tail(self, y: Tensor) -> Tensor:
        if self.upsampler == "pixelshuffledirect":
            return self.shuffle(self.last(y))
        y = self.before(y, self.before_act)
        if self.upsampler == "pixelshuffle":
            for conv, s in zip(self.stages, self.stage_factors, strict=True):
                y = channels_last(F.pixel_shuffle(conv(y), s))
        else:
            for conv in self.ups:
                y = conv(channels_last(F.interpolate(y, scale_factor=2, mode="nearest")))
                y = self.up_act(y)
            y = self.conv_hr(y, self.up_act)
        return self.last(y).contiguous()


def _image(tokens: Tensor, h: int, w: int) -> Tensor:
    """Tokens (B, H*W, C) as a channels-last (B, C, H, W) image over the same memory."""
    n, _, c = tokens.shape
    return tokens.view(n, h, w, c).permute(0, 3, 1, 2)


@fused_form(SwinIR)
def fuse_swinir(net: SwinIR) -> FusedSwinIR:
    return FusedSwinIR(net)


__all__ = ["FusedSwinBlock", "FusedSwinIR", "fuse_swinir"]
