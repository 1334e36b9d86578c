"""Stage 2: the compact (N_c', N_l', N_b') from the density d (Jiang et al. 2024, eqs. 5-7).

What the paper's equations say. The deep feature module has P_DF ~ k N_b (N_l + 1) N_c^2
parameters (eq. 2), and the compact one must keep a fraction d of them (eq. 3), so

    (5)  N_b' (N_l' + 1) N_c'^2 / (N_b (N_l + 1) N_c^2) ~ d
    (6)  N_b' / N_b ~ d^(1/6)   and   (N_l' + 1) / (N_l + 1) ~ d^(1/6),   N_b', N_l' >= 1
    (7)  N_c' / N_c ~ (d N_b (N_l + 1) / (N_b' (N_l' + 1)))^(1/3)    <- as printed

Eq. 7 contradicts eq. 5: channels enter P_DF squared, so solving eq. 5 for N_c' needs the
square root, and only the square root gives the published models (SwinIR-LW at d = 0.089:
60 * 0.408 = 24.5 -> 24 channels as published; the printed cube root gives 33). We take N_c'
from eq. 5, i.e. from the parameter budget left after depth is fixed.

Eq. 6 only says "~", and no single per-factor rounding gives both published models: EDSRmini
needs N_b' = 8 from 16 * 0.03^(1/6) = 8.92 (rounding gives 9), SwinIRmini needs N_b' = 3 from
4 * 0.089^(1/6) = 2.67 (flooring gives 2). The rule used here, for any model:

1. Each of N_b' and N_l' + 1 is the floor or the ceiling of its eq. 6 value, limited to what
   the architecture can build (N_b' >= 1, N_l' >= 1, and N_l' fixed where the block
   structure is fixed, e.g. EDSR's conv-ReLU-conv block: N_l' = 1).
2. Of these (at most four) combinations, take the one with the smallest depth
   N_b' (N_l' + 1) that is not below the depth eq. 6 asks for as a whole,
   N_b (N_l + 1) d^(1/3). The paper observes that cutting N_b and N_l costs more quality than
   cutting N_c, so depth is never rounded below eq. 6; among depths that satisfy it, the
   shallowest leaves the most of the budget to the channels. Ties: the combination whose two
   ratios are closest to d^(1/6), then fewer blocks.
3. N_c' = N_c * sqrt(d N_b (N_l + 1) / (N_b' (N_l' + 1))) (eq. 5), rounded to the nearest
   width the architecture allows (a multiple of SwinIR's head count, at least its minimum).

Published cases: SwinIR-LW (60, 6, 4), d = 0.089: d^(1/6) = 0.668, candidates N_b' in {2, 3},
N_l' + 1 in {4, 5}, depth target 28 * 0.447 = 12.5 -> 3 * 5 = 15 -> (N_b', N_l') = (3, 4);
N_c' = 24.46 -> 24 (multiple of 6 heads). EDSR-baseline (64, 1, 16), d = 0.03: d^(1/6) = 0.557,
N_b' in {8, 9}, N_l' = 1, target 32 * 0.311 = 9.9 -> 8 * 2 = 16 -> N_b' = 8; N_c' = 15.68 -> 16.
At d = 1 every model maps onto itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from slimsr.compress.specs import CompressionError, Dims, spec_for
from slimsr.model import SRModel
from slimsr.registry import count_parameters, get_model_info

_TOL = 1e-9


@dataclass(frozen=True)
class Sizing:
    """The compact dims and how they were reached (written to compact.json)."""

    original: Dims
    compact: Dims
    density: float
    root6: float
    """d^(1/6), the eq. 6 ratio."""
    blocks_exact: float
    """N_b d^(1/6)."""
    layers_plus_one_exact: float
    """(N_l + 1) d^(1/6)."""
    depth_target: float
    """N_b (N_l + 1) d^(1/3): the depth eq. 6 asks for as a whole."""
    channels_exact: float
    """N_c' from eq. 5 before rounding."""
    candidates: list[dict[str, int]] = field(default_factory=list)

    @property
    def eq5_ratio(self) -> float:
        """N_b'(N_l'+1)N_c'^2 / (N_b(N_l+1)N_c^2): the compact share of P_DF by eq. 2."""
        o, c = self.original, self.compact
        return (c.blocks * (c.layers + 1) * c.channels**2) / (
            o.blocks * (o.layers + 1) * o.channels**2
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "density": self.density,
            "original": self.original.as_dict(),
            "compact": self.compact.as_dict(),
            "d^(1/6)": self.root6,
            "N_b*d^(1/6)": self.blocks_exact,
            "(N_l+1)*d^(1/6)": self.layers_plus_one_exact,
            "depth_target N_b(N_l+1)d^(1/3)": self.depth_target,
            "N_c' before rounding (eq. 5)": self.channels_exact,
            "candidates (N_b', N_l')": self.candidates,
            "eq5_ratio": self.eq5_ratio,
        }


def check_density(density: float) -> float:
    if not isinstance(density, int | float) or not math.isfinite(density):
        raise CompressionError(f"density must be a number in (0, 1], got {density!r}")
    if not 0.0 < density <= 1.0:
        raise CompressionError(
            f"density {density:g} is outside (0, 1]: it is the fraction of non-zero "
            "parameters of the deep feature module"
        )
    return float(density)


def _floor_ceil(value: float, lo: int, hi: int | None) -> list[int]:
    """floor and ceil of `value` (with a little float slack), each clamped to [lo, hi]."""
    options = {math.floor(value + _TOL), math.ceil(value - _TOL)}
    clamped = {max(lo, v) if hi is None else min(hi, max(lo, v)) for v in options}
    return sorted(clamped)


def _round_width(value: float, multiple: int, minimum: int) -> int:
    smallest = multiple * math.ceil(max(minimum, 1) / multiple)
    return max(smallest, multiple * math.floor(value / multiple + 0.5))


def compact_dims(
    original: Dims,
    density: float,
    *,
    layer_bounds: tuple[int, int | None] = (1, None),
    channel_multiple: int = 1,
    min_channels: int = 1,
) -> Sizing:
    """The compact dims for `density` by eqs. 5-6 and the rounding rule of the module docstring."""
    d = check_density(density)
    if original.channels < 1 or original.blocks < 1 or original.layers < 0:
        raise CompressionError(f"invalid original dims {original}")
    root6 = d ** (1.0 / 6.0)
    blocks_exact = original.blocks * root6
    layers1_exact = (original.layers + 1) * root6
    depth_target = original.blocks * (original.layers + 1) * d ** (1.0 / 3.0)
    lo, hi = layer_bounds
    block_options = _floor_ceil(blocks_exact, 1, original.blocks)
    layer_options = _floor_ceil(layers1_exact, lo + 1, None if hi is None else hi + 1)

    def key(combo: tuple[int, int]) -> tuple[bool, int, float, int]:
        blocks, layers1 = combo
        depth = blocks * layers1
        off = abs(math.log(blocks / blocks_exact)) + abs(math.log(layers1 / layers1_exact))
        return depth < depth_target * (1 - _TOL), depth, off, blocks

    combos = [(b, l1) for b in block_options for l1 in layer_options]
    blocks, layers1 = min(combos, key=key)
    depth_ratio = (original.blocks * (original.layers + 1)) / (blocks * layers1)
    channels_exact = original.channels * math.sqrt(d * depth_ratio)
    channels = _round_width(channels_exact, channel_multiple, min_channels)
    return Sizing(
        original=original,
        compact=Dims(channels, layers1 - 1, blocks),
        density=d,
        root6=root6,
        blocks_exact=blocks_exact,
        layers_plus_one_exact=layers1_exact,
        depth_target=depth_target,
        channels_exact=channels_exact,
        candidates=[{"N_b'": b, "N_l'": l1 - 1} for b, l1 in combos],
    )


@dataclass(frozen=True)
class CompactPlan:
    """The original model, the compact one, and the numbers behind it."""

    original_name: str
    original_kwargs: dict[str, Any]
    scale: int
    compact_name: str
    compact_kwargs: dict[str, Any]
    sizing: Sizing
    params: dict[str, int]
    """Parameters of the original and compact networks, whole and deep feature module."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "original": {"model": self.original_name, "kwargs": self.original_kwargs},
            "compact": {"model": self.compact_name, "kwargs": self.compact_kwargs},
            "sizing": self.sizing.as_dict(),
            "params": self.params,
            "rule": (
                "N_b', N_l'+1: floor or ceil of eq. 6, the shallowest combination whose depth "
                "N_b'(N_l'+1) >= N_b(N_l+1)d^(1/3); N_c' from eq. 5 (square root), nearest "
                "allowed width. See slimsr.compress.sizing."
            ),
        }


def _deep_params(net: torch.nn.Module, name: str) -> int:
    spec = spec_for(name)
    return sum(p.numel() for n, p in net.named_parameters() if spec.is_deep_feature(n))


def size_model(model: SRModel, density: float) -> CompactPlan:
    """Size the compact version of `model` (any model whose family has a spec) for `density`."""
    spec = spec_for(model.name)
    original = spec.dims(model)
    sizing = compact_dims(
        original,
        density,
        layer_bounds=spec.layer_bounds(original),
        channel_multiple=spec.channel_multiple(model),
        min_channels=spec.min_channels,
    )
    name, kwargs = spec.compact(model, sizing.compact)
    with torch.device("meta"):  # shapes only: counting parameters costs no memory
        compact_net = get_model_info(name).build(model.scale, **kwargs)
    compact = SRModel(compact_net, get_model_info(name), model.scale, kwargs)
    if spec.dims(compact) != sizing.compact:  # a spec whose builder disagrees with its dims
        raise CompressionError(
            f"{name} built with {kwargs} has dims {spec.dims(compact)}, not {sizing.compact}"
        )
    params = {
        "original": count_parameters(model.net),
        "compact": count_parameters(compact_net),
        "original_deep_feature": _deep_params(model.net, model.name),
        "compact_deep_feature": _deep_params(compact_net, name),
    }
    return CompactPlan(model.name, dict(model.kwargs), model.scale, name, kwargs, sizing, params)
