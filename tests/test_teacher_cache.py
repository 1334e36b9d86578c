"""The distillation teacher cache: keyed, atomic, cropped and flipped exactly like the patch."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import slimsr
from slimsr.data import PatchDataset, training_store
from slimsr.train import load_config, train
from slimsr.train.teacher_cache import (
    STORAGE,
    build_cache,
    cache_key,
    cache_paths,
    ensure_cache,
    open_cache,
)
from tests.test_train_resume import straight_and_resumed
from tests.train_utils import (
    assert_same_optimizer,
    assert_same_tensors,
    final_state,
    tiny_recipe,
    train_with_torchrun,
    write_images,
)

pytestmark = pytest.mark.usefixtures("one_thread")

FP16_TOL = 2.0**-11  # half an fp16 step of values in [1, 2): a bound for outputs below 2


def _store(tmp: Path, sizes: list[tuple[int, int]], patch: int = 8):
    write_images(tmp / "hr", sizes, seed=5)
    return training_store([(tmp / "hr", None)], 2, patch)


def _key(store, sha: str = "0" * 64, **over):
    args = {
        "teacher_sha256": sha,
        "param_key": None,
        "precision": "fp32",
        "scale": 2,
        "lr_mode": store.lr_mode,
        "images": store.identities,
        **over,
    }
    return cache_key(**args)


def _teacher(tmp: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    path = tmp / f"teacher{seed}.safetensors"
    slimsr.save(slimsr.create_model("edsrmini", 2, num_feat=6, num_block=1), path)
    return path


def test_teacher_patch_is_cut_and_turned_with_the_hr_patch(tmp_path: Path) -> None:
    """A 'teacher' whose output is the HR image itself: every cached teacher patch must then
    equal its HR patch, through random crops, flips and 90-degree turns."""
    store = _store(tmp_path, [(40, 36), (44, 52), (30, 34)])
    hr = [store[i].float_pair()[0] for i in range(len(store))]
    outputs = build_cache(
        tmp_path / "cache",
        _key(store),
        lambda i: torch.full((1,), float(i)),
        lambda x: hr[int(x[0, 0])][None],
    )
    ds = PatchDataset(store, 8, seed=11, teacher=outputs)
    turned = 0
    for position in range(48):
        _, hr_patch, t = ds[(position % len(store), position)]
        assert t.dtype == torch.float16 and t.shape == hr_patch.shape == (3, 16, 16)
        assert (t.float() - hr_patch).abs().max() <= FP16_TOL / 2
        plain = PatchDataset(store, 8, seed=11, flip=False, rot90=False)
        turned += not torch.equal(plain[(position % len(store), position)][1], hr_patch)
    assert turned > 20  # the augmentations were exercised
    # the LR/HR stream is the one a run without a teacher gets
    lr0, hr0 = PatchDataset(store, 8, seed=11)[(1, 5)]
    assert torch.equal(lr0, ds[(1, 5)][0]) and torch.equal(hr0, ds[(1, 5)][1])


def test_cached_output_is_the_teacher_on_the_whole_image(tmp_path: Path) -> None:
    store = _store(tmp_path, [(40, 36), (44, 52)])
    teacher = slimsr.load(_teacher(tmp_path)).eval()
    outputs = build_cache(
        tmp_path / "c", _key(store), lambda i: store[i].float_pair()[1], teacher.raw
    )
    for i in range(len(store)):
        with torch.no_grad():
            live = teacher.raw(store[i].float_pair()[1][None])[0]
        cached = torch.from_numpy(np.array(outputs[i])).float()
        assert cached.shape == live.shape
        assert (cached - live).abs().max() <= FP16_TOL  # outputs within (-2, 2): fp16 rounding
        assert torch.equal(cached, live.to(torch.float16).float())


def test_crop_equals_the_teacher_on_the_crop_away_from_its_border(tmp_path: Path) -> None:
    """A convolutional teacher is local: inside the patch, further from its border than the
    receptive field, the cached crop is what the teacher gives on the LR patch alone; at the
    border the live teacher saw zero padding, the cache the real neighbours."""
    store = _store(tmp_path, [(64, 64)], patch=16)
    teacher = slimsr.load(_teacher(tmp_path)).eval()
    outputs = build_cache(
        tmp_path / "c", _key(store), lambda i: store[i].float_pair()[1], teacher.raw
    )
    lr = store[0].float_pair()[1]
    top, left, p, s = 7, 9, 16, 2
    with torch.no_grad():
        live = teacher.raw(lr[None, :, top : top + p, left : left + p])[0]
    cached = torch.from_numpy(np.array(outputs[0]))[
        :, top * s : (top + p) * s, left * s : (left + p) * s
    ].float()
    ring = 2 * 6  # EDSR-mini, 1 block: 6 LR px of 3x3 convolutions each side, at x2
    inner = (slice(None), slice(ring, -ring), slice(ring, -ring))
    assert (cached[inner] - live[inner]).abs().max() <= FP16_TOL
    assert (cached - live).abs().max() > 10 * FP16_TOL  # the border differs


def test_reused_when_unchanged_and_rebuilt_when_teacher_data_or_lr_mode_change(
    tmp_path: Path,
) -> None:
    teacher = _teacher(tmp_path)
    events = []

    def run(name: str, **over) -> dict | None:
        recipe = tiny_recipe(tmp_path, name, train__iterations=1, data__val=None, **over)
        recipe["distill"] = {"teacher": str(teacher), "levels": 3, **recipe.get("distill", {})}
        result = train(load_config(recipe))
        log = [json.loads(x) for x in (result.run_dir / "train.jsonl").read_text().splitlines()]
        events.append(log[0].get("teacher_cache"))
        return events[-1]

    first = run("a")
    assert first["built"] and first["images"] == 6
    assert Path(first["path"]).parent == tmp_path / "runs" / "teacher_cache"
    assert not run("b")["built"]  # same teacher, data and LR mode: reused
    assert run("c", data__train__lr_mode="uint8")["built"]
    slimsr.save(slimsr.create_model("edsrmini", 2, num_feat=6, num_block=1), teacher)
    after_teacher = run("d")
    assert after_teacher["built"] and after_teacher["path"] != first["path"]
    image = tmp_path / "train_hr" / "img03.png"
    write_images(tmp_path / "other", [(52, 40)], seed=9)
    os.replace(tmp_path / "other" / "img00.png", image)
    assert run("e")["built"]
    assert not run("f")["built"]
    # the same bytes elsewhere, with other mtimes (a dataset copied or re-extracted): reused
    copy = tmp_path / "copied_hr"
    shutil.copytree(tmp_path / "train_hr", copy)
    for file in copy.iterdir():
        os.utime(file, ns=(1_000_000_000, 1_000_000_000))
    assert not run("f2", data__train__sources=[{"hr": str(copy)}])["built"]
    # the same images in another order are other cached arrays
    (copy / "img00.png").rename(copy / "img99.png")
    assert run("f3", data__train__sources=[{"hr": str(copy)}])["built"]
    elsewhere = run("g", distill={"cache_dir": str(tmp_path / "elsewhere")})
    assert elsewhere["built"] and Path(elsewhere["path"]).parent == tmp_path / "elsewhere"
    assert run("h", distill={"cache": False}) is None  # the live teacher, no cache
    bf16 = run("i", train__precision="bf16")  # the teacher then runs under bf16 autocast
    assert bf16 is not None and bf16["built"]


def test_an_interrupted_build_leaves_no_valid_looking_cache(tmp_path: Path) -> None:
    store = _store(tmp_path, [(40, 36), (44, 52), (30, 34)])
    key = _key(store)
    folder = tmp_path / "cache"
    calls = []

    def teacher(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return torch.nn.functional.interpolate(x, scale_factor=2)

    with pytest.raises(KeyboardInterrupt):
        build_cache(folder, key, lambda i: store[i].float_pair()[1], teacher)
    assert open_cache(folder, key) is None
    assert list(folder.iterdir()) == []  # the temporaries are gone
    # a build killed between its two renames: data without an index
    outputs, report = ensure_cache(
        folder, key, lambda i: store[i].float_pair()[1], lambda x: x.repeat(1, 1, 2, 2)
    )
    assert report.built and open_cache(folder, key) is not None
    data, index = cache_paths(folder, key)
    index.unlink()
    assert open_cache(folder, key) is None
    # a truncated data file under a valid index; an index of another key
    outputs, report = ensure_cache(
        folder, key, lambda i: store[i].float_pair()[1], lambda x: x.repeat(1, 1, 2, 2)
    )
    assert report.built and outputs.nbytes == data.stat().st_size
    with open(data, "r+b") as f:
        f.truncate(outputs.nbytes - np.dtype(STORAGE).itemsize)
    assert open_cache(folder, key) is None
    other = _key(store, lr_mode="uint8")
    os.replace(index, cache_paths(folder, other)[1])
    assert open_cache(folder, other) is None


def test_cached_loss_equals_the_live_teachers_when_the_patch_is_the_whole_image(
    tmp_path: Path,
) -> None:
    """LR images exactly one patch large, no flips: the cached target is the live teacher's
    output up to float16 rounding, so the first step's distillation loss agrees."""
    teacher = _teacher(tmp_path)
    hr = tmp_path / "hr16"
    write_images(hr, [(16, 16)] * 4, seed=3)
    losses = {}
    for cache in (True, False):
        recipe = tiny_recipe(
            tmp_path,
            f"cache_{cache}",
            train__iterations=1,
            data__val=None,
            data__train__sources=[{"hr": str(hr)}],
            data__train__flip=False,
            data__train__rot90=False,
            logging__print_every=1,
        )
        recipe["distill"] = {"teacher": str(teacher), "levels": 3, "cache": cache}
        result = train(load_config(recipe))
        log = [json.loads(x) for x in (result.run_dir / "train.jsonl").read_text().splitlines()]
        assert ("teacher_cache" in log[0]) == cache
        losses[cache] = next(e for e in log if e["event"] == "train")
    for term in ("loss", "loss_lap", "loss_lap_hf"):
        assert losses[True][term] == pytest.approx(losses[False][term], rel=1e-3, abs=1e-5)


def test_distillation_from_the_cache_resumes_bit_exactly(tmp_path: Path) -> None:
    teacher = _teacher(tmp_path)
    a, b = straight_and_resumed(
        tmp_path, signal.SIGTERM, 2, distill={"teacher": str(teacher), "levels": 3}
    )
    assert_same_tensors(a["params"], b["params"])
    assert_same_optimizer(a["optimizer"], b["optimizer"])
    assert (tmp_path / "runs" / "teacher_cache").is_dir()


def test_memory_estimate_counts_no_teacher_forward_with_the_cache(tmp_path: Path) -> None:
    from slimsr.train.memory import estimate_memory

    teacher = _teacher(tmp_path)
    sizes = {}
    for cache in (True, False):
        recipe = tiny_recipe(tmp_path, "m")
        recipe["distill"] = {"teacher": str(teacher), "cache": cache}
        sizes[cache] = estimate_memory(load_config(recipe)).teacher
    assert sizes[True] == 0 < sizes[False]


def test_torchrun_first_process_builds_and_two_processes_match_one(tmp_path: Path) -> None:
    """Under DDP rank 0 builds the cache, the other rank waits and maps it; 2 processes with
    the cached targets train what 1 process does."""

    teacher = _teacher(tmp_path)
    over = {"train__iterations": 4, "data__train__batch_size": 4, "data__val": None}
    runs = {}
    for name in ("single", "ddp"):
        recipe = tiny_recipe(tmp_path, name, **over)
        recipe["distill"] = {
            "teacher": str(teacher),
            "levels": 3,
            "cache_dir": str(tmp_path / f"cache_{name}"),
        }
        runs[name] = recipe
    train(load_config(runs["single"]))
    train_with_torchrun(runs["ddp"], tmp_path)
    log = (tmp_path / "runs" / "ddp" / "train.jsonl").read_text().splitlines()
    assert json.loads(log[0])["teacher_cache"]["built"]
    assert len(list((tmp_path / "cache_ddp").iterdir())) == 2  # one data file, one index
    a = final_state(tmp_path / "runs" / "single")
    b = final_state(tmp_path / "runs" / "ddp")
    for key in a["params"]:
        torch.testing.assert_close(b["params"][key], a["params"][key], rtol=0, atol=1e-6)


def test_a_moved_teacher_or_initial_weights_resume_but_another_teacher_does_not(
    tmp_path: Path,
) -> None:
    """A campaign restored on another machine finds its files at new paths: the same teacher
    bytes (sha256 in train.jsonl) and any initial weights (the checkpoint replaces them) are
    not changes; a different teacher is."""
    from slimsr.train.resume import resume_changes, saved_config
    from slimsr.train.training_state import ResumeError

    teacher = _teacher(tmp_path)
    init = tmp_path / "init.safetensors"
    slimsr.save(slimsr.create_model("edsrmini", 2, num_feat=4, num_block=1), init)
    recipe = tiny_recipe(tmp_path, "moved", train__iterations=2, data__val=None)
    recipe["model"]["pretrained"] = str(init)
    recipe["distill"] = {"teacher": str(teacher), "levels": 3}
    run_dir = train(load_config(recipe)).run_dir
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    recipe["distill"]["teacher"] = str(teacher.rename(elsewhere / teacher.name))
    recipe["model"]["pretrained"] = str(init.rename(elsewhere / init.name))
    recipe["auto_resume"] = True
    saved = saved_config(run_dir)
    assert saved is not None
    changes = resume_changes(saved, load_config(recipe), run_dir)
    assert [c.split(":")[0] for c in changes] == ["auto_resume", "model.pretrained"]
    recipe["distill"]["teacher"] = str(_teacher(tmp_path, seed=1))
    with pytest.raises(ResumeError, match=r"distill\.teacher"):
        resume_changes(saved, load_config(recipe), run_dir)
