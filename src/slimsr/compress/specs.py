"""The compression specs, looked up through the registry.

Each family declares its spec (an `ArchSpec`: how to read its (N_c, N_l, N_b), which
parameters form the deep feature module, how to rebuild it at new dims) next to its network,
in `archs/<family>.py`, and registers it with `register_family(..., compression=...)`; see
`slimsr.archs._compression` for what a spec says. A family without one cannot be compressed
(`spec_for` says so).
"""

from __future__ import annotations

from slimsr.archs._compression import ArchSpec, Dims
from slimsr.errors import CompressionError
from slimsr.registry import default_registry, get_model_info

__all__ = ["SPECS", "ArchSpec", "CompressionError", "Dims", "spec_for"]

SPECS: dict[str, ArchSpec] = {
    family.name: family.compression
    for family in default_registry().families()
    if family.compression is not None
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
