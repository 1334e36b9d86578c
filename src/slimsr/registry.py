"""Model registry: named variants, their facts, and state-dict detectors.

A *variant* is a function `name(scale, **kwargs) -> nn.Module` decorated with
`@register_model(...)`; the function's name is the model name (timm style). The decorator
records what a caller needs to run the network correctly without reading its code: the
scales it provides, the value range it expects (official networks differ: [0,1] or
[0,255]), the input size multiple, and whether half precision is safe.

A *family* (`register_family`, called once in its `archs/<family>.py` before its variants)
declares what its variants share: the measured CPU memory layout, whether tiled inference
is exact, and how the compression workflow reads its (N_c, N_l, N_b). A variant inherits them and may override the layout (FMEN's train-time forms).

A *detector* reads a canonical state dict and, when it recognises a family, returns a
`Detection`: the variant name, the scale and any hyper-parameters inferred from tensor
shapes, plus the state dict rewritten to our (official) key names. Detectors are tried in
registration order; `slimsr.load` (`factory.load`) uses them so that no architecture name is needed.

The registry is an ordinary object (`ModelRegistry`) so tests can build a throwaway one;
`REGISTRY` is the process-wide default the decorators fill. Duplicate names are errors.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from slimsr.errors import CheckpointError, UnknownModelError, UnsupportedScaleError

if TYPE_CHECKING:  # archs import this module, so their helpers are named for type checks only
    from slimsr.archs._compression import ArchSpec

StateDict = Mapping[str, torch.Tensor]
Builder = Callable[..., nn.Module]
Tiling = Literal["exact", "approximate"]


@dataclass(frozen=True)
class FamilyInfo:
    """Facts shared by the variants of one family, declared in its `archs/<family>.py`."""

    name: str
    cpu_channels_last: bool = False
    """Run the plain (unfused) network channels-last (NHWC) on CPU by default. True only where
    `benchmarks/bench_models.py --layout` measured NHWC faster at every scale (torch 2.13,
    oneDNN, fp32, 128x128 LR, 1 thread, median of 5 interleaved runs after 2 warm-ups; each
    family's ratios, channels_last time / contiguous time at x2 / x3 / x4, are next to its
    declaration). Unmeasured families and devices stay contiguous."""
    tiling: Tiling = "approximate"
    """"exact": tiles blended with enough overlap give the whole-image output (purely local
    networks); "approximate": the network reads wider context than any overlap (global
    statistics, large pooling windows, windows aligned to the image origin), so tile edges move
    some pixels (README: 1-2% by more than 1/255 at 64 px tiles for ESA/CCA models)."""
    compression: ArchSpec | None = None
    """How `slimsr compress` reads and rebuilds the family's (N_c, N_l, N_b); None: it cannot."""


@dataclass(frozen=True)
class ModelInfo:
    """Facts about one registered variant."""

    name: str
    builder: Builder
    family: str
    scales: tuple[int, ...]
    input_range: float
    """Value range the raw network expects: 1.0 for [0,1] inputs, 255.0 for [0,255]."""
    default_scale: int
    size_multiple: int = 1
    """Input H and W must be a multiple of this; `SRModel` pads by reflection (`pad_to_multiple`)."""
    min_size: int = 1
    """Smallest input H and W the network accepts (ESA's pooling needs 15 px); padded up to."""
    supports_fp16: bool = True
    supports_bf16: bool = True
    paper: str = ""
    description: str = ""
    params_note: str = ""
    """How the papers' rounded parameter figures relate to ours (shown by `slimsr models`)."""
    deploy_form: str | None = None
    """For a train-time (re-parameterisable) variant, the name of its deploy variant."""
    cpu_channels_last: bool = False
    """Default CPU memory format when run unfused (`FamilyInfo.cpu_channels_last`, unless the
    variant overrides it)."""
    tiling: Tiling = "approximate"
    """Whether tiled inference equals whole-image inference (`FamilyInfo.tiling`)."""

    def build(self, scale: int | None = None, **kwargs: Any) -> nn.Module:
        """The raw network (official key names and value range), randomly initialised."""
        scale = self.default_scale if scale is None else int(scale)
        if scale not in self.scales:
            raise UnsupportedScaleError(
                f"{self.name} provides scales {', '.join(f'x{s}' for s in self.scales)}, not x{scale}"
            )
        return self.builder(scale, **kwargs)


@dataclass
class Detection:
    """What a detector recognised in a state dict."""

    name: str
    scale: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    """The weights under our key names (official ones), ready for a strict load."""


Detector = Callable[[dict[str, torch.Tensor]], Detection | None]


def normalize_name(name: str) -> str:
    """`EDSR-baseline` and `edsr_baseline` name the same model."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


class ModelRegistry:
    """Named variants and family detectors, in registration order."""

    def __init__(self) -> None:
        self._models: dict[str, ModelInfo] = {}
        self._aliases: dict[str, str] = {}
        self._detectors: list[tuple[str, Detector]] = []
        self._families: dict[str, FamilyInfo] = {}

    # -- registration -------------------------------------------------------------------
    def add_family(self, family: FamilyInfo) -> None:
        if family.name in self._families:
            raise ValueError(f"family {family.name!r} is registered twice")
        self._families[family.name] = family

    def add(self, info: ModelInfo, aliases: tuple[str, ...] = ()) -> None:
        for key in (info.name, *aliases):
            key = normalize_name(key)
            if key in self._models or key in self._aliases:
                raise ValueError(f"model name {key!r} is registered twice")
        self._models[info.name] = info
        for alias in aliases:
            self._aliases[normalize_name(alias)] = info.name

    def add_detector(self, family: str, detector: Detector) -> None:
        if any(f == family for f, _ in self._detectors):
            raise ValueError(f"a detector for family {family!r} is registered twice")
        self._detectors.append((family, detector))

    # -- queries ------------------------------------------------------------------------
    def get(self, name: str) -> ModelInfo:
        key = normalize_name(name)
        key = self._aliases.get(key, key)
        if key not in self._models:
            close = fnmatch.filter(self._models, f"*{key.split('_')[0]}*")
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownModelError(
                f"unknown model {name!r}{hint} (`slimsr models` lists them all)"
            )
        return self._models[key]

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._models if fnmatch.fnmatchcase(n, normalize_name(pattern)))

    def __iter__(self) -> Iterator[ModelInfo]:
        return iter(self._models.values())

    def __contains__(self, name: str) -> bool:
        key = normalize_name(name)
        return key in self._models or key in self._aliases

    def family(self, name: str) -> FamilyInfo:
        """The declared facts of a family; defaults (contiguous, approximate) if undeclared."""
        return self._families.get(name) or FamilyInfo(name)

    def families(self) -> list[FamilyInfo]:
        return list(self._families.values())

    def detectors(self) -> list[tuple[str, Detector]]:
        return list(self._detectors)

    def detect(self, state_dict: dict[str, torch.Tensor]) -> Detection | None:
        """The one family that recognises the state dict, or None.

        Every detector is asked, so the answer never depends on the order families were
        imported in; weights two families both claim are refused rather than guessed.
        """
        found = [d for _, det in self._detectors if (d := det(state_dict)) is not None]
        if len(found) > 1:
            names = ", ".join(f"{d.name} x{d.scale}" for d in found)
            raise CheckpointError(
                f"the weights match several architectures ({names}): name one with -m/--model"
            )
        return found[0] if found else None


REGISTRY = ModelRegistry()


def register_family(
    name: str,
    *,
    cpu_channels_last: bool,
    tiling: Tiling,
    compression: ArchSpec | None = None,
    registry: ModelRegistry | None = None,
) -> FamilyInfo:
    """Declare a family's shared facts (see `FamilyInfo`); call before its `@register_model`s."""
    if tiling not in ("exact", "approximate"):
        raise ValueError(f"tiling is 'exact' or 'approximate', not {tiling!r}")
    family = FamilyInfo(name, cpu_channels_last, tiling, compression)
    (registry or REGISTRY).add_family(family)
    return family


def register_model(
    *,
    family: str,
    scales: tuple[int, ...] = (2, 3, 4),
    input_range: float,
    default_scale: int = 4,
    size_multiple: int = 1,
    min_size: int = 1,
    supports_fp16: bool = True,
    supports_bf16: bool = True,
    paper: str = "",
    params_note: str = "",
    deploy_form: str | None = None,
    cpu_channels_last: bool | None = None,
    aliases: tuple[str, ...] = (),
    registry: ModelRegistry | None = None,
) -> Callable[[Builder], Builder]:
    """Register a variant function `name(scale, **kwargs) -> nn.Module` under its own name.

    `cpu_channels_last`: None = the family's declared default (`register_family`)."""

    def decorate(fn: Builder) -> Builder:
        doc = (fn.__doc__ or "").strip().splitlines()
        facts = (registry or REGISTRY).family(family)
        info = ModelInfo(
            name=fn.__name__,
            builder=fn,
            family=family,
            scales=tuple(scales),
            input_range=float(input_range),
            default_scale=default_scale,
            size_multiple=size_multiple,
            min_size=min_size,
            supports_fp16=supports_fp16,
            supports_bf16=supports_bf16,
            paper=paper,
            description=doc[0] if doc else "",
            params_note=params_note,
            deploy_form=deploy_form,
            cpu_channels_last=(
                facts.cpu_channels_last if cpu_channels_last is None else cpu_channels_last
            ),
            tiling=facts.tiling,
        )
        (registry or REGISTRY).add(info, aliases)
        return fn

    return decorate


def register_detector(
    family: str, registry: ModelRegistry | None = None
) -> Callable[[Detector], Detector]:
    """Register a function that recognises a family's state dicts (see `Detection`)."""

    def decorate(fn: Detector) -> Detector:
        (registry or REGISTRY).add_detector(family, fn)
        return fn

    return decorate


def default_registry() -> ModelRegistry:
    """The process-wide registry with every built-in architecture registered."""
    # Importing the architecture package runs the decorators. Done lazily so that
    # `import slimsr.registry` stays cheap and architectures can import this module.
    import slimsr.archs  # noqa: F401

    return REGISTRY


def get_model_info(name: str) -> ModelInfo:
    return default_registry().get(name)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, e.g. `list_models("bsrn*")`."""
    return default_registry().names(pattern)


def build_network(name: str, scale: int | None = None, **kwargs: Any) -> nn.Module:
    """The raw network of a variant (official keys, official value range), random weights."""
    return get_model_info(name).build(scale, **kwargs)


def count_parameters(module: nn.Module) -> int:
    """All parameters, trainable or frozen, as the NTIRE harness and the papers count them."""
    return sum(p.numel() for p in module.parameters())
