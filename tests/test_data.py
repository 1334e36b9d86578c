"""Training data: pairing and checks up front, exact LR, aligned patches, reproducible streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from slimsr.data import (
    DataError,
    IterationSampler,
    PatchDataset,
    find_pairs,
    load_pair,
    training_store,
)
from slimsr.data.sampler import permutation
from slimsr.imaging import imresize, modcrop, read_image
from tests.train_utils import write_images


def save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_paired_folders_match_by_name_and_modcrop(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (21, 19, 3), dtype=np.uint8)  # odd sizes: modcrop to 20x18
    save(hr, tmp_path / "HR" / "a.png")
    save(rng.integers(0, 256, (10, 9, 3), dtype=np.uint8), tmp_path / "LR" / "ax2.png")
    pairs = find_pairs(tmp_path / "HR", tmp_path / "LR", 2)
    assert [(p.hr.name, p.lr.name) for p in pairs] == [("a.png", "ax2.png")]
    loaded = load_pair(pairs[0], 2)
    assert loaded.hr.dtype == torch.uint8 and tuple(loaded.hr.shape) == (3, 20, 18)
    assert torch.equal(loaded.hr, torch.from_numpy(hr[:20, :18]).permute(2, 0, 1))


def test_wrong_size_pair_is_named(tmp_path: Path) -> None:
    save(np.zeros((20, 20, 3), np.uint8), tmp_path / "HR" / "a.png")
    save(np.zeros((9, 10, 3), np.uint8), tmp_path / "LR" / "a.png")
    pairs = find_pairs(tmp_path / "HR", tmp_path / "LR", 2)
    with pytest.raises(DataError, match=r"bad pair a\.png / a\.png: LR is 10x9 .* needs LR 10x10"):
        load_pair(pairs[0], 2)
    (tmp_path / "LR" / "a.png").unlink()
    with pytest.raises(DataError, match="no LR partner"):
        find_pairs(tmp_path / "HR", tmp_path / "LR", 2)
    with pytest.raises(DataError, match="not found"):
        find_pairs(tmp_path / "nope", None, 2)


def test_hr_only_lr_is_matlab_bicubic_of_the_whole_image(tmp_path: Path) -> None:
    (path,) = write_images(tmp_path / "HR", [(27, 34)])
    store = training_store([(tmp_path / "HR", None)], 3, 4)
    hr = modcrop(read_image(path).rgb, 3)
    expected = imresize(hr, 1 / 3, mode="float")
    assert store[0].lr.dtype == torch.float32
    assert torch.equal(store[0].lr, expected)
    uint8 = training_store([(tmp_path / "HR", None)], 3, 4, lr_mode="uint8")
    assert torch.equal(uint8[0].lr.float() / 255, imresize(hr, 1 / 3, mode="uint8"))


def test_patches_stay_aligned_through_crops_flips_and_rotations(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    lr = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    save(lr, tmp_path / "LR" / "p.png")
    save(lr.repeat(3, 0).repeat(3, 1), tmp_path / "HR" / "p.png")  # HR = nearest x3 of LR
    store = training_store([(tmp_path / "HR", tmp_path / "LR")], 3, 5)
    ds = PatchDataset(store, 5, seed=0)
    seen = set()
    for k in range(40):
        lr_p, hr_p = ds[(0, k)]
        assert lr_p.shape == (3, 5, 5) and hr_p.shape == (3, 15, 15)
        assert torch.equal(hr_p[:, 1::3, 1::3], lr_p)  # every HR 3x3 block is its LR pixel
        seen.add(lr_p.numpy().tobytes())
    assert len(seen) > 20  # crops and orientations actually vary


def test_small_images_are_skipped_or_refused(tmp_path: Path) -> None:
    write_images(tmp_path / "HR", [(40, 40), (12, 40)])
    store = training_store([(tmp_path / "HR", None)], 2, 8)
    assert len(store) == 1 and [p.hr.name for p in store.skipped] == ["img01.png"]
    with pytest.raises(DataError, match=r"img01\.png: LR 20x6 is smaller than the 8-pixel patch"):
        training_store([(tmp_path / "HR", None)], 2, 8, small_images="error")
    with pytest.raises(DataError, match="no training image"):
        training_store([(tmp_path / "HR", None)], 2, 64)


def test_sampler_streams_are_permutations_and_shard_exactly() -> None:
    n, batch = 7, 6
    one = IterationSampler(n, batch, seed=5)
    stream = [one.image_at(k) for k in range(3 * n)]
    for e in range(3):
        assert sorted(stream[e * n : (e + 1) * n]) == list(range(n))
        assert stream[e * n : (e + 1) * n] == permutation(n, 5, e).tolist()
    assert stream[:n] != stream[n : 2 * n]
    ranks = [IterationSampler(n, batch, seed=5, rank=r, world_size=3) for r in range(3)]
    for t in range(4):
        merged = [k for r in ranks for k in r.positions(t)]
        assert merged == list(one.positions(t))
    # resuming at iteration 3 continues the same stream
    it = iter(IterationSampler(n, batch, seed=5, start_iteration=3))
    assert [next(it) for _ in range(batch)] == [(one.image_at(k), k) for k in range(18, 24)]


def _batches(ds: PatchDataset, workers: int, count: int) -> list[torch.Tensor]:
    sampler = IterationSampler(len(ds), 4, seed=9)
    loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers)
    out = []
    for i, (lr, hr) in enumerate(loader):
        out.append(torch.cat([lr.flatten(), hr.flatten()]))
        if i + 1 == count:
            break
    return out


def test_batches_do_not_depend_on_the_number_of_workers(tmp_path: Path) -> None:
    write_images(tmp_path / "HR", [(30 + 2 * i, 32) for i in range(5)])
    store = training_store([(tmp_path / "HR", None)], 2, 6)
    ds = PatchDataset(store, 6, seed=4)
    serial = _batches(ds, 0, 5)
    parallel = _batches(ds, 2, 5)
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel))
    other_seed = _batches(PatchDataset(store, 6, seed=5), 0, 1)
    assert not torch.equal(serial[0], other_seed[0])
