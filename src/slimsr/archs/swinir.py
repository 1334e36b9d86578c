"""SwinIR: classical SwinIR-M, lightweight SwinIR-S, and the compressed SwinIRmini.

Module names follow the official `network_swinir.py` (BasicSR's `swinir_arch.py` has the same
keys), so official and BasicSR checkpoints load with `strict=True`. Two persistent buffers travel
with the weights and must match in shape: every block's `relative_position_index` and, in every
odd (shifted-window) block, `attn_mask`, whose first dimension is the number of windows of the
*training* patch (`img_size`, 48 or 64 in the official releases). Input RGB in [0,1]; the network
subtracts the DIV2K mean itself, as a plain tensor that is not part of the state dict.

Any input size works: the forward pass reflect-pads H and W to a multiple of the window size and
crops the output, like the official code. For a padded size other than `img_size`, the shifted-
window mask is rebuilt from the run-time H and W with tensor ops (once per forward, shared by
all shifted blocks), so traced or exported graphs keep H and W dynamic.

Not supported, as no official SR model uses them: absolute position embedding (`ape`), patch
sizes other than 1, `img_size` not a multiple of the window, and the denoising / JPEG variants
(upscale 1, no upsampler).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimsr.archs._compression import (
    ArchSpec,
    Built,
    CompressionError,
    Dims,
    check_net,
    weights_under,
)
from slimsr.archs._detect import count_indices, has_all, indices, pixelshuffle_scale
from slimsr.archs.blocks import (
    DIV2K_MEAN,
    OneStepUpsampler,
    PixelShuffleUpsampler,
    conv3x3,
    pad_to_multiple,
)
from slimsr.registry import Detection, register_detector, register_family, register_model

PAPER = "Liang et al., SwinIR: Image Restoration Using Swin Transformer, ICCVW 2021"
MINI_PAPER = "Jiang et al., Compressing Deep Image Super-resolution Models, PCS 2024"
UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv")
RESI_CONNECTIONS = ("1conv", "3conv")
MASK_VALUE = -100.0
"""The official mask value between tokens of different regions (finite, unlike -inf)."""

ATTENTION_IMPLS = ("math", "sdpa")

MASK_CACHE_SIZE = 8
"""Shifted-window masks kept per model, by feature-map size (oldest dropped first)."""


def _capturing_graph() -> bool:
    """True while a graph is being captured (jit trace, dynamo / torch.export, ONNX export).

    Shapes are symbolic then, so a Python comparison of H and W with `img_size` would bake the
    example size into the graph; the mask is always rebuilt from the symbolic size instead.
    """
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


# -- window geometry -------------------------------------------------------------------------


def relative_position_index(window: int) -> Tensor:
    """(w², w²) int64 index into the (2w-1)² bias table for every (query, key) token pair.

    A pair's relative offset (dy, dx), both in [-(w-1), w-1], is shifted to [0, 2w-2] and
    flattened row-major, which is the layout of the official table.
    """
    grid = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack(grid).flatten(1)  # (2, w²): (row, col) of each token
    offset = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, w², w²)
    return offset[0] * (2 * window - 1) + offset[1]


# Reshapes spell every size out (no -1): torch.export cannot prove that an inferred size such as
# numel / (H // (H // w) * ...) is the batch, and would guard on it, specialising the batch size.


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) -> (B * nW, w², C): non-overlapping windows, row-major over the image."""
    b, h, w, c = x.shape
    rows, cols = h // window, w // window
    x = x.view(b, rows, window, cols, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b * rows * cols, window * window, c)


def window_merge(windows: Tensor, window: int, b: Any, h: Any, w: Any) -> Tensor:
    """Inverse of `window_partition`: (B * nW, w², C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def _shift_bands(length: Any, window: int, shift: int, device: torch.device | None) -> Tensor:
    """Region id (0, 1, 2) of each row (or column) of the cyclically shifted feature map.

    After rolling by -shift, positions [L-w, L-s) are the last real window's start and
    [L-s, L) hold content wrapped around from the opposite border; the rest is region 0.
    """
    pos = torch.arange(length, device=device)
    return (pos >= length - window).long() + (pos >= length - shift).long()


def masked_as_minus_inf(mask: Tensor) -> Tensor:
    """The mask with its masked pairs (the official -100) as -inf.

    Softmax then gives those pairs exactly 0 instead of exp(-100) ~ 4e-44, a subnormal float32:
    x86 CPUs compute on subnormals 10-100x slower, and the training backward multiplies by them
    in every shifted block (SwinIRmini's training step measured ~2x as long with -100). The
    outputs are the same to float32 rounding (the dropped terms are ~1e-44 of their sums).
    """
    return mask.masked_fill(mask <= MASK_VALUE, float("-inf"))


def shifted_window_mask(
    h: Any,
    w: Any,
    window: int,
    shift: int,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Additive attention mask (nW, w², w²) of the shifted windows of an H x W feature map.

    Tokens that the cyclic shift put into one window from different image regions must not
    attend to each other: such pairs get -100, all others 0 (the official values). Built from
    comparisons on `arange(H)`, `arange(W)`, so H and W may be symbolic sizes.
    """
    rows = _shift_bands(h, window, shift, device)
    cols = _shift_bands(w, window, shift, device)
    region = rows[:, None] * 3 + cols[None, :]  # (H, W)
    region = window_partition(region[None, :, :, None], window).squeeze(-1)  # (nW, w²)
    differ = region[:, :, None] != region[:, None, :]
    return torch.zeros_like(differ, dtype=dtype).masked_fill_(differ, MASK_VALUE)


# -- modules -----------------------------------------------------------------------------------


class DropPath(nn.Module):
    """Stochastic depth: while training, drop a sample's whole residual branch (no parameters)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep


class Mlp(nn.Module):
    """Token-wise feed-forward: fc1 -> GELU -> fc2 (keys `fc1`, `fc2`)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, plus a learned relative-position bias."""

    def __init__(
        self,
        dim: int,
        window: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads)
        )
        # Persistent: the official checkpoints carry it, so strict loading expects it.
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.use_sdpa = False
        """Attention through `F.scaled_dot_product_attention` (`SwinIR.set_attention`)."""
        _trunc_normal(self.relative_position_bias_table)

    def position_bias(self) -> Tensor:
        """(heads, w², w²) bias gathered from the table."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B * nW, w², C); mask: (nW, w², w²) or None for unshifted windows."""
        bw, n, c = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).view(bw, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        # Bias and mask are summed while small ((nW, heads, w², w²)), then added once to the
        # (B * nW, heads, w², w²) scores: one pass over the largest tensor instead of two.
        bias = self.position_bias()
        windows = 1 if mask is None else mask.shape[0]
        if mask is not None:
            bias = bias[None] + masked_as_minus_inf(mask)[:, None]
        if self.use_sdpa:
            out = self._sdpa(q, k, v, bias.reshape(windows, heads, n, n), windows)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = (attn.view(bw // windows, windows, heads, n, n) + bias).view(bw, heads, n, n)
            attn = self.attn_drop(attn.softmax(dim=-1))
            out = attn @ v
        out = out.transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(out))

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, windows: int) -> Tensor:
        """The same attention through `F.scaled_dot_product_attention` (fused kernels): the
        windows of one image are folded into the head axis so the (nW, heads) bias broadcasts
        over the batch without being copied per image."""
        bw, heads, n, d = q.shape
        fold = (bw // windows, windows * heads, n, d)
        out = F.scaled_dot_product_attention(
            q.reshape(fold),
            k.reshape(fold),
            v.reshape(fold),
            attn_mask=bias.reshape(1, windows * heads, n, n),
            dropout_p=self.attn_drop.p if self.training else 0.0,
            scale=self.scale,
        )
        return out.view(bw, heads, n, d)


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention and an MLP, each pre-normed with a residual.

    Odd blocks shift the windows by half a window so information crosses window borders; they
    keep the mask for `img_size` as the persistent buffer `attn_mask` (official layout).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        shift: int,
        img_size: tuple[int, int],
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        stored_mask: Tensor | None = None,
    ) -> None:
        """`stored_mask`: the mask for `img_size` if the caller already has it (else built)."""
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, _mlp_hidden(dim, mlp_ratio), drop)
        if shift and stored_mask is None:
            stored_mask = shifted_window_mask(*img_size, window, shift)
        # Registering None puts nothing in the state dict (unshifted blocks have no mask).
        self.register_buffer("attn_mask", stored_mask if shift else None)

    def forward(self, x: Tensor, size: tuple[Any, Any], mask: Tensor | None = None) -> Tensor:
        """x: (B, H*W, C). `mask`: the shifted-window mask for `size`, or None to use the
        stored one (valid only when `size` is `img_size`)."""
        h, w = size
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
            mask = self.attn_mask if mask is None else mask
        else:
            mask = None
        y = self.attn(window_partition(y, self.window), mask)
        y = window_merge(y, self.window, b, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + self.drop_path(y.reshape(x.shape))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinLayer(nn.Module):
    """A stack of blocks alternating plain and shifted windows (official `BasicLayer`)."""

    def __init__(self, blocks: list[SwinTransformerBlock]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor, size: tuple[Any, Any], mask: Tensor | None) -> Tensor:
        for block in self.blocks:
            x = block(x, size, mask)
        return x


def _resi_conv(dim: int, kind: str) -> nn.Module:
    """The conv closing each RSTB and the body: one 3x3, or the lighter 3x3-1x1-3x3 bottleneck."""
    if kind == "1conv":
        return conv3x3(dim, dim)
    if kind == "3conv":
        return nn.Sequential(
            conv3x3(dim, dim // 4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim // 4, dim // 4, 1),
            nn.LeakyReLU(0.2, inplace=True),
            conv3x3(dim // 4, dim),
        )
    raise ValueError(f"unknown resi_connection {kind!r}; expected one of {RESI_CONNECTIONS}")


class RSTB(nn.Module):
    """Residual Swin Transformer block: Swin layers, a conv on the image-shaped features, input."""

    def __init__(self, layer: SwinLayer, dim: int, resi_connection: str) -> None:
        super().__init__()
        self.residual_group = layer
        self.conv = _resi_conv(dim, resi_connection)

    def forward(self, x: Tensor, size: tuple[Any, Any], mask: Tensor | None) -> Tensor:
        y = self.residual_group(x, size, mask)
        y = _tokens_to_image(y, *size)
        return self.conv(y).flatten(2).transpose(1, 2) + x


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) -> tokens (B, H*W, C), then LayerNorm (`patch_embed.norm`); patch 1."""

    def __init__(self, dim: int, norm: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(2).transpose(1, 2)
        return x if self.norm is None else self.norm(x)


def _crop(x: Tensor, h: Any, w: Any) -> Tensor:
    """The top-left h x w of x. While capturing a graph, an index gather instead of a slice:
    torch.export would otherwise guard on whether the slice is a no-op (padded size == size)
    and so specialise the graph to inputs that did, or did not, need padding."""
    if not _capturing_graph():
        return x[..., :h, :w]
    x = x.index_select(-2, torch.arange(h, device=x.device))
    return x.index_select(-1, torch.arange(w, device=x.device))


def _tokens_to_image(x: Tensor, h: Any, w: Any) -> Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def _drop_path_rates(top: float, n: int) -> list[float]:
    """Stochastic-depth rate of each block, rising linearly from 0 to `top` (official rule)."""
    return [top * k / (n - 1) if n > 1 else 0.0 for k in range(n)]


def _mlp_hidden(dim: int, ratio: float) -> int:
    # The official code truncates dim * ratio; the epsilon only absorbs float error in ratios
    # read back from a checkpoint (hidden / dim).
    return int(dim * ratio + 1e-6)


class SwinIR(nn.Module):
    """SwinIR for super-resolution (official layout and value range: RGB in [0,1] * img_range).

    Defaults are the lightweight configuration; the registered variants set every size
    hyper-parameter explicitly.
    """

    def __init__(
        self,
        scale: int,
        *,
        img_size: int | Sequence[int] = 64,
        in_chans: int = 3,
        embed_dim: int = 60,
        depths: Sequence[int] = (6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6),
        window_size: int = 8,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        patch_norm: bool = True,
        img_range: float = 1.0,
        upsampler: str = "pixelshuffledirect",
        resi_connection: str = "1conv",
        num_feat: int = 64,
    ) -> None:
        super().__init__()
        size = _check_config(scale, img_size, embed_dim, depths, num_heads, window_size, upsampler)
        self.upscale = scale
        self.img_size = size
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.embed_dim = embed_dim
        self.upsampler = upsampler
        self.img_range = img_range
        # A plain tensor, not a buffer: the official state dicts do not contain the mean.
        self.mean = (
            torch.tensor(DIV2K_MEAN).view(1, 3, 1, 1) if in_chans == 3 else torch.zeros(1, 1, 1, 1)
        )
        self._any_shift = self.shift_size > 0 and max(depths) > 1
        self._masks: dict[tuple[Any, ...], Tensor] = {}

        self.conv_first = conv3x3(in_chans, embed_dim)
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = _drop_path_rates(drop_path_rate, sum(depths))
        mask = shifted_window_mask(*size, window_size, self.shift_size) if self._any_shift else None
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
            first = sum(depths[:i])
            blocks = [
                SwinTransformerBlock(
                    embed_dim,
                    heads,
                    window_size,
                    shift=0 if j % 2 == 0 else self.shift_size,
                    img_size=size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=rates[first + j],
                    stored_mask=None if mask is None or j % 2 == 0 else mask.clone(),
                )
                for j in range(depth)
            ]
            self.layers.append(RSTB(SwinLayer(blocks), embed_dim, resi_connection))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = _resi_conv(embed_dim, resi_connection)
        self._build_tail(scale, embed_dim, in_chans, num_feat)
        self.apply(_init_weights)

    def _build_tail(self, scale: int, embed_dim: int, out_ch: int, num_feat: int) -> None:
        if self.upsampler == "pixelshuffledirect":  # lightweight: one conv + PixelShuffle
            self.upsample = OneStepUpsampler(embed_dim, out_ch, scale)
            return
        self.conv_before_upsample = nn.Sequential(
            conv3x3(embed_dim, num_feat), nn.LeakyReLU(inplace=True)
        )
        if self.upsampler == "pixelshuffle":  # classical
            self.upsample = PixelShuffleUpsampler(scale, num_feat)
        else:  # "nearest+conv", real-world SR: nearest x2 steps + convs (fewer artefacts)
            self.conv_up1 = conv3x3(num_feat, num_feat)
            if scale == 4:
                self.conv_up2 = conv3x3(num_feat, num_feat)
            self.conv_hr = conv3x3(num_feat, num_feat)
            self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        self.conv_last = conv3x3(num_feat, out_ch)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Any H x W: pad to a multiple of the window (`pad_to_multiple`; a no-op for inputs
        `SRModel` already padded), run, crop to (H*s, W*s)."""
        h, w = x.shape[-2:]
        x, _, _ = pad_to_multiple(x, self.window_size, branch_free=_capturing_graph())
        return _crop(self.forward_aligned(x), h * self.upscale, w * self.upscale)

    def forward_aligned(self, x: Tensor) -> Tensor:
        """The network proper, for H and W already multiples of `window_size`."""
        mean = self.mean.to(x)
        x = (x - mean) * self.img_range
        feat = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(feat)) + feat
        if self.upsampler == "pixelshuffledirect":
            x = self.upsample(x)
        elif self.upsampler == "pixelshuffle":
            x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        else:
            x = self.conv_before_upsample(x)
            x = self.lrelu(self.conv_up1(F.interpolate(x, scale_factor=2, mode="nearest")))
            if self.upscale == 4:
                x = self.lrelu(self.conv_up2(F.interpolate(x, scale_factor=2, mode="nearest")))
            x = self.conv_last(self.lrelu(self.conv_hr(x)))
        return x / self.img_range + mean

    def forward_features(self, x: Tensor) -> Tensor:
        """Deep features: patch embedding, the RSTBs, LayerNorm, back to (B, C, H, W)."""
        h, w = x.shape[-2:]
        mask = self.attention_mask(h, w, x)
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x, (h, w), mask)
        return _tokens_to_image(self.norm(x), h, w)

    def attention_mask(self, h: Any, w: Any, like: Tensor) -> Tensor | None:
        """The shifted-window mask for an h x w map, or None where the stored buffers apply
        (eager run at `img_size`) or no block shifts. Computed once per forward."""
        if not self._any_shift:
            return None
        if _capturing_graph():
            return shifted_window_mask(
                h, w, self.window_size, self.shift_size, device=like.device, dtype=like.dtype
            )
        if (h, w) == self.img_size:
            return None
        # Training crops are one size: built once per size, not once per step (a few entries
        # at most; validation images add one each, and they are small).
        key = (h, w, like.device, like.dtype)
        mask = self._masks.get(key)
        if mask is None:
            if len(self._masks) >= MASK_CACHE_SIZE:
                self._masks.pop(next(iter(self._masks)))
            mask = shifted_window_mask(
                h, w, self.window_size, self.shift_size, device=like.device, dtype=like.dtype
            )
            self._masks[key] = mask
        return mask

    def set_attention(self, impl: str) -> None:
        """ "math": the official matmul-softmax-matmul; "sdpa": `F.scaled_dot_product_attention`
        (same values to float rounding; which is faster depends on the head size and the CPU:
        see docs/training.md)."""
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, not {impl!r}")
        for m in self.modules():
            if isinstance(m, WindowAttention):
                m.use_sdpa = impl == "sdpa"


def _check_config(
    scale: int,
    img_size: int | Sequence[int],
    embed_dim: int,
    depths: Sequence[int],
    num_heads: Sequence[int],
    window_size: int,
    upsampler: str,
) -> tuple[int, int]:
    """Reject configurations the official code cannot run either; return img_size as (H, W)."""
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
    if len(size) != 2:
        raise ValueError(f"img_size must be an int or (H, W), got {img_size!r}")
    if any(s % window_size or s <= window_size for s in size):
        raise ValueError(
            f"img_size {img_size} must be a multiple of window_size {window_size} and larger"
        )
    if len(depths) != len(num_heads) or not depths:
        raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} must pair up")
    if any(embed_dim % h for h in num_heads):
        raise ValueError(f"embed_dim {embed_dim} must be divisible by every num_heads entry")
    if upsampler not in UPSAMPLERS:
        raise ValueError(f"unknown upsampler {upsampler!r}; expected one of {UPSAMPLERS}")
    if upsampler == "nearest+conv" and scale not in (2, 4):
        raise ValueError(f"upsampler 'nearest+conv' supports x2 and x4, not x{scale}")
    return size[0], size[1]


@torch.no_grad()
def _trunc_normal(t: Tensor, std: float = 0.02) -> None:
    """N(0, std²) truncated to [-2, 2], as the official init. With std 0.02 the bounds sit at
    100 sigma, so a clamped normal is the same distribution and much faster to draw than
    `nn.init.trunc_normal_` (seconds for SwinIR-M)."""
    t.normal_(0.0, std).clamp_(-2.0, 2.0)


def _init_weights(m: nn.Module) -> None:
    """Official initialisation: truncated-normal Linear weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        _trunc_normal(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# -- variants ----------------------------------------------------------------------------------

VARIANTS: dict[str, dict[str, Any]] = {
    "swinir_m": {
        "embed_dim": 180,
        "depths": (6,) * 6,
        "num_heads": (6,) * 6,
        "window_size": 8,
        "mlp_ratio": 2.0,
        "img_size": 48,  # the DIV2K s48w8 release; the DF2K release uses 64
        "upsampler": "pixelshuffle",
        "resi_connection": "1conv",
    },
    "swinir_s": {
        "embed_dim": 60,
        "depths": (6,) * 4,
        "num_heads": (6,) * 4,
        "window_size": 8,
        "mlp_ratio": 2.0,
        "img_size": 64,
        "upsampler": "pixelshuffledirect",
        "resi_connection": "1conv",
    },
    "swinirmini": {
        "embed_dim": 24,
        "depths": (4, 4, 4),
        "num_heads": (6, 6, 6),
        "window_size": 8,
        "mlp_ratio": 2.0,
        "img_size": 64,
        "upsampler": "pixelshuffledirect",
        "resi_connection": "1conv",
    },
}

# spandrel, which runs the official checkpoints, marks SwinIR as unsafe in fp16; bf16 is fine.
_FACTS: dict[str, Any] = {
    "family": "swinir",
    "scales": (2, 3, 4),
    "input_range": 1.0,
    "default_scale": 4,
    "size_multiple": 8,
    "supports_fp16": False,
}


def _build(name: str, scale: int, kwargs: dict[str, Any]) -> SwinIR:
    return SwinIR(scale, **{**VARIANTS[name], **kwargs})


# -- compression (slimsr.compress) ------------------------------------------------------------


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


class SwinIRSpec(ArchSpec):
    """SwinIR-M/S and SwinIRmini: N_c = embed_dim, N_l = Swin layers per RSTB, N_b = RSTBs.

    Each RSTB is N_l Swin transformer layers plus the conv before its output. The head count is
    kept, so N_c' must be a multiple of it. The compact model is `swinirmini` with the
    original's other settings (window, MLP ratio, upsampler, img_size) where they differ.
    """

    family = "swinir"
    deep_feature = "the RSTBs `layers.*` (weights only, LayerNorm weights included)"
    meaning = "N_c = embed_dim, N_l = Swin layers per RSTB, N_b = RSTBs"

    def _heads(self, net: SwinIR) -> list[int]:
        return [layer.residual_group.blocks[0].attn.num_heads for layer in net.layers]

    def dims(self, model: Built) -> Dims:
        net = check_net(model, SwinIR, self)
        depths = [len(layer.residual_group.blocks) for layer in net.layers]
        if len(set(depths)) != 1:
            raise CompressionError(
                f"{model.name}: RSTBs of unequal depth {depths} have no single N_l to size"
            )
        return Dims(net.embed_dim, depths[0], len(depths))

    def is_deep_feature(self, name: str) -> bool:
        return weights_under(name, ("layers.",))

    def channel_multiple(self, model: Built) -> int:
        return math.lcm(*self._heads(check_net(model, SwinIR, self)))

    def compact(self, model: Built, dims: Dims) -> tuple[str, dict[str, Any]]:
        heads = self._heads(check_net(model, SwinIR, self))[0]
        config = {**VARIANTS[model.name], **model.kwargs}
        config.update(
            embed_dim=dims.channels,
            depths=[dims.layers] * dims.blocks,
            num_heads=[heads] * dims.blocks,
        )
        mini = VARIANTS["swinirmini"]
        kwargs = {
            k: _as_list(v)
            for k, v in config.items()
            if k not in mini or _as_list(mini[k]) != _as_list(v)
        }
        return "swinirmini", kwargs


# CPU layout (channels_last / contiguous time at x2 / x3 / x4): swinir_s 0.92 / 0.95 / 0.94,
# swinirmini 0.95 / 0.94 / 0.97. Tiling: attention windows are aligned to the image origin
# (and shifted windows cross tile edges), so a tile sees other windows than the whole image.
register_family("swinir", cpu_channels_last=True, tiling="approximate", compression=SwinIRSpec())


@register_model(
    **{**_FACTS, "scales": (2, 3, 4, 8)},  # the official classical release includes x8
    paper=PAPER,
    params_note=(
        "paper: 11.8M; our count includes the 48,600 (36 x 225 x 6) relative_position_bias_table "
        "parameters (without: 11,703,887 / 11,888,527 / 11,851,599 at x2/x3/x4); img_size 48 "
        "or 64 changes only the attn_mask buffers"
    ),
    aliases=("swinir", "swinir_classical"),
)
def swinir_m(scale: int, **kwargs: Any) -> SwinIR:
    """SwinIR-M (classical SR): 180 channels, 6 RSTBs x 6 blocks, window 8, pixelshuffle tail."""
    return _build("swinir_m", scale, kwargs)


@register_model(
    **_FACTS,
    paper=PAPER,
    params_note=(
        "paper 878K/886K/897K = our 910,152 / 918,267 / 929,628 minus the 32,400 "
        "(24 x 225 x 6) relative_position_bias_table parameters"
    ),
    aliases=("swinir_lightweight", "swinir_light"),
)
def swinir_s(scale: int, **kwargs: Any) -> SwinIR:
    """SwinIR-S (lightweight SR): 60 channels, 4 RSTBs x 6 blocks, window 8, one-step upsampler."""
    return _build("swinir_s", scale, kwargs)


@register_model(
    **{**_FACTS, "default_scale": 2},  # the compression paper reports x2
    paper=MINI_PAPER,
    params_note=(
        "paper 98.8K (x2) includes the 16,200 (12 x 225 x 6) relative_position_bias_table "
        "parameters (82,668 without)"
    ),
    aliases=("swinir_mini",),
)
def swinirmini(scale: int, **kwargs: Any) -> SwinIR:
    """SwinIRmini: 24 channels, 3 RSTBs x 4 blocks, 6 heads (compressed SwinIR-S)."""
    return _build("swinirmini", scale, kwargs)


# -- detection ---------------------------------------------------------------------------------

_BLOCK = "layers.{i}.residual_group.blocks.{j}."
_TABLE = "attn.relative_position_bias_table"
_INDEX = "attn.relative_position_index"
_MASK = "attn_mask"


def _key(i: int, j: int, leaf: str) -> str:
    return _BLOCK.format(i=i, j=j) + leaf


def _class_defaults() -> dict[str, Any]:
    params = inspect.signature(SwinIR.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


@register_detector("swinir")
def detect_swinir(sd: dict[str, Tensor]) -> Detection | None:
    """Official / BasicSR SwinIR keys (`conv_first`, `layers.i.residual_group.blocks.j.attn`)."""
    if not has_all(sd, ("conv_first.weight", _key(0, 0, _TABLE))):
        return None
    try:
        return _detect(sd)
    except (KeyError, IndexError, ValueError, TypeError):  # inconsistent shapes: not ours
        return None


def _detect(sd: dict[str, Tensor]) -> Detection | None:
    embed_dim, in_chans = sd["conv_first.weight"].shape[:2]
    layer_ids = indices(
        sd, r"layers\.(\d+)\.residual_group\.blocks\.0\.attn\.relative_position_bias_table"
    )
    if layer_ids != list(range(len(layer_ids))):
        return None
    depths = [
        count_indices(
            sd, rf"layers\.{i}\.residual_group\.blocks\.(\d+)\.attn\.relative_position_bias_table"
        )
        for i in layer_ids
    ]
    num_heads = [sd[_key(i, 0, _TABLE)].shape[1] for i in layer_ids]
    side = math.isqrt(sd[_key(0, 0, _TABLE)].shape[0])  # table rows = (2w - 1)²
    if side * side != sd[_key(0, 0, _TABLE)].shape[0] or side % 2 == 0:
        return None
    window = (side + 1) // 2
    index = sd.get(_key(0, 0, _INDEX))
    if index is not None and tuple(index.shape) != (window * window,) * 2:
        return None
    found: dict[str, Any] = {
        "embed_dim": embed_dim,
        "in_chans": in_chans,
        "depths": depths,
        "num_heads": num_heads,
        "window_size": window,
        "mlp_ratio": sd[_key(0, 0, "mlp.fc1.weight")].shape[0] / embed_dim,
        "qkv_bias": _key(0, 0, "attn.qkv.bias") in sd,
        "patch_norm": "patch_embed.norm.weight" in sd,
        "resi_connection": "3conv" if "conv_after_body.0.weight" in sd else "1conv",
    }
    # Not recoverable from the weights, left at the official defaults: qk_scale (None ->
    # head_dim^-0.5), img_range (1.0), dropout and drop-path rates (no effect in eval).
    tail = _read_tail(sd, embed_dim, in_chans)
    if tail is None:
        return None
    scale, tail_kwargs = tail
    found.update(tail_kwargs)
    img_size = _read_img_size(sd, depths, window)
    if img_size is not None:
        found["img_size"] = img_size

    name, kwargs = _closest_variant(found)
    built_img = kwargs.get("img_size", VARIANTS[name]["img_size"])
    state = _with_buffers(sd, depths, window, (built_img, built_img), img_size is None)
    return Detection(name, scale, kwargs, state)


def _read_tail(sd: dict[str, Tensor], embed_dim: int, in_chans: int) -> tuple[int, dict] | None:
    """(scale, tail hyper-parameters) from the reconstruction keys; None for no upsampler."""
    if "conv_before_upsample.0.weight" in sd:
        num_feat = sd["conv_before_upsample.0.weight"].shape[0]
        if "conv_up1.weight" in sd:
            scale = 4 if "conv_up2.weight" in sd else 2
            return scale, {"upsampler": "nearest+conv", "num_feat": num_feat}
        convs = indices(sd, r"upsample\.(\d+)\.weight")
        if not convs or "conv_last.weight" not in sd:
            return None
        ratio = sd["upsample.0.weight"].shape[0] // num_feat
        if ratio == 9 and len(convs) == 1:
            scale = 3
        elif ratio == 4:
            scale = 2 ** len(convs)
        else:
            return None
        return scale, {"upsampler": "pixelshuffle", "num_feat": num_feat}
    if "upsample.0.weight" in sd and sd["upsample.0.weight"].shape[1] == embed_dim:
        scale = pixelshuffle_scale(sd["upsample.0.weight"].shape[0], in_chans)
        return None if scale is None else (scale, {"upsampler": "pixelshuffledirect"})
    return None  # denoising / JPEG SwinIR (upscale 1): not a super-resolution model


def _read_img_size(sd: dict[str, Tensor], depths: list[int], window: int) -> int | None:
    """Training patch size from a stored mask: (img_size / window)² windows; None if absent
    or not square (then the masks are rebuilt, which gives identical results)."""
    for i, depth in enumerate(depths):
        mask = sd.get(_key(i, 1, _MASK)) if depth > 1 else None
        if mask is not None:
            side = math.isqrt(mask.shape[0])
            return side * window if side * side == mask.shape[0] else None
    return None


def _closest_variant(found: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The variant whose defaults differ least, and the hyper-parameters that differ from it.

    Ranked by: same kind of tail (the conv-then-upsample tails of SwinIR-M, i.e. pixelshuffle
    and nearest+conv, versus the one-step tail of the lightweight models), then fewest
    differing hyper-parameters, then nearest width.
    """
    base = _class_defaults()

    def differing(name: str) -> dict[str, Any]:
        defaults = {**base, **VARIANTS[name]}
        return {k: v for k, v in found.items() if _as_plain(v) != _as_plain(defaults[k])}

    def cost(name: str) -> tuple[bool, int, int]:
        variant = VARIANTS[name]
        return (
            _direct_tail(variant["upsampler"]) != _direct_tail(found["upsampler"]),
            len(differing(name)),
            abs(variant["embed_dim"] - found["embed_dim"]),
        )

    name = min(VARIANTS, key=cost)
    return name, {k: _as_plain(v) for k, v in differing(name).items()}


def _direct_tail(upsampler: str) -> bool:
    return upsampler == "pixelshuffledirect"


def _as_plain(value: Any) -> Any:
    """Sequences as lists, so (6, 6) and [6, 6] compare equal and kwargs stay JSON-friendly."""
    return list(value) if isinstance(value, (list, tuple)) else value


def _with_buffers(
    sd: dict[str, Tensor],
    depths: list[int],
    window: int,
    img_size: tuple[int, int],
    rebuild_masks: bool,
) -> dict[str, Tensor]:
    """The state dict with any missing `relative_position_index` / `attn_mask` filled in (some
    BasicSR saves omit them); both are fixed functions of the window and `img_size`."""
    state = dict(sd)
    shift = window // 2
    index = relative_position_index(window)
    mask = shifted_window_mask(*img_size, window, shift) if shift else None
    for i, depth in enumerate(depths):
        for j in range(depth):
            state.setdefault(_key(i, j, _INDEX), index.clone())
            if j % 2 == 1 and mask is not None:
                key = _key(i, j, _MASK)
                if rebuild_masks or key not in state:
                    state[key] = mask.clone()
    return state
