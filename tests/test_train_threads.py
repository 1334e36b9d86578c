"""The oversubscription warning of `slimsr train`: when it fires, what it says, where it goes."""

from __future__ import annotations

import json

import pytest

from slimsr.train import threads as threads_mod
from slimsr.train.threads import CpuLoad, oversubscription_warning


@pytest.mark.parametrize(
    ("load", "threads", "cpus"),
    [
        (0.0, 2, 2),  # a quiet machine: every thread has a core
        (0.4, 2, 2),  # noise within the margin
        (3.0, 1, 2),  # one thread has no barrier: it shares, it does not stall
        (5.0, 1, 1),
        (1.0, 4, 8),
        (6.0, 2, 8),
    ],
)
def test_no_warning_when_the_cores_suffice(load: float, threads: int, cpus: int) -> None:
    assert oversubscription_warning(load, threads, cpus) is None


def test_two_threads_beside_a_busy_core_warn_with_the_fix() -> None:
    # the measured case: another process keeps one of two cores busy, this one wants both
    msg = oversubscription_warning(1.0, 2, 2)
    assert msg is not None
    assert "\n" not in msg
    assert "1-min load 1.00" in msg and "2 usable CPUs" in msg and "2 threads" in msg
    assert "OMP_NUM_THREADS=1" in msg


def test_suggested_threads_fit_the_idle_cores() -> None:
    msg = oversubscription_warning(2.2, 8, 8)
    assert msg is not None and "OMP_NUM_THREADS=5" in msg
    # a machine busier than its cores still gets a usable suggestion
    msg = oversubscription_warning(7.5, 4, 4)
    assert msg is not None and "OMP_NUM_THREADS=1" in msg


def test_threshold_is_load_plus_threads_over_cpus_plus_margin() -> None:
    margin = threads_mod.MARGIN
    assert oversubscription_warning(4 - 3 + margin - 0.01, 3, 4) is None
    assert oversubscription_warning(4 - 3 + margin + 0.01, 3, 4) is not None


def test_the_check_is_read_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    loads = iter([(1.5, 0.0, 0.0), (0.0, 0.0, 0.0)])
    monkeypatch.setattr(threads_mod.os, "getloadavg", lambda: next(loads))
    monkeypatch.setattr(threads_mod, "usable_cpus", lambda: 2)
    monkeypatch.setattr(threads_mod.torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(threads_mod, "_first", None)
    first = threads_mod.check_cpu_load()
    assert first == CpuLoad(1.5, 2, 2, oversubscription_warning(1.5, 2, 2))
    assert first.warning is not None
    # a later training of the same process (compress's next stage) sees its own load: not read
    assert threads_mod.check_cpu_load() is first


def _tiny_config(tmp_path, progress: str):
    import numpy as np
    from PIL import Image

    from slimsr.train import load_config

    hr = tmp_path / "hr"
    hr.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8)).save(hr / f"{i}.png")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: t\nmodel: {name: edsrmini, scale: 2}\n"
        f"data: {{train: {{sources: [{{hr: {hr}}}], patch_size: 8, batch_size: 2, "
        "num_workers: 0}, val: null}\n"
        "train: {iterations: 1, lr: 1.0e-4}\n"
        f"logging: {{print_every: 1, val_every: 1, checkpoint_every: 1, tensorboard: false, "
        f"progress: {progress}}}\n"
    )
    return load_config(recipe, [f"output_dir={tmp_path / 'runs'}", "device=cpu"])


@pytest.mark.parametrize("progress", ["none", "lines"])
def test_train_warns_on_stderr_and_records_the_load(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, progress: str
) -> None:
    from slimsr.train import train

    busy = CpuLoad(3.0, 2, 2, oversubscription_warning(3.0, 2, 2))
    monkeypatch.setattr("slimsr.train.trainer.check_cpu_load", lambda: busy)
    result = train(_tiny_config(tmp_path, progress))
    err = capsys.readouterr().err
    assert busy.warning is not None
    assert err.count(busy.warning) == 1
    start = json.loads((result.run_dir / "train.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start"
    assert start["cpu_load"] == {"load_1m": 3.0, "threads": 2, "cpus": 2, "warning": busy.warning}


def test_train_is_silent_on_a_quiet_machine(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from slimsr.train import train

    quiet = CpuLoad(0.1, 2, 2, None)
    monkeypatch.setattr("slimsr.train.trainer.check_cpu_load", lambda: quiet)
    result = train(_tiny_config(tmp_path, "lines"))
    assert "OMP_NUM_THREADS" not in capsys.readouterr().err
    start = json.loads((result.run_dir / "train.jsonl").read_text().splitlines()[0])
    assert start["cpu_load"]["warning"] is None
