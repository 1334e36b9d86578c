"""What the compression workflow must know about an architecture, declared per family.

The workflow (Jiang et al. 2024) sees a network as shallow feature extraction, a *deep feature
module* made of N_b blocks of N_l (+1) layers of N_c channels, and reconstruction. For each
family that supports compression, a spec here says

- `dims(model)`: the model's (N_c, N_l, N_b), read from the built network;
- `is_deep_feature(name)`: which parameters form the deep feature module (its density d is what
  pruning measures);
- `layer_bounds(dims)`, `channel_multiple(model)`, `min_channels`: the values the architecture
  can be built with (N_l fixed for blocks of fixed structure; SwinIR's width a multiple of the
  head count);
- `compact(model, dims)`: the registry name and kwargs of the compact model with those dims.

The architecture files need no change: specs read the networks' public attributes. A family
without a spec cannot be compressed (`spec_for` says so).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from slimsr.archs.bsrn import BSRN
from slimsr.archs.edsr import EDSR, EDSRBasicSR
from slimsr.archs.fmen import FMEN, TrainFMEN
from slimsr.archs.swinir import VARIANTS as SWINIR_VARIANTS
from slimsr.archs.swinir import SwinIR
from slimsr.errors import SlimsrError
from slimsr.model import SRModel
from slimsr.registry import get_model_info


class CompressionError(SlimsrError, ValueError):
    """A model, density or artifact the compression workflow cannot use."""


@dataclass(frozen=True)
class Dims:
    """(N_c, N_l, N_b) of eq. 2: channels, layers per block (the +1 excluded), blocks."""

    channels: int
    layers: int
    blocks: int

    def as_dict(self) -> dict[str, int]:
        return {"N_c": self.channels, "N_l": self.layers, "N_b": self.blocks}


class ArchSpec(ABC):
    """The compression declaration of one registry family (see the module docstring)."""

    family: str
    deep_feature: str
    """What the deep feature module is, in words (written to the density report)."""
    meaning: str
    """What N_c, N_l and N_b are for this family, in words."""
    min_channels: int = 1

    @abstractmethod
    def dims(self, model: SRModel) -> Dims: ...

    @abstractmethod
    def is_deep_feature(self, name: str) -> bool:
        """Whether parameter `name` (a key of `model.net`) belongs to the deep feature module."""

    @abstractmethod
    def compact(self, model: SRModel, dims: Dims) -> tuple[str, dict[str, Any]]:
        """Registry name and kwargs of the compact model of `model` with `dims`."""

    def layer_bounds(self, dims: Dims) -> tuple[int, int | None]:
        """Smallest and largest N_l' that can be built (None: no upper limit)."""
        return 1, None

    def channel_multiple(self, model: SRModel) -> int:
        return 1


def _weights_under(name: str, prefixes: tuple[str, ...]) -> bool:
    """Weights (not biases) under the prefixes, as the authors count density."""
    return name.endswith("weight") and name.startswith(prefixes)


def _check_net(model: SRModel, cls: type | tuple[type, ...], spec: ArchSpec) -> Any:
    if not isinstance(model.net, cls):
        raise CompressionError(
            f"{model.name}: the {spec.family} compression spec does not know its network "
            f"({type(model.net).__name__})"
        )
    return model.net


# -- EDSR ----------------------------------------------------------------------------------------


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

    def dims(self, model: SRModel) -> Dims:
        net = _check_net(model, (EDSR, EDSRBasicSR), self)
        if isinstance(net, EDSR):
            return Dims(net.head[0].out_channels, 1, len(net.body) - 1)
        return Dims(net.conv_first.out_channels, 1, len(net.body))

    def is_deep_feature(self, name: str) -> bool:
        return _weights_under(name, ("body.", "conv_after_body."))

    def layer_bounds(self, dims: Dims) -> tuple[int, int | None]:
        return 1, 1

    def compact(self, model: SRModel, dims: Dims) -> tuple[str, dict[str, Any]]:
        kwargs: dict[str, Any] = {}
        if model.name == "edsrmini":  # keep its other settings (res_scale, img_range)
            kwargs = {k: v for k, v in model.kwargs.items() if k not in self._SIZE_KEYS}
        for key, value in (("num_feat", dims.channels), ("num_block", dims.blocks)):
            if value != self._MINI_DEFAULTS[key]:
                kwargs[key] = value
        return "edsrmini", kwargs


# -- SwinIR --------------------------------------------------------------------------------------


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

    def dims(self, model: SRModel) -> Dims:
        net = _check_net(model, SwinIR, self)
        depths = [len(layer.residual_group.blocks) for layer in net.layers]
        if len(set(depths)) != 1:
            raise CompressionError(
                f"{model.name}: RSTBs of unequal depth {depths} have no single N_l to size"
            )
        return Dims(net.embed_dim, depths[0], len(depths))

    def is_deep_feature(self, name: str) -> bool:
        return _weights_under(name, ("layers.",))

    def channel_multiple(self, model: SRModel) -> int:
        return math.lcm(*self._heads(_check_net(model, SwinIR, self)))

    def compact(self, model: SRModel, dims: Dims) -> tuple[str, dict[str, Any]]:
        heads = self._heads(_check_net(model, SwinIR, self))[0]
        config = {**SWINIR_VARIANTS[model.name], **model.kwargs}
        config.update(
            embed_dim=dims.channels,
            depths=[dims.layers] * dims.blocks,
            num_heads=[heads] * dims.blocks,
        )
        mini = SWINIR_VARIANTS["swinirmini"]
        kwargs = {
            k: _as_list(v)
            for k, v in config.items()
            if k not in mini or _as_list(mini[k]) != _as_list(v)
        }
        return "swinirmini", kwargs


# -- BSRN ----------------------------------------------------------------------------------------


class BSRNSpec(ArchSpec):
    """BSRN and BSRN-S: N_c features, N_b ESDBs, N_l = 4 (fixed).

    An ESDB has three BSRB steps and a fourth BSConv before its 1x1 fusion (the conv before the
    output), a fixed structure: N_l stays 4 and the budget goes to N_b and N_c. Widths are
    multiples of 4 (the blocks split C/2 and ESA works on C/4), at least 16 (CCA's C/16).
    """

    family = "bsrn"
    deep_feature = "ESDB blocks B1..Bn, the fusion c1 and the conv c2 (weights only)"
    meaning = "N_c = features, N_l = 4 (fixed ESDB structure), N_b = ESDB blocks"
    min_channels = 16
    _LAYERS = 4

    def dims(self, model: SRModel) -> Dims:
        net = _check_net(model, BSRN, self)
        return Dims(net.upsampler.upsampleOneStep[0].in_channels, self._LAYERS, net.num_block)

    def is_deep_feature(self, name: str) -> bool:
        block = name.split(".", 1)[0]
        is_block = block[:1] == "B" and block[1:].isdigit()
        return name.endswith("weight") and (is_block or name.startswith(("c1.", "c2.")))

    def layer_bounds(self, dims: Dims) -> tuple[int, int | None]:
        return self._LAYERS, self._LAYERS

    def channel_multiple(self, model: SRModel) -> int:
        return 4

    def compact(self, model: SRModel, dims: Dims) -> tuple[str, dict[str, Any]]:
        return model.name, {
            **model.kwargs,
            "num_feat": dims.channels,
            "num_block": dims.blocks,
        }


# -- FMEN ----------------------------------------------------------------------------------------


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

    def dims(self, model: SRModel) -> Dims:
        net = _check_net(model, (FMEN, TrainFMEN), self)
        return Dims(net.hparams["n_feats"], 1, net.hparams["down_blocks"])

    def is_deep_feature(self, name: str) -> bool:
        return _weights_under(name, ("warmup.", "ERBs.", "HFABs.", "lr_conv."))

    def layer_bounds(self, dims: Dims) -> tuple[int, int | None]:
        return 1, 1

    def compact(self, model: SRModel, dims: Dims) -> tuple[str, dict[str, Any]]:
        hp = _check_net(model, (FMEN, TrainFMEN), self).hparams
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


# -- the registry --------------------------------------------------------------------------------

SPECS: dict[str, ArchSpec] = {
    spec.family: spec for spec in (EDSRSpec(), SwinIRSpec(), BSRNSpec(), FMENSpec())
}
"""Compression specs by registry family."""


def spec_for(name: str) -> ArchSpec:
    """The spec of a registered model's family, or a `CompressionError` saying there is none."""
    info = get_model_info(name)
    spec = SPECS.get(info.family)
    if spec is None:
        families = ", ".join(sorted(SPECS))
        raise CompressionError(
            f"{info.name} (family {info.family}) declares no (N_c, N_l, N_b), so it cannot be "
            f"compressed; compressible families: {families}"
        )
    return spec
