"""Training data: pairs checked up front and cached, reproducible patches, an iteration sampler."""

from __future__ import annotations

from slimsr.data.datasets import PatchDataset, ValImage, training_store, validation_images
from slimsr.data.pairs import DataError, ImagePair, LoadedPair, PairStore, find_pairs, load_pair
from slimsr.data.sampler import IterationSampler

__all__ = [
    "DataError",
    "ImagePair",
    "IterationSampler",
    "LoadedPair",
    "PairStore",
    "PatchDataset",
    "ValImage",
    "find_pairs",
    "load_pair",
    "training_store",
    "validation_images",
]
