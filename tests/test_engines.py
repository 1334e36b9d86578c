"""`slimsr upscale --engine auto|torch|onnxruntime` and `--int8` (slimsr.engines): the auto
choice is an available engine and gives the forced engine's bytes, its cache is written,
reused, keyed by thread count and survives corruption; refusals are one line, exit 2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

import slimsr
from slimsr import engines
from slimsr.engines import (
    CACHE_FILE,
    EngineError,
    cache_key,
    choose_engine,
    onnxruntime_available,
    write_cache,
)
from slimsr.weights import default_model
from tests.conftest import run_here
from tests.test_eval import make_set

pytestmark = pytest.mark.usefixtures("one_thread")

needs_ort = pytest.mark.skipif(
    not onnxruntime_available(), reason="needs onnx and onnxruntime (pip install slimsr[onnx])"
)
needs_litert = pytest.mark.skipif(
    importlib.util.find_spec("ai_edge_litert") is None,
    reason="needs the tflite extra (ai-edge-litert)",
)
EXAMPLE = Path(slimsr.__file__).resolve().parent / "assets" / "example.png"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("SLIMSR_CACHE_DIR", str(folder))
    return folder / CACHE_FILE


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A small crop of a real photograph (INT8 error on noise says little)."""
    path = tmp_path / "in.png"
    PILImage.open(EXAMPLE).convert("RGB").crop((40, 30, 64, 50)).save(path)
    return path


def tiny() -> slimsr.SRModel:
    torch.manual_seed(0)
    return slimsr.create_model("edsrmini", 2, num_feat=8, num_block=1)


def upscale(capsys, image: Path, out: Path, *args: str) -> tuple[np.ndarray, str]:
    """`slimsr upscale IMAGE -o OUT -v ARGS`: (the output's pixels, the engine line)."""
    code, stdout, err = run_here(["upscale", str(image), "-o", str(out), "-v", *args], capsys)
    assert code == 0, err
    line = next(ln for ln in stdout.splitlines() if ln.startswith("engine: "))
    (result,) = out.iterdir()
    return np.asarray(PILImage.open(result)), line


def refused(capsys, *args: str) -> str:
    code, _, err = run_here(list(args), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    return err


def available() -> set[str]:
    return {"torch", "onnxruntime"} if onnxruntime_available() else {"torch"}


# -- auto: one of the available engines, the forced engine's output -----------------------------


def test_auto_picks_an_available_engine_and_gives_its_output(tmp_path, image, cache, capsys):
    auto, line = upscale(capsys, image, tmp_path / "auto", "-s", "2")
    chosen = line.split()[1]
    assert chosen in available(), line
    forced, forced_line = upscale(capsys, image, tmp_path / "forced", "-s", "2", "--engine", chosen)
    assert forced_line == f"engine: {chosen} (--engine)"
    assert np.array_equal(auto, forced)
    if len(available()) > 1:  # a measured choice is cached, and the next run reuses it
        assert "fastest on a 64x64 input" in line and cache.is_file()
        again, line2 = upscale(capsys, image, tmp_path / "again", "-s", "2")
        assert line2.startswith(f"engine: {chosen} (cached choice") and np.array_equal(again, auto)


@needs_ort
@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_a_cached_choice_is_run_exactly_as_the_forced_engine(
    tmp_path, image, cache, capsys, engine
):
    key, _ = cache_key(default_model(2), 1, torch.float32)
    assert write_cache(cache, key, {"engine": engine, "times_ms": {engine: 1.0}})
    auto, line = upscale(capsys, image, tmp_path / "auto", "-s", "2")
    assert line.startswith(f"engine: {engine} (cached choice")
    forced, _ = upscale(capsys, image, tmp_path / "forced", "-s", "2", "--engine", engine)
    assert np.array_equal(auto, forced)
    other = {"torch": "onnxruntime", "onnxruntime": "torch"}[engine]
    elsewhere, _ = upscale(capsys, image, tmp_path / "other", "-s", "2", "--engine", other)
    diff = np.abs(elsewhere.astype(int) - auto.astype(int))
    assert diff.max() <= 1  # same model: the engines differ in float rounding only


# -- the cache -----------------------------------------------------------------------------------


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many engine timings ran (`measure_ms` calls)."""
    calls: list[int] = []
    real = engines.measure_ms

    def counting(fn, x, runs=engines.MEASURE_RUNS):
        calls.append(1)
        return real(fn, x, runs)

    monkeypatch.setattr(engines, "measure_ms", counting)
    return calls


@needs_ort
def test_the_choice_is_cached_reused_and_keyed_by_thread_count(cache, measured) -> None:
    first = choose_engine(tiny(), threads=1)
    assert first.how == "measured" and first.engine in first.times_ms
    assert set(first.times_ms) == {"torch", "onnxruntime"} and len(measured) == 2
    entries = json.loads(cache.read_text())["entries"]
    assert [e["engine"] for e in entries.values()] == [first.engine]
    second = choose_engine(tiny(), threads=1)
    assert second.how == "cached" and second.engine == first.engine
    assert second.times_ms == pytest.approx(first.times_ms) and len(measured) == 2
    other = choose_engine(tiny(), threads=2)
    assert other.how == "measured" and len(measured) == 4
    entries = json.loads(cache.read_text())["entries"]
    assert sorted(e["identity"]["threads"] for e in entries.values()) == [1, 2]
    wider = slimsr.create_model("edsrmini", 2, num_feat=12, num_block=1)
    assert choose_engine(wider, threads=1).how == "measured"  # kwargs are part of the key


@needs_ort
@pytest.mark.parametrize("content", ["{not json", "[]", '{"version": 1, "entries": 3}'])
def test_a_corrupt_cache_is_measured_again_and_replaced(cache, measured, content) -> None:
    cache.parent.mkdir(parents=True)
    cache.write_text(content)
    choice = choose_engine(tiny(), threads=1)
    assert choice.how == "measured" and len(measured) == 2
    assert choose_engine(tiny(), threads=1).how == "cached"


def test_the_cache_folder_follows_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SLIMSR_CACHE_DIR", str(tmp_path / "own"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert engines.cache_dir() == tmp_path / "own"
    monkeypatch.delenv("SLIMSR_CACHE_DIR")
    assert engines.cache_dir() == tmp_path / "xdg" / "slimsr"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert engines.cache_dir() == tmp_path / "home" / ".cache" / "slimsr"


@needs_ort
@pytest.mark.parametrize(
    "entry",
    [
        {"engine": "torch", "times_ms": {"torch": "fast"}},
        {"engine": "tpu", "times_ms": {"tpu": 1.0}},
        {"engine": "torch", "times_ms": {"torch": float("nan")}},
        {"engine": "torch", "times_ms": {"gpu": 1.0}},
        {"engine": "torch", "times_ms": [1.0]},
        "torch",
    ],
)
def test_a_bad_cache_entry_is_measured_again(cache, measured, entry) -> None:
    key, _ = cache_key(tiny(), 1, torch.float32)
    assert write_cache(cache, key, entry)  # type: ignore[arg-type]
    choice = choose_engine(tiny(), threads=1)
    assert choice.how == "measured" and len(measured) == 2
    choice.describe()  # formats the times: must not raise
    again = choose_engine(tiny(), threads=1)
    assert again.how == "cached" and again.describe().startswith(f"engine: {choice.engine}")


def test_no_home_means_no_cache_not_a_crash(tmp_path, monkeypatch, measured) -> None:
    for var in ("SLIMSR_CACHE_DIR", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(var, raising=False)

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert engines.cache_dir() is None
    for _ in range(2):  # measured each time, nothing written
        choice = choose_engine(tiny(), threads=1)
        assert choice.how in ("measured", "only") and choice.engine in available()
    if onnxruntime_available():
        assert "no cache folder" in choice.note and len(measured) == 4


@needs_ort
def test_torchrun_runs_torch_unless_a_choice_is_cached(cache, measured, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    choice = choose_engine(tiny(), threads=1)
    assert (choice.engine, choice.how) == ("torch", "torchrun") and not measured
    assert "not measured under torchrun" in choice.describe() and not cache.exists()
    key, _ = cache_key(tiny(), 1, torch.float32)
    assert write_cache(cache, key, {"engine": "onnxruntime", "times_ms": {"onnxruntime": 1.0}})
    cached = choose_engine(tiny(), threads=1)
    assert (cached.engine, cached.how) == ("onnxruntime", "cached") and not measured


@pytest.mark.skipif(engines.fcntl is None, reason="no fcntl: the cache write is not locked")
def test_concurrent_cache_writers_keep_each_others_entries(tmp_path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    cache = tmp_path / CACHE_FILE
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda i: write_cache(cache, f"k{i}", {"engine": "torch"}), range(32)))
    assert all(done)
    assert set(engines.read_cache(cache)) == {f"k{i}" for i in range(32)}


@needs_ort
def test_an_unwritable_cache_costs_a_measurement_not_the_upscale(tmp_path, measured) -> None:
    (tmp_path / "file").write_text("")
    cache = tmp_path / "file" / CACHE_FILE  # its folder is a file
    for _ in range(2):
        choice = choose_engine(tiny(), threads=1, cache=cache)
        assert choice.how == "measured" and "not writable" in choice.note
    assert len(measured) == 4


# -- forced engines and refusals -----------------------------------------------------------------


def test_an_unavailable_engine_is_refused_and_auto_runs_torch(
    tmp_path, image, cache, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(engines, "onnxruntime_available", lambda: False)
    err = refused(
        capsys, "upscale", str(image), "-o", str(tmp_path / "o"), "--engine", "onnxruntime"
    )
    assert "pip install slimsr[onnx]" in err
    _, line = upscale(capsys, image, tmp_path / "auto", "-s", "2")
    assert line == "engine: torch (the only engine available)" and not cache.exists()
    err = refused(capsys, "upscale", str(image), "-o", str(tmp_path / "o"), "--engine", "tpu")
    assert "--engine must be one of auto, torch, onnxruntime" in err
    with pytest.raises(EngineError, match=r"^engine must be one of"):
        slimsr.upscale_image(tiny(), PILImage.open(image), engine="tpu")


def test_cuda_and_half_precision_run_torch_without_measuring(measured) -> None:
    choice = choose_engine(tiny(), dtype=torch.bfloat16)
    assert (choice.engine, choice.how) == ("torch", "only") and not measured
    with pytest.raises(EngineError, match="float32 on the CPU"):
        choose_engine(tiny(), "onnxruntime", dtype=torch.bfloat16)


@needs_ort
def test_an_onnx_file_runs_in_onnxruntime_and_eval_records_it(tmp_path, image, capsys) -> None:
    from slimsr.export.onnx import export_onnx

    path = tmp_path / "tiny.onnx"
    export_onnx(tiny(), path, verify=False)
    _, line = upscale(capsys, image, tmp_path / "up", "-w", str(path))
    assert line == "engine: onnxruntime (the file's runtime)"
    err = refused(capsys, "upscale", str(image), "-o", str(tmp_path / "o"), "-w", str(path),
                  "--engine", "torch")  # fmt: skip
    assert "runs in onnxruntime" in err
    make_set(tmp_path / "toy", {"a": (20, 16)}, 2)
    code, _, err = run_here(
        ["eval", "-w", str(path), "--data", str(tmp_path / "toy"), "-o", str(tmp_path / "res")],
        capsys,
    )
    assert code == 0, err
    assert json.loads((tmp_path / "res" / "results.json").read_text())["engine"] == "onnxruntime"


@needs_ort
def test_auto_falls_back_to_torch_when_onnxruntime_fails_to_run(cache, monkeypatch) -> None:
    from slimsr.export.common import OnnxError
    from slimsr.export.runners import OnnxUpscaler

    def broken(self, x):
        raise OnnxError(f"{self.what}: onnxruntime failed on a {x.shape} input (boom)")

    monkeypatch.setattr(OnnxUpscaler, "_run", broken)
    choice = choose_engine(tiny(), threads=1)
    assert (choice.engine, choice.how) == ("torch", "measured")
    assert set(choice.times_ms) == {"torch"} and "onnxruntime skipped" in choice.note


@needs_ort
def test_auto_compares_the_engines_at_an_odd_size(cache, monkeypatch) -> None:
    """A graph that is right on 64x64 but wrong elsewhere (its pad / crop path) is dropped."""
    from slimsr.export.runners import OnnxUpscaler

    real = OnnxUpscaler._run

    def wrong_off_square(self, x):
        y = real(self, x)
        return y if x.shape[-1] == x.shape[-2] else y + 0.1

    monkeypatch.setattr(OnnxUpscaler, "_run", wrong_off_square)
    choice = choose_engine(tiny(), threads=1)
    assert choice.engine == "torch" and "on a 53x61 input" in choice.note


@needs_ort
def test_the_engine_session_runs_on_the_cpu(monkeypatch) -> None:
    """Even where the installed onnxruntime has CUDA, the engine times and runs on the CPU."""
    import onnxruntime as ort

    asked: list[list[str]] = []
    real = ort.InferenceSession

    def recording(model, opts, providers):
        asked.append(list(providers))
        return real(model, opts, providers=[p for p in providers if p != "CUDAExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider",
                                                                 "CPUExecutionProvider"])  # fmt: skip
    monkeypatch.setattr(ort, "InferenceSession", recording)
    engines.onnx_engine(tiny(), 1)
    assert asked == [["CPUExecutionProvider"]]


@needs_ort
def test_the_onnxruntime_engine_tiles_within_the_memory_budget() -> None:
    """The in-memory session carries the PyTorch model's measured bytes per pixel (with a
    margin), so `--max-memory` picks the tile PyTorch would, not the file constant's."""
    from slimsr.upscale import UpscaleOptions, activation_bytes_per_pixel, choose_tile

    torch.manual_seed(0)
    model = slimsr.create_model("edsrmini", 4, num_feat=64, num_block=1)
    bpp = activation_bytes_per_pixel(model)
    runner = choose_engine(model, "onnxruntime", threads=1).net
    assert runner.bytes_per_pixel == pytest.approx(bpp * engines.ORT_MEMORY_FACTOR)
    assert runner.bytes_per_pixel > 4 * slimsr.upscale.RUNNER_BYTES_PER_PIXEL
    opts = UpscaleOptions(memory_budget_mb=256)
    tile = choose_tile(1000, 1000, opts, runner, output_in_memory=False)
    assert opts.bytes_per_pixel == runner.bytes_per_pixel
    assert tile > 64 and tile * tile * runner.bytes_per_pixel <= 256 * 2**20
    constant = UpscaleOptions(memory_budget_mb=256, bytes_per_pixel=4096.0)
    assert tile < choose_tile(1000, 1000, constant, runner, output_in_memory=False)


@needs_ort
def test_a_runner_runs_on_its_own_runtime_in_the_library(tmp_path, image) -> None:
    from slimsr.export.onnx import export_onnx
    from slimsr.export.runners import load_runner

    path = tmp_path / "tiny.onnx"
    export_onnx(tiny(), path, verify=False)
    runner = load_runner(path)
    for engine in (None, "auto", "onnxruntime"):
        out = slimsr.upscale_image(runner, image, engine=engine)
        assert out.size == (48, 40)
    assert np.array_equal(np.asarray(out), np.asarray(slimsr.upscale_image(runner, image)))
    with pytest.raises(EngineError, match="runs in onnxruntime") as info:
        slimsr.upscale_image(runner, image, engine="torch")
    assert "--" not in str(info.value)  # the library names no command-line flag


@needs_ort
def test_the_library_takes_an_engine(image) -> None:
    model = tiny()
    torch_out = np.asarray(slimsr.upscale_image(model, image))
    ort_out = np.asarray(slimsr.upscale_image(model, image, engine="onnxruntime"))
    assert torch_out.shape == ort_out.shape == (40, 48, 3)
    assert np.abs(torch_out.astype(int) - ort_out.astype(int)).max() <= 1


# -- INT8 ----------------------------------------------------------------------------------------


@needs_litert
def test_int8_runs_the_shipped_abpn_file_within_a_psnr_bound(tmp_path, image, capsys) -> None:
    int8, line = upscale(capsys, image, tmp_path / "int8", "-m", "abpn", "--int8")
    assert line.startswith("engine: tflite (--int8; abpn_x3_int8_qat.tflite")
    float_, _ = upscale(capsys, image, tmp_path / "float", "-m", "abpn", "--engine", "torch")
    assert int8.shape == float_.shape == (60, 72, 3)
    mse = np.mean((int8.astype(float) - float_.astype(float)) ** 2)
    assert mse > 0 and 10 * np.log10(255**2 / mse) > 40  # different, yet close (51 dB measured)


def test_int8_is_refused_where_no_int8_file_of_known_loss_exists(tmp_path, image, capsys) -> None:
    out = str(tmp_path / "o")
    err = refused(capsys, "upscale", str(image), "-o", out, "--int8")  # the bundled EDSR-mini
    assert "edsrmini x4 has no INT8 file" in err
    err = refused(capsys, "upscale", str(image), "-o", out, "-m", "abpn", "--int8", "--engine",
                  "onnxruntime")  # fmt: skip
    assert "drop --engine onnxruntime" in err
    weights = tmp_path / "abpn_x3.pth"  # an ABPN x3 that is not the shipped one
    torch.save(slimsr.create_model("abpn", 3).net.state_dict(), weights)
    err = refused(capsys, "upscale", str(image), "-o", out, "-w", str(weights), "--int8")
    assert "abpn x3 has no INT8 file" in err
    assert not Path(out).exists()


def test_shipped_abpn_is_named_without_weights(tmp_path, image, capsys) -> None:
    pixels, line = upscale(capsys, image, tmp_path / "o", "-m", "abpn", "--engine", "torch")
    assert pixels.shape == (60, 72, 3) and line == "engine: torch (--engine)"
    err = refused(capsys, "upscale", str(image), "-o", str(tmp_path / "p"), "-m", "abpn", "-s", "4")
    assert "needs --weights" in err and "abpn x3" in err


def test_the_cache_key_says_which_pytorch_form_was_measured() -> None:
    """A model that gains a fused form must be measured again, not kept on the engine its
    plain graph lost to: the key records the form PyTorch runs."""
    fused_key, fused = cache_key(slimsr.create_model("fmen_s", 4), 1, torch.float32)
    plain_key, plain = cache_key(slimsr.create_model("fmen_s_train", 4), 1, torch.float32)
    assert fused["torch_form"] == "fused" and plain["torch_form"] == "plain"
    assert fused_key != plain_key
