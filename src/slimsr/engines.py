"""Which engine runs a model in `slimsr upscale`: PyTorch, ONNX Runtime, or an INT8 TFLite file.

- `torch`: the model's fast inference form (`slimsr.inference_form`: fused where one exists).
  Always available; the only one on CUDA, in fp16/bf16 and with `--compile`.
- `onnxruntime`: the model exported to ONNX in memory (`export.onnx.onnx_model_bytes`, no file
  written) and run by an onnxruntime session with torch's thread count. Available when `onnx`
  and `onnxruntime` import and the model exports.
- `tflite`: a .tflite file, run by LiteRT: a file the user gave, or, with `--int8`, the shipped
  INT8 file of a model whose recorded Set5 loss is within `INT8_MAX_LOSS_DB` (ABPN x3 today).
  INT8 changes the output, so it is never chosen automatically.

`auto` (the default) measures the float engines on one fixed small input (`MEASURE_RUNS` runs
after a warm-up, median) and keeps the fastest whose output matches PyTorch's to the export
tolerance. The choice is cached in `engines.json` under `cache_dir()`, keyed by the model
(architecture, scale, kwargs, dtype), the machine (CPU model, torch / onnxruntime / slimsr
versions) and the thread count, so the measurement runs once per combination. A cache file
that cannot be read, or an entry in it that is not a valid choice, is ignored (the choice is
measured again and the entry replaced); one that cannot be written, or no cache folder at all
(no HOME), only costs the next run a measurement. An onnxruntime candidate that fails to build,
to run, or to match PyTorch (on the square input and on an odd-sized one, which takes the
graph's pad / crop path) is dropped and PyTorch runs.

Under torchrun (WORLD_SIZE > 1) a choice that is not cached yet is not measured: every
process would time at once on shared cores (timings that contend, ranks that may choose
differently), so PyTorch runs; a cached choice is used as usual.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

try:
    import fcntl
except ImportError:  # Windows: writes stay atomic, concurrent writers may drop an entry
    fcntl = None  # type: ignore[assignment]

from slimsr.errors import SlimsrError
from slimsr.fileio import atomic_write_text
from slimsr.model import SRModel
from slimsr.upscale import _raw, activation_bytes_per_pixel, ready_for_upscale

ENGINES = ("torch", "onnxruntime", "tflite")
ENGINE_CHOICES = ("auto", "torch", "onnxruntime")
"""What `--engine` accepts; `tflite` comes from a .tflite file or `--int8`."""

MEASURE_SIZE = 64
"""Side of the random LR input each candidate is timed on (small: the choice costs ~1 s)."""
MEASURE_RUNS = 3
CHECK_SIZE = (53, 61)
"""An odd (h, w) the onnxruntime output is also compared at: exercises the graph's pad / crop."""
ORT_MEMORY_FACTOR = 2.0
"""onnxruntime's working memory per pixel over PyTorch's (`activation_bytes_per_pixel`), for
`--max-memory` tiles: measured by slimsr 1.4x (EDSR x4, 2 blocks, 96 and 160 px inputs, peak
RSS growth of one run, 1 thread), doubled for margin (its arena grows in chunks)."""
CACHE_FILE = "engines.json"
CACHE_VERSION = 1


class EngineError(SlimsrError):
    """An engine that was asked for but cannot run this model here."""


@dataclass
class EngineChoice:
    """The engine that runs a model, the model ready to run on it, and why it was chosen."""

    engine: str
    net: Any
    how: str
    """"forced", "file", "only" (one candidate), "measured", "cached" or "int8"."""
    times_ms: dict[str, float] = field(default_factory=dict)
    """Median ms per `MEASURE_SIZE` run, per engine (measured now, or when cached)."""
    note: str = ""

    def describe(self) -> str:
        """One line for verbose output."""
        times = ", ".join(f"{e} {ms:.1f} ms" for e, ms in self.times_ms.items())
        what = {
            "forced": "--engine",
            "file": "the file's runtime",
            "only": "the only engine available",
            "measured": f"fastest on a {MEASURE_SIZE}x{MEASURE_SIZE} input: {times}",
            "cached": f"cached choice, measured earlier: {times}",
            "int8": "--int8",
            "torchrun": "not measured under torchrun: all processes would time at once",
        }[self.how]
        return f"engine: {self.engine} ({what}{'; ' + self.note if self.note else ''})"


def engine_of(net: Any) -> str:
    """The engine a loaded model runs on: a runner's runtime, else torch."""
    return getattr(net, "engine", "") or "torch"


# -- the cache -------------------------------------------------------------------------------


def cache_dir() -> Path | None:
    """$SLIMSR_CACHE_DIR, else $XDG_CACHE_HOME/slimsr, else ~/.cache/slimsr; None when there is
    no home to find (HOME unset, no passwd entry): then nothing is cached."""
    if os.environ.get("SLIMSR_CACHE_DIR"):
        return Path(os.environ["SLIMSR_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "slimsr"
    try:
        return Path.home() / ".cache" / "slimsr"
    except (RuntimeError, KeyError):  # Path.home(): "Could not determine home directory"
        return None


def cpu_name() -> str:
    """The CPU model string (Linux /proc/cpuinfo, else what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cache_key(model: SRModel, threads: int, dtype: torch.dtype) -> tuple[str, dict[str, Any]]:
    """(key, what it is made of): the model, the machine and the thread count. Also whether
    PyTorch would run the model's fused form, so that a model which gains one (the version
    number does not move with every commit) is measured again rather than kept on the engine
    its plain graph lost to."""
    from slimsr import __version__
    from slimsr.fused import has_fused_form

    identity = {
        "arch": model.info.name,
        "scale": int(model.scale),
        "kwargs": model.kwargs,
        "dtype": str(dtype).replace("torch.", ""),
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
        "slimsr": __version__,
        "torch_form": "fused" if has_fused_form(model.net) else "plain",
        "threads": int(threads),
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32], identity


def read_cache(path: Path) -> dict[str, Any]:
    """The cached entries, or none when the file is missing, unreadable or not ours."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def valid_entry(entry: Any) -> bool:
    """A cached choice we can use: a float engine, and finite times per known engine."""
    if not isinstance(entry, dict) or entry.get("engine") not in ("torch", "onnxruntime"):
        return False
    times = entry.get("times_ms", {})
    return isinstance(times, dict) and all(
        name in ENGINES
        and isinstance(ms, int | float)
        and not isinstance(ms, bool)
        and math.isfinite(ms)
        for name, ms in times.items()
    )


def write_cache(path: Path, key: str, entry: dict[str, Any]) -> bool:
    """Add `entry` under `key`. False when it cannot be written (a read-only home costs a
    measurement next time, not the upscale).

    Concurrent writers (torchrun, two shells) keep each other's entries: under an exclusive
    lock on a side file (where `fcntl` exists) the file is re-read, merged and replaced
    atomically (unique temp file + rename), so a reader never sees half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path.with_name(path.name + ".lock")):
            entries = read_cache(path)
            entries[key] = entry
            text = json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1)
            atomic_write_text(path, text + "\n")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    """An exclusive advisory lock on `lock` (POSIX); without `fcntl`, no lock."""
    with open(lock, "a+b") as fh:
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield  # closing the file releases the lock


# -- the engines -----------------------------------------------------------------------------


def onnxruntime_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def onnx_engine(model: SRModel, threads: int) -> Any:
    """`model` exported to ONNX in memory and opened in onnxruntime on the CPU with `threads`
    threads. The runner carries the model's working memory per pixel (PyTorch's, measured,
    times `ORT_MEMORY_FACTOR`) so `--max-memory` tiles it like the PyTorch model."""
    from slimsr.export.onnx import onnx_model_bytes
    from slimsr.export.runners import OnnxUpscaler

    bpp = activation_bytes_per_pixel(model) * ORT_MEMORY_FACTOR
    data = onnx_model_bytes(model)
    what = f"{model.name} x{model.scale} (in-memory ONNX)"
    runner = OnnxUpscaler.from_bytes(
        data, what, threads=threads, providers=("CPUExecutionProvider",)
    )
    runner.bytes_per_pixel = bpp
    return runner


def measure_ms(
    fn: Callable[[torch.Tensor], Any], x: torch.Tensor, runs: int = MEASURE_RUNS
) -> float:
    """Median wall time of `fn(x)` in ms over `runs` runs, after one warm-up run."""
    times = []
    with torch.inference_mode():
        fn(x)
        for _ in range(runs):
            start = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure_input(h: int = MEASURE_SIZE, w: int = MEASURE_SIZE) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, h, w, generator=gen)


def choose_engine(
    model: Any,
    engine: str | None = "auto",
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    compile: bool = False,
    threads: int | None = None,
    cache: Path | None = None,
) -> EngineChoice:
    """The engine for `model` (an `SRModel` or a runner) and the model ready to run on it.

    `engine`: "auto" (cached or measured, module docstring), "torch" or "onnxruntime"; None
    is "auto". A runner (an .onnx / .tflite file) runs on its own runtime: "auto" or its own
    runtime's name, anything else is an error. `threads` defaults to torch's count; `cache` to
    `cache_dir() / CACHE_FILE`. Errors name the engine, not a command-line flag (the library
    and the CLI share them).
    """
    engine = engine or "auto"
    if engine not in ENGINE_CHOICES:
        raise EngineError(f"engine must be one of {', '.join(ENGINE_CHOICES)}, not {engine!r}")
    device = torch.device(device)
    if not isinstance(model, SRModel):  # a file: its runtime is the engine
        own = engine_of(model)
        if engine not in ("auto", own) and own == "torch":
            raise EngineError(f"the {engine} engine runs an SRModel (slimsr.load), not {model!r}")
        if engine not in ("auto", own):
            raise EngineError(
                f"{getattr(model, '_short_name', model)} runs in {own}; the {engine} engine "
                "runs PyTorch weights (.pth / .safetensors)"
            )
        return EngineChoice(own, ready_for_upscale(model, device, dtype), "file")
    threads = threads or torch.get_num_threads()
    torch_only = device.type != "cpu" or dtype != torch.float32 or compile
    if engine == "onnxruntime":
        if torch_only:
            why = "compile" if compile else ("CUDA" if device.type != "cpu" else str(dtype))
            raise EngineError(f"the onnxruntime engine runs float32 on the CPU; not with {why}")
        if not onnxruntime_available():
            raise EngineError(
                "the onnxruntime engine needs onnx and onnxruntime: pip install slimsr[onnx]"
            )
        return EngineChoice("onnxruntime", onnx_engine(model, threads), "forced")
    if engine == "torch" or torch_only or not onnxruntime_available():
        how = "forced" if engine == "torch" else "only"
        return EngineChoice("torch", ready_for_upscale(model, device, dtype, compile=compile), how)
    if cache is None:
        folder = cache_dir()
        cache = folder / CACHE_FILE if folder is not None else None
    return _auto(model, device, threads, cache)


def world_size() -> int:
    """Processes torchrun started (WORLD_SIZE), 1 outside torchrun."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", 1)), 1)
    except ValueError:
        return 1


def _auto(model: SRModel, device: torch.device, threads: int, cache: Path | None) -> EngineChoice:
    key, identity = cache_key(model, threads, torch.float32)
    entry = read_cache(cache).get(key) if cache is not None else None
    if valid_entry(entry):
        assert isinstance(entry, dict)
        chosen = entry["engine"]
        net = (
            onnx_engine(model, threads)
            if chosen == "onnxruntime"
            else ready_for_upscale(model, device, torch.float32)
        )
        times = entry.get("times_ms", {})
        return EngineChoice(chosen, net, "cached", times, f"{threads} thread(s), {cache}")
    if world_size() > 1:
        net = ready_for_upscale(model, device, torch.float32)
        note = f"{world_size()} processes; run once without torchrun to measure and cache"
        return EngineChoice("torch", net, "torchrun", note=note)
    candidates: dict[str, Any] = {}
    times: dict[str, float] = {}
    note = ""
    try:
        candidates["onnxruntime"] = onnx_engine(model, threads)  # from the untouched model
    except SlimsrError as exc:  # a model that does not export: PyTorch only
        note = f"onnxruntime skipped: {exc}"
    candidates["torch"] = ready_for_upscale(model, device, torch.float32)
    if "onnxruntime" in candidates:
        try:
            note = _check_onnx(candidates["onnxruntime"], _raw(candidates["torch"]))
            if not note:
                times["onnxruntime"] = measure_ms(candidates["onnxruntime"], measure_input())
        except SlimsrError as exc:  # onnxruntime failed to run: run errors are OnnxError
            note = f"onnxruntime skipped: {exc}"
        if note:
            del candidates["onnxruntime"]
    times["torch"] = measure_ms(_raw(candidates["torch"]), measure_input())
    chosen = min(times, key=times.__getitem__)
    entry = {"engine": chosen, "times_ms": times, "identity": identity, "note": note}
    if cache is None:
        where = "no cache folder (no home directory): measured each time"
    elif write_cache(cache, key, entry):
        where = f"cached in {cache}"
    else:
        where = f"{cache} not writable"
    return EngineChoice(
        chosen,
        candidates[chosen],
        "measured",
        times,
        "; ".join(filter(None, [note, f"{threads} thread(s), {where}"])),
    )


def _check_onnx(ort: Any, reference: Callable[[torch.Tensor], torch.Tensor]) -> str:
    """Empty when onnxruntime's output matches PyTorch's to the fp32 export tolerance on the
    timing input and on an odd-sized one (the graph's pad / crop path), else why not."""
    from slimsr.export.verify import FP32_TOLERANCE

    for x in (measure_input(), measure_input(*CHECK_SIZE)):
        with torch.inference_mode():
            diff = float((ort(x) - reference(x)).abs().max())
        if not diff <= FP32_TOLERANCE:  # NaN included
            size = "x".join(map(str, x.shape[-2:]))
            return f"onnxruntime skipped: differs from PyTorch by {diff:.1e} on a {size} input"
    return ""


def int8_engine(
    weights: Path | None, name: str, scale: int, threads: int | None = None
) -> EngineChoice:
    """The shipped INT8 TFLite file for the float `weights`, when its recorded loss is known
    and within `INT8_MAX_LOSS_DB`; anything else is a one-line error saying why."""
    from slimsr.export.runners import TFLiteUpscaler
    from slimsr.weights import INT8_FILES, INT8_MAX_LOSS_DB, int8_file

    found = int8_file(weights) if weights is not None else None
    shipped = ", ".join(Path(p).stem for p in INT8_FILES)
    if found is None:
        raise EngineError(
            f"--int8: {name} x{scale} has no INT8 file with a recorded quality loss (shipped for: "
            f"{shipped}); run the float model, or give an INT8 .tflite with --weights"
        )
    if found.loss_db > INT8_MAX_LOSS_DB:
        raise EngineError(
            f"--int8: {found.path.name} loses {found.loss_db:.3f} dB on Set5, more than "
            f"{INT8_MAX_LOSS_DB} dB; run the float model"
        )
    runner = TFLiteUpscaler(
        found.path, scale, arch=name, threads=threads or torch.get_num_threads(), io="uint8"
    )
    note = f"{found.path.name}, {-found.loss_db:+.2f} dB PSNR vs float on Set5 (recorded)"
    return EngineChoice("tflite", runner, "int8", note=note)
