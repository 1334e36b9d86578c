"""Recipes fit the machine: every shipped recipe passes `--check` (or refuses up front with its
estimate and the `--set` that fits), the estimate measures what autograd keeps, workers are
clamped to the CPUs, and a refusal writes nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import slimsr
from slimsr.train import load_config
from slimsr.train.memory import (
    GB,
    HEADROOM,
    InsufficientMemoryError,
    check_memory,
    effective_workers,
    estimate_memory,
    saved_bytes_per_sample,
)
from tests.conftest import shared_file
from tests.test_train_cli import assert_one_line_error, slimsr_here, write_cfg
from tests.train_utils import tiny_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(
    str(p.relative_to(REPO / "configs"))
    for p in [
        *(REPO / "configs").glob("*.yaml"),
        *(REPO / "configs" / "campaign").glob("*.yaml"),
        *(REPO / "configs" / "ablations").glob("*.yaml"),
    ]
)


def is_compression(recipe: str) -> bool:
    """A `slimsr compress` recipe (a prune section), else a `slimsr train` one."""
    return "prune" in yaml.safe_load((REPO / "configs" / recipe).read_text())


def run_name(recipe: str) -> str:
    """What the recipe names its run: the file stem, campaign_<stem> for a campaign."""
    stem = Path(recipe).stem
    return f"campaign_{stem}" if recipe.startswith("campaign/") else stem


TWO_CORE_RAM = 24 * GB

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_recipe_is_covered() -> None:
    assert len(RECIPES) >= 30 and "bsrn_s_x4.yaml" in RECIPES


def _earlier_outputs(recipe: Path, tmp: Path) -> list[str]:
    """`--set`s replacing inputs that another recipe's run produces (runs/...): a chain's later
    recipe is still checked in full, from a stand-in of the right architecture."""
    data = yaml.safe_load(recipe.read_text())
    sets = []
    model = data["model"]
    if str(model.get("pretrained", "")).startswith("runs/"):
        if "prune" in data:  # the original to prune: any weights will do
            stand_in = tmp / "original.safetensors"
            net = slimsr.create_model(model["name"], model["scale"], **model.get("kwargs", {}))
            slimsr.save(net, stand_in)
            sets.append(f"model.pretrained={stand_in}")
        else:
            sets.append("model.pretrained=null")
    if str(data.get("distill", {}).get("student_init", "")).startswith("runs/"):
        sets.append("distill.student_init=null")
    return [arg for s in sets for arg in ("--set", s)]


@pytest.mark.parametrize("recipe", RECIPES)
def test_shipped_recipe_passes_check_or_refuses_with_the_override(
    recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared_file("datasets", "T91", "HR")
    shared_file("datasets", "BSD200", "HR")
    shared_file("datasets", "Set5")
    for weights in re.findall(
        r"shared/weights/official/([\w.]+)", (REPO / "configs" / recipe).read_text()
    ):
        shared_file("weights", "official", weights)
    monkeypatch.chdir(REPO)  # recipes name ../shared relative to the repository root
    command = "compress" if is_compression(recipe) else "train"
    path = REPO / "configs" / recipe
    run_dir = REPO / "runs" / run_name(recipe)
    existed = run_dir.exists()  # a campaign leg may be running in this checkout
    out = slimsr_here(command, str(path), "--check", *_earlier_outputs(path, tmp_path))
    if out.returncode == 0:
        assert yaml.safe_load(out.stdout)["name"] == run_name(recipe)
        assert "memory" in out.stderr and "GB of RAM" in out.stderr, out.stderr
    else:  # too big for this machine: one line with the estimate and what fits
        assert_one_line_error(out, "needs about", "GB", "--set data.train.batch_size=")
    # --check writes nothing (not checkable when a leg's folder was there before)
    assert existed or not run_dir.exists() or command == "train"


@pytest.mark.parametrize("recipe", [r for r in RECIPES if not is_compression(r)])
def test_shipped_training_recipe_fits_24_gb_or_names_a_batch_that_does(recipe: str) -> None:
    """The 24 GB / 2-core machine of the issue, whatever machine runs the test."""
    shared_file("datasets", "T91", "HR")
    cfg = load_config(REPO / "configs" / recipe, check_paths=False, base_dir=REPO)
    estimate = estimate_memory(cfg)
    if estimate.host <= HEADROOM * TWO_CORE_RAM:
        assert check_memory(cfg, ram=TWO_CORE_RAM, gpu=None) == estimate
        return
    with pytest.raises(InsufficientMemoryError) as info:
        check_memory(cfg, ram=TWO_CORE_RAM, gpu=None)
    message = str(info.value)
    assert f"{cfg.name} needs about {estimate.host / GB:.1f} GB" in message
    batch = int(message.split("--set data.train.batch_size=")[1].split()[0])
    assert 0 < batch < cfg.data.train.batch_size
    assert estimate_memory(cfg, batch_size=batch).host <= HEADROOM * TWO_CORE_RAM
    assert estimate_memory(cfg, batch_size=batch * 2).host > HEADROOM * TWO_CORE_RAM


def test_bsrn_s_x4_is_refused_on_24_gb() -> None:
    """The recipe of the issue: batch 256 of 64-px patches keeps ~26 GB of activations."""
    shared_file("datasets", "T91", "HR")
    cfg = load_config(REPO / "configs" / "bsrn_s_x4.yaml", check_paths=False, base_dir=REPO)
    with pytest.raises(InsufficientMemoryError, match=r"needs about 2[0-9.]+ GB"):
        check_memory(cfg, ram=TWO_CORE_RAM, gpu=None)


def test_saved_activations_of_a_plain_conv_stack_are_counted_exactly() -> None:
    # conv1 keeps its input (3 ch), ReLU its output (8 ch), conv2 the same tensor (counted
    # once); plus the network output (3 ch): (3 + 8 + 3) floats per pixel
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    assert saved_bytes_per_sample(net, 16) == (3 + 8 + 3) * 16 * 16 * 4
    assert saved_bytes_per_sample(net, 32) == 4 * saved_bytes_per_sample(net, 16)
    assert net.training


def test_estimate_grows_with_the_batch(tmp_path: Path) -> None:
    cfg = load_config(tiny_recipe(tmp_path))
    small, large = estimate_memory(cfg, batch_size=2), estimate_memory(cfg, batch_size=8)
    assert large.activations == pytest.approx(4 * small.activations, rel=0.01)
    assert large.loader == 4 * small.loader and large.cache == small.cache > 0


def test_workers_are_clamped_to_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert effective_workers(1) == (1, None)
    workers, note = effective_workers(4)
    assert workers == 2 and note is not None and "num_workers 4 -> 2" in note
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun ranks share the two CPUs
    assert effective_workers(4)[0] == 1


def test_a_run_that_does_not_fit_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = tiny_recipe(tmp_path, "big")
    cfg = load_config(recipe)
    fits = estimate_memory(cfg, batch_size=2).host
    too_big = estimate_memory(cfg, batch_size=4).host
    ram = int((fits + too_big) / 2 / HEADROOM)  # batch 4 does not fit, batch 2 does
    monkeypatch.setattr("slimsr.train.memory.available_memory", lambda: ram)
    path = write_cfg(tmp_path, recipe)
    for args in (["--check"], []):
        out = slimsr_here("train", str(path), *args)
        assert_one_line_error(out, "big needs about", "--set data.train.batch_size=2 ")
    assert not (tmp_path / "runs").exists()
    out = slimsr_here("train", str(path), "--set", "data.train.batch_size=2", "--check")
    assert out.returncode == 0, out.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_activations_are_compared_with_the_gpu(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    recipe["device"] = "cuda"
    est = estimate_memory(load_config(recipe))
    assert est.device == "cuda" and est.on_device > est.activations > 0
