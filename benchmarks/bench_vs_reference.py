"""slimsr against the official implementations: same weights, same input, side by side.

    python benchmarks/bench_vs_reference.py --reference-dir DIR [--size 256] [--threads 2]
        [--repeats 10] [--models fmen_s,e_rfdn,bsrn_s,bsrn] [--json OUT]

DIR holds checkouts of the official repositories NJU-Jet/FMEN, xiaom233/BSRN and njulj/RFDN
(any folder names, up to two levels down; they are recognised by `test_fmen.py`,
`basicsr/archs/BSRN_arch.py` and `RFDN.py` + `block.py`). Their modules are imported from there
at run time, with small stand-ins for the imports they need but do not use (BasicSR's registry,
torchsummaryX); none of their code is part of slimsr.

For each x4 model: the official network is given slimsr's weights (the official checkpoints
from ../shared/weights/official when present, else slimsr's random initialisation; the keys are
the same), both run on one random LR input at the official value range, and the outputs must
agree within 1/255 of the output range (memory-layout changes reorder float sums). Then CPU
latency (threads fixed, warm-up excluded, runs interleaved so drift hits all alike, median) of
the official module as published, of the same module switched to channels_last, and of slimsr's
fast path (`slimsr.inference`); and peak resident-memory increase of one forward, each measured
in a fresh process. Ratios are slimsr / official. Prints a table and writes JSON; no asserts on
timings.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

import slimsr
from slimsr.fileio import atomic_write_text
from slimsr.inference import inference_config, prepare_for_inference, run_inference
from slimsr.profile import cpu_threads, forward_peak_rss, memory_from_rss, rss_child_env

SCALE = 4
WEIGHTS = {
    "fmen_s": "fmen_s_x4_deploy.pt",
    "e_rfdn": "e_rfdn_x4.pth",
    "bsrn_s": "bsrn_s_x4.pth",
    "bsrn": "bsrn_x4.pth",
}


# -- importing the official code ---------------------------------------------------------------


def _find(root: Path, relative: str) -> Path | None:
    for pattern in (relative, f"*/{relative}", f"*/*/{relative}"):
        hits = sorted(root.glob(pattern))
        if hits:
            return hits[0]
    return None


def _load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _stand_in(name: str, **attrs: Any) -> types.ModuleType:
    """An empty module under `name`, for an import the official file makes but never uses."""
    module = types.ModuleType(name)
    module.__path__ = []  # importable as a package too
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


class _NoRegistry:
    """BasicSR's ARCH_REGISTRY.register() as a no-op decorator."""

    def register(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        return lambda obj: obj


def _ensure_distutils() -> None:
    """The BSRN blocks import distutils' LooseVersion (gone in Python 3.12)."""
    try:
        import distutils.version  # noqa: F401
    except ImportError:

        class LooseVersion(str):
            def __ge__(self, other: object) -> bool:
                return True

        _stand_in("distutils")
        _stand_in("distutils.version", LooseVersion=LooseVersion)


@dataclass
class Reference:
    """The official module constructors found under the reference directory."""

    builders: dict[str, Callable[[], nn.Module]]
    sources: dict[str, str]


def load_reference(root: Path) -> Reference:
    builders: dict[str, Callable[[], nn.Module]] = {}
    sources: dict[str, str] = {}
    fmen = _find(root, "test_fmen.py")
    if fmen is not None:
        _stand_in("torchsummaryX", summary=lambda *a, **k: None)
        mod = _load_file("official_fmen_test", fmen)
        args = types.SimpleNamespace(
            down_blocks=4,
            up_blocks=[2, 1, 1, 1, 1],
            n_feats=50,
            mid_feats=16,
            scale=[SCALE],
            rgb_range=255,
            n_colors=3,
        )
        builders["fmen_s"] = lambda: mod.TEST_FMEN(args)
        sources["fmen_s"] = str(fmen)
    rfdn = _find(root, "RFDN.py")
    if rfdn is not None and (rfdn.parent / "block.py").exists():
        _load_file("block", rfdn.parent / "block.py")  # RFDN.py does `import block as B`
        mod_r = _load_file("official_rfdn", rfdn)
        builders["e_rfdn"] = lambda: mod_r.RFDN(upscale=SCALE)
        sources["e_rfdn"] = str(rfdn)
    bsrn = _find(root, "basicsr/archs/BSRN_arch.py")
    if bsrn is not None:
        archs = bsrn.parent
        _ensure_distutils()
        _stand_in("basicsr")
        _stand_in("basicsr.archs")
        _stand_in("basicsr.utils")
        _stand_in("basicsr.utils.registry", ARCH_REGISTRY=_NoRegistry())
        for part in ("Blocks", "Upsamplers"):
            setattr(
                sys.modules["basicsr.archs"],
                part,
                _load_file(f"basicsr.archs.{part}", archs / f"{part}.py"),
            )
        mod_b = _load_file("basicsr.archs.BSRN_arch", bsrn)
        mod_s = _load_file("basicsr.archs.rfdnfinalB5_arch", archs / "rfdnfinalB5_arch.py")
        builders["bsrn"] = lambda: mod_b.BSRN(upscale=SCALE)
        builders["bsrn_s"] = lambda: mod_s.RFDNFINALB5(num_feat=48, num_block=5, upscale=SCALE)
        sources["bsrn"] = str(bsrn)
        sources["bsrn_s"] = str(archs / "rfdnfinalB5_arch.py")
    if not builders:
        raise SystemExit(
            f"{root}: no official FMEN / BSRN / RFDN checkout found (looked for test_fmen.py, "
            "basicsr/archs/BSRN_arch.py, RFDN.py up to two folders down)"
        )
    return Reference(builders, sources)


def build_official(ref: Reference, name: str) -> nn.Module:
    with contextlib.redirect_stdout(io.StringIO()):  # the BSRN classes print their conv type
        return ref.builders[name]()


# -- one comparison ----------------------------------------------------------------------------


def shared_weights_dir() -> Path:
    shared = os.environ.get("SLIMSR_SHARED")
    root = Path(shared) if shared else Path(__file__).resolve().parents[2] / "shared"
    return root / "weights" / "official"


def make_pair(
    ref: Reference, name: str, weights_dir: Path | None
) -> tuple[slimsr.SRModel, nn.Module, str]:
    """(slimsr model, official module with the same weights, where the weights came from)."""
    path = weights_dir / WEIGHTS[name] if weights_dir is not None else None
    if path is not None and path.exists():
        ours, source = slimsr.create_model(name, SCALE, weights=path), path.name
    else:
        torch.manual_seed(0)
        ours, source = slimsr.create_model(name, SCALE), "random (same for both)"
    official = build_official(ref, name)
    official.load_state_dict(ours.net.state_dict(), strict=True)
    return ours, official.eval().requires_grad_(False), source


def lr_input(size: int, input_range: float) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * input_range


def interleaved_times(
    runs: dict[str, tuple[nn.Module, torch.Tensor]], threads: int, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Milliseconds per run for each entry, run in turn so slow drift affects all alike."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    with cpu_threads(threads), torch.inference_mode():
        for i in range(warmup + repeats):
            for key, (net, x) in runs.items():
                start = time.perf_counter()
                net(x)
                if i >= warmup:
                    times[key].append((time.perf_counter() - start) * 1e3)
    return times


def memory_in_child(args: argparse.Namespace, name: str, which: str) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--reference-dir",
        str(args.reference_dir),
        "--size",
        str(args.size),
        "--threads",
        str(args.threads),
        "--memory-child",
        name,
        which,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=rss_child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"memory child for {name}/{which} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_child(args: argparse.Namespace) -> None:
    """In a fresh process: peak RSS increase of one forward of the official or slimsr net."""
    name, which = args.memory_child
    torch.set_num_threads(args.threads)
    ref = load_reference(args.reference_dir)
    torch.manual_seed(0)
    ours = slimsr.create_model(name, SCALE)
    x = lr_input(args.size, ours.info.input_range)
    if which == "official":
        net = build_official(ref, name).eval().requires_grad_(False)
    else:
        net = prepare_for_inference(
            ours.net, "cpu", torch.float32, None, False, family=ours.info.family, name=ours.name
        )
        x = x.contiguous(memory_format=inference_config(net).memory_format)
    del ours
    print(json.dumps(forward_peak_rss(net, x)))


def compare(args: argparse.Namespace, ref: Reference, name: str) -> dict[str, Any]:
    ours, official, source = make_pair(ref, name, args.weights_dir)
    r = ours.info.input_range
    x = lr_input(args.size, r)
    fast = prepare_for_inference(
        copy.deepcopy(ours.net),
        "cpu",
        torch.float32,
        None,
        False,
        family=ours.info.family,
        name=ours.name,
    )
    official_cl = copy.deepcopy(official).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with cpu_threads(args.threads), torch.inference_mode():
        y_ref = official(x)
        y_ours = run_inference(fast, x)
    diff = (y_ours.float() - y_ref.float()).abs().max().item()
    x_fast = x.contiguous(memory_format=inference_config(fast).memory_format)
    times = interleaved_times(
        {"official": (official, x), "official_cl": (official_cl, x_cl), "slimsr": (fast, x_fast)},
        args.threads,
        args.warmup,
        args.repeats,
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    row: dict[str, Any] = {
        "model": name,
        "scale": SCALE,
        "input": [args.size, args.size],
        "weights": source,
        "official_source": ref.sources[name],
        "max_abs_diff": diff,
        "tolerance": r / 255.0,
        "outputs_agree": diff <= r / 255.0,
        "slimsr_channels_last": inference_config(fast).channels_last,
        "times_ms": times,
        "median_ms": med,
        "latency_ratio": med["slimsr"] / med["official"],
        "latency_ratio_vs_official_channels_last": med["slimsr"] / med["official_cl"],
    }
    if not args.no_memory:
        mem = {w: memory_from_rss(memory_in_child(args, name, w)) for w in ("official", "slimsr")}
        row["memory"] = {w: m.to_dict() for w, m in mem.items()}
        row["memory_ratio"] = mem["slimsr"].peak_increase_bytes / max(
            mem["official"].peak_increase_bytes, 1
        )
    return row


def table(rows: list[dict[str, Any]], threads: int) -> Table:
    t = Table(title=f"slimsr vs official, x{SCALE}, CPU {threads} threads, fp32 (median ms)")
    cols = (
        "model",
        "max|diff|",
        "agree",
        "official",
        "official CL",
        "slimsr",
        "ratio",
        "ratio vs CL",
        "mem official",
        "mem slimsr",
        "mem ratio",
    )
    for col in cols:
        t.add_column(col, justify="left" if col == "model" else "right")
    for row in rows:
        med, mem = row["median_ms"], row.get("memory")
        mb = {w: f"{m['peak_increase_bytes'] / 2**20:.1f} MB" for w, m in (mem or {}).items()}
        t.add_row(
            row["model"],
            f"{row['max_abs_diff']:.2e}",
            "yes" if row["outputs_agree"] else "NO",
            f"{med['official']:.1f}",
            f"{med['official_cl']:.1f}",
            f"{med['slimsr']:.1f}",
            f"{row['latency_ratio']:.2f}x",
            f"{row['latency_ratio_vs_official_channels_last']:.2f}x",
            mb.get("official", "-"),
            mb.get("slimsr", "-"),
            f"{row['memory_ratio']:.2f}x" if mem else "-",
        )
    return t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-dir", type=Path, required=True)
    parser.add_argument("--models", default=",".join(WEIGHTS))
    parser.add_argument("--size", type=int, default=256, help="LR height and width")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--weights-dir", type=Path, default=shared_weights_dir())
    parser.add_argument("--no-memory", action="store_true", help="skip the memory children")
    parser.add_argument("--json", type=Path, default=Path("bench_vs_reference.json"))
    parser.add_argument(
        "--memory-child", nargs=2, metavar=("MODEL", "WHICH"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args)
        return
    ref = load_reference(args.reference_dir)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in WEIGHTS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {', '.join(WEIGHTS)}")
    console = Console(highlight=False)
    rows = []
    for name in names:
        if name not in ref.builders:
            console.print(f"{name}: its official code is not under {args.reference_dir}, skipped")
            continue
        with console.status(f"{name} ..."):
            rows.append(compare(args, ref, name))
    console.print(table(rows, args.threads))
    report = {"torch": torch.__version__, "threads": args.threads, "rows": rows}
    atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
