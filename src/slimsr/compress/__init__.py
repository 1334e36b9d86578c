"""Model compression (Jiang et al. 2024): prune -> size -> distil, for any model whose family
declares its (N_c, N_l, N_b) (an `ArchSpec` in its `archs/<family>.py`, looked up by
`slimsr.compress.specs`). `slimsr compress` is the front."""

from __future__ import annotations

from slimsr.compress.config import CompressConfig, load_compress_config
from slimsr.compress.prune import density_report
from slimsr.compress.sizing import CompactPlan, Sizing, compact_dims, size_model
from slimsr.compress.specs import SPECS, ArchSpec, CompressionError, Dims, spec_for
from slimsr.compress.workflow import CompressResult, compress

__all__ = [
    "SPECS",
    "ArchSpec",
    "CompactPlan",
    "CompressConfig",
    "CompressResult",
    "CompressionError",
    "Dims",
    "Sizing",
    "compact_dims",
    "compress",
    "density_report",
    "load_compress_config",
    "size_model",
    "spec_for",
]
