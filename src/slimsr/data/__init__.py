"""Data: HR/LR pairs in folders (training, validation and evaluation alike), checked up front
and cached, reproducible patches, an iteration sampler."""

from __future__ import annotations

from slimsr.data.datasets import PatchDataset, ValImage, training_store, validation_images
from slimsr.data.folders import (
    DataError,
    ImagePair,
    PairedFolder,
    dataset_from_root,
    find_pairs,
    pair_folders,
)
from slimsr.data.pairs import LoadedPair, PairStore, load_pair
from slimsr.data.sampler import IterationSampler

__all__ = [
    "DataError",
    "ImagePair",
    "IterationSampler",
    "LoadedPair",
    "PairStore",
    "PairedFolder",
    "PatchDataset",
    "ValImage",
    "dataset_from_root",
    "find_pairs",
    "load_pair",
    "pair_folders",
    "training_store",
    "validation_images",
]
