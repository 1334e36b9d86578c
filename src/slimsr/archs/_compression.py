"""What the compression workflow must know about a family, declared next to its network.

The workflow (Jiang et al. 2024, `slimsr.compress`) sees a network as shallow feature
extraction, a *deep feature module* made of N_b blocks of N_l (+1) layers of N_c channels, and
reconstruction. A family that supports compression subclasses `ArchSpec` in its
`archs/<family>.py` and passes an instance to `register_family(..., compression=...)`; it says

- `dims(model)`: the model's (N_c, N_l, N_b), read from the built network;
- `is_deep_feature(name)`: which parameters form the deep feature module (its density d is what
  pruning measures);
- `layer_bounds(dims)`, `channel_multiple(model)`, `min_channels`: the values the architecture
  can be built with (N_l fixed for blocks of fixed structure; SwinIR's width a multiple of the
  head count);
- `compact(model, dims)`: the registry name and kwargs of the compact model with those dims.

`slimsr.compress.specs` looks the specs up through the registry; a family without one cannot
be compressed. Nothing here imports the workflow: `model` is anything shaped like an `SRModel`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from slimsr.errors import CompressionError


class Built(Protocol):
    """What a spec reads of an `SRModel`: its network, registry name and build kwargs."""

    net: nn.Module
    name: str
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class Dims:
    """(N_c, N_l, N_b) of eq. 2: channels, layers per block (the +1 excluded), blocks."""

    channels: int
    layers: int
    blocks: int

    def as_dict(self) -> dict[str, int]:
        return {"N_c": self.channels, "N_l": self.layers, "N_b": self.blocks}


class ArchSpec(ABC):
    """The compression declaration of one registry family (see the module docstring); registered with
    its family (`register_family(..., compression=...)`)."""

    family: str
    deep_feature: str
    """What the deep feature module is, in words (written to the density report)."""
    meaning: str
    """What N_c, N_l and N_b are for this family, in words."""
    min_channels: int = 1

    @abstractmethod
    def dims(self, model: Built) -> Dims: ...

    @abstractmethod
    def is_deep_feature(self, name: str) -> bool:
        """Whether parameter `name` (a key of `model.net`) belongs to the deep feature module."""

    @abstractmethod
    def compact(self, model: Built, dims: Dims) -> tuple[str, dict[str, Any]]:
        """Registry name and kwargs of the compact model of `model` with `dims`."""

    def layer_bounds(self, dims: Dims) -> tuple[int, int | None]:
        """Smallest and largest N_l' that can be built (None: no upper limit)."""
        return 1, None

    def channel_multiple(self, model: Built) -> int:
        return 1


def weights_under(name: str, prefixes: tuple[str, ...]) -> bool:
    """Weights (not biases) under the prefixes, as the authors count density."""
    return name.endswith("weight") and name.startswith(prefixes)


def check_net(model: Built, cls: type | tuple[type, ...], spec: ArchSpec) -> Any:
    if not isinstance(model.net, cls):
        raise CompressionError(
            f"{model.name}: the {spec.family} compression spec does not know its network "
            f"({type(model.net).__name__})"
        )
    return model.net
