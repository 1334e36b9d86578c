"""Which network class has which fused form: the map the family files fill.

A family file decorates its builder with `@fused_form(NetworkClass)`; `fuse(net)` then builds
the form of a network of exactly that class (a subclass may compute something else, so it is
not matched). Import `slimsr.fused`, not this module alone: the package imports every family
file, which is what fills the map.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

FusedBuilder = Callable[[nn.Module], nn.Module]
"""Builds the inference-only fused module of a trained network (the network is left alone)."""

FUSED_FORMS: dict[type[nn.Module], FusedBuilder] = {}
"""Fused-form builders by network class."""

B = TypeVar("B", bound=Callable[..., nn.Module])


def fused_form(network: type[nn.Module]) -> Callable[[B], B]:
    """Register the decorated `builder(net) -> module` as the fused form of `network`."""

    def decorate(builder: B) -> B:
        if network in FUSED_FORMS:
            raise ValueError(f"{network.__name__} has a fused form registered twice")
        FUSED_FORMS[network] = builder
        return builder

    return decorate


def has_fused_form(net: nn.Module) -> bool:
    """Whether the raw network can build a fused inference form: its class has one, and the
    network does not opt out (`fusable = False`: a paper-ablation variant the form lacks)."""
    return type(net) in FUSED_FORMS and getattr(net, "fusable", True)


def fuse(net: nn.Module) -> nn.Module | None:
    """A new inference-only module (eval mode) computing `net`'s forward faster, or None when
    it has no fused form (`has_fused_form`). `net` itself is not changed."""
    builder = FUSED_FORMS.get(type(net))
    return None if builder is None or not has_fused_form(net) else builder(net).eval()
