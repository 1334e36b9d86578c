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
that cannot be read is ignored (the choice is measured again and the file replaced); one
that cannot be written only costs the next run a measurement.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from slimsr.errors import SlimsrError
from slimsr.fileio import atomic_write_text
from slimsr.model import SRModel
from slimsr.upscale import _raw, ready_for_upscale

ENGINES = ("torch", "onnxruntime", "tflite")
ENGINE_CHOICES = ("auto", "torch", "onnxruntime")
"""What `--engine` accepts; `tflite` comes from a .tflite file or `--int8`."""

MEASURE_SIZE = 64
"""Side of the random LR input each candidate is timed on (small: the choice costs ~1 s)."""
MEASURE_RUNS = 3
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
        }[self.how]
        return f"engine: {self.engine} ({what}{'; ' + self.note if self.note else ''})"


def engine_of(net: Any) -> str:
    """The engine a loaded model runs on: a runner's runtime, else torch."""
    return getattr(net, "engine", "") or "torch"


# -- the cache -------------------------------------------------------------------------------


def cache_dir() -> Path:
    """$SLIMSR_CACHE_DIR, else $XDG_CACHE_HOME/slimsr, else ~/.cache/slimsr."""
    if os.environ.get("SLIMSR_CACHE_DIR"):
        return Path(os.environ["SLIMSR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "slimsr"


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
    """(key, what it is made of): the model, the machine and the thread count."""
    from slimsr import __version__

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


def write_cache(path: Path, key: str, entry: dict[str, Any]) -> bool:
    """Add `entry` under `key` (atomically: temp file + rename). False when it cannot be
    written (a read-only home costs a measurement next time, not the upscale)."""
    entries = read_cache(path)
    entries[key] = entry
    try:
        text = json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1)
        atomic_write_text(path, text + "\n")
    except OSError:
        return False
    return True


# -- the engines -----------------------------------------------------------------------------


def onnxruntime_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def onnx_engine(model: SRModel, threads: int) -> Any:
    """`model` exported to ONNX in memory and opened in onnxruntime with `threads` threads."""
    from slimsr.export.onnx import onnx_model_bytes
    from slimsr.export.runners import OnnxUpscaler

    data = onnx_model_bytes(model)
    what = f"{model.name} x{model.scale} (in-memory ONNX)"
    return OnnxUpscaler.from_bytes(data, what, threads=threads)


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


def measure_input() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, MEASURE_SIZE, MEASURE_SIZE, generator=gen)


def choose_engine(
    model: Any,
    engine: str = "auto",
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    compile: bool = False,
    threads: int | None = None,
    cache: Path | None = None,
) -> EngineChoice:
    """The engine for `model` (an `SRModel` or a runner) and the model ready to run on it.

    `engine`: "auto" (cached or measured, module docstring), "torch" or "onnxruntime". A file
    runner runs on its own runtime. `threads` defaults to torch's count; `cache` to
    `cache_dir() / CACHE_FILE`.
    """
    if engine not in ENGINE_CHOICES:
        raise EngineError(f"--engine must be one of {', '.join(ENGINE_CHOICES)}, not {engine!r}")
    device = torch.device(device)
    if not isinstance(model, SRModel):  # a file: its runtime is the engine
        own = engine_of(model)
        if engine not in ("auto", own) and own == "torch":
            raise EngineError(f"--engine {engine} runs an SRModel (slimsr.load), not {model!r}")
        if engine not in ("auto", own):
            raise EngineError(
                f"{getattr(model, '_short_name', model)} runs in {own}; --engine {engine} "
                "runs PyTorch weights (.pth / .safetensors)"
            )
        return EngineChoice(own, ready_for_upscale(model, device, dtype), "file")
    threads = threads or torch.get_num_threads()
    torch_only = device.type != "cpu" or dtype != torch.float32 or compile
    if engine == "onnxruntime":
        if torch_only:
            why = "--compile" if compile else ("CUDA" if device.type != "cpu" else str(dtype))
            raise EngineError(f"--engine onnxruntime runs float32 on the CPU; not with {why}")
        if not onnxruntime_available():
            raise EngineError(
                "--engine onnxruntime needs onnx and onnxruntime: pip install slimsr[onnx]"
            )
        return EngineChoice("onnxruntime", onnx_engine(model, threads), "forced")
    if engine == "torch" or torch_only or not onnxruntime_available():
        how = "forced" if engine == "torch" else "only"
        return EngineChoice("torch", ready_for_upscale(model, device, dtype, compile=compile), how)
    return _auto(model, device, threads, cache or cache_dir() / CACHE_FILE)


def _auto(model: SRModel, device: torch.device, threads: int, cache: Path) -> EngineChoice:
    key, identity = cache_key(model, threads, torch.float32)
    entry = read_cache(cache).get(key)
    if isinstance(entry, dict) and entry.get("engine") in ("torch", "onnxruntime"):
        times = entry.get("times_ms") if isinstance(entry.get("times_ms"), dict) else {}
        chosen = entry["engine"]
        net = (
            onnx_engine(model, threads)
            if chosen == "onnxruntime"
            else ready_for_upscale(model, device, torch.float32)
        )
        return EngineChoice(chosen, net, "cached", times, f"{threads} thread(s), {cache}")
    x = measure_input()
    candidates: dict[str, Any] = {}
    note = ""
    try:
        candidates["onnxruntime"] = onnx_engine(model, threads)  # from the untouched model
    except SlimsrError as exc:  # a model that does not export: PyTorch only
        note = f"onnxruntime skipped: {exc}"
    candidates["torch"] = ready_for_upscale(model, device, torch.float32)
    times = {name: measure_ms(_raw(net), x) for name, net in candidates.items()}
    if "onnxruntime" in candidates:
        from slimsr.export.verify import FP32_TOLERANCE

        with torch.inference_mode():
            diff = (candidates["onnxruntime"](x) - _raw(candidates["torch"])(x)).abs().max()
        if float(diff) > FP32_TOLERANCE:
            del times["onnxruntime"]
            note = f"onnxruntime skipped: differs from PyTorch by {float(diff):.1e}"
    chosen = min(times, key=times.__getitem__)
    saved = write_cache(
        cache, key, {"engine": chosen, "times_ms": times, "identity": identity, "note": note}
    )
    where = f"{threads} thread(s), " + (f"cached in {cache}" if saved else f"{cache} not writable")
    return EngineChoice(
        chosen, candidates[chosen], "measured", times, "; ".join(filter(None, [note, where]))
    )


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
