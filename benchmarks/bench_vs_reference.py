"""slimsr against the official implementations: same weights, same input, side by side.

    python benchmarks/bench_vs_reference.py --reference-dir DIR [--size 256] [--threads 2,1]
        [--repeats 10] [--models fmen_s,e_rfdn,bsrn_s,bsrn] [--json OUT]

DIR holds checkouts of the official repositories NJU-Jet/FMEN, xiaom233/BSRN and njulj/RFDN
(any folder names, up to two levels down; they are recognised by `test_fmen.py`,
`basicsr/archs/BSRN_arch.py` and `RFDN.py` + `block.py`). Their modules are imported from there
at run time, with small stand-ins for the imports they need but do not use (BasicSR's registry,
torchsummaryX); none of their code is part of slimsr.

For each x4 model: the official network is given slimsr's weights (the official checkpoints
from ../shared/weights/official when present, else slimsr's random initialisation; the keys are
the same). Agreement: both run on a random LR input at the official value range (as the NTIRE
harness feeds them) and on a natural image (slimsr's example picture, bicubic-enlarged to the
size), and slimsr's outputs must agree with the official ones within 1/255 of the output range;
each is also compared with a float64 run, which shows whose float32 rounding is larger (on
noise inputs these networks amplify rounding a lot: outputs far outside [0,1]).

Roofline: per thread count, the peaks of this machine measured in the same run (the best large
fp32 GEMM, the best large copy; `bench_roofline.gemm_peak` / `copy_peak`); per model its FLOPs
(2 x MACs, `slimsr.profile.complexity`), the bytes an op-by-op execution moves
(`bench_roofline.traffic_bytes`), the compute floor (FLOPs at the GEMM peak: no engine built
on these kernels goes below it) and each engine's achieved GFLOP/s.

Latency on CPU (threads fixed, warm-up excluded, runs interleaved so that load drift hits all
alike, median) of: the official module as published, the same module switched to channels_last,
slimsr's plain network in its family's default layout (`fuse=False`), and slimsr's default fast
path (`slimsr.inference_form.prepare_for_inference`: the fused form). Peak resident-memory increase
of one forward, each measured in a fresh process. Ratios are slimsr / official. Prints a table
and writes JSON; no asserts on timings.
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
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from bench_roofline import copy_peak, gemm_peak, traffic_bytes  # peaks and op-by-op bytes
from rich.console import Console
from rich.table import Table
from torch import nn

import slimsr
from slimsr.fileio import atomic_write_text
from slimsr.imaging import imresize, read_image
from slimsr.inference_form import inference_config, prepare_for_inference, run_inference
from slimsr.profile import (
    complexity,
    cpu_threads,
    forward_peak_rss,
    memory_from_rss,
    rss_child_env,
)

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


def image_input(size: int, input_range: float) -> torch.Tensor:
    """A natural LR image of size x size: slimsr's example picture, bicubic-enlarged, cropped."""
    img = read_image(Path(str(files("slimsr.assets") / "example.png"))).rgb
    factor = max(size / img.shape[-2], size / img.shape[-1], 1.0)
    if factor > 1:
        img = imresize(img, factor).clamp(0, 1)
    return img[None, :, :size, :size].contiguous() * input_range


def fast_path(net: nn.Module, info: Any, fuse: bool | None) -> nn.Module:
    return prepare_for_inference(
        net, "cpu", torch.float32, None, False, fuse=fuse, family=info.family, name=info.name
    )


def memory_child(args: argparse.Namespace) -> None:
    """In a fresh process: peak RSS increase of one forward of the official or a slimsr net."""
    name, which = args.memory_child
    torch.set_num_threads(args.threads)
    ref = load_reference(args.reference_dir)
    torch.manual_seed(0)
    ours = slimsr.create_model(name, SCALE)
    x = lr_input(args.size, ours.info.input_range)
    if which == "official":
        net = build_official(ref, name).eval().requires_grad_(False)
    else:
        net = fast_path(ours.net, ours.info, None if which == "slimsr" else False)
        x = x.contiguous(memory_format=inference_config(net).memory_format)
    del ours
    print(json.dumps(forward_peak_rss(net, x)))


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def compare(args: argparse.Namespace, ref: Reference, name: str) -> list[dict[str, Any]]:
    """Agreement and memory once, then one row of interleaved timings per thread count."""
    ours, official, source = make_pair(ref, name, args.weights_dir)
    info, r = ours.info, ours.info.input_range
    x = lr_input(args.size, r)
    plain = fast_path(copy.deepcopy(ours.net), info, False)
    fast = fast_path(copy.deepcopy(ours.net), info, None)
    exact = copy.deepcopy(ours.net).double().eval()
    official_cl = copy.deepcopy(official).to(memory_format=torch.channels_last)
    agreement: dict[str, dict[str, float]] = {}
    with cpu_threads(args.threads), torch.inference_mode():
        for kind, inp in (("random", x), ("image", image_input(args.size, r))):
            y_ref, y_ours = official(inp), run_inference(fast, inp)
            y64 = exact(inp.double())
            agreement[kind] = {
                "slimsr_vs_official": max_error(y_ours, y_ref),
                "official_vs_float64": max_error(y_ref, y64),
                "slimsr_vs_float64": max_error(y_ours, y64),
                "plain_vs_float64": max_error(run_inference(plain, inp), y64),
            }
    del exact
    diff = max(a["slimsr_vs_official"] for a in agreement.values())
    runs = {
        "official": (official, x),
        "official_cl": (official_cl, x.contiguous(memory_format=torch.channels_last)),
        "slimsr_plain": (plain, x.contiguous(memory_format=inference_config(plain).memory_format)),
        "slimsr": (fast, x.contiguous(memory_format=inference_config(fast).memory_format)),
    }
    flops = 2 * complexity(ours.net, (args.size, args.size)).flops["macs"]
    common: dict[str, Any] = {
        "model": name,
        "scale": SCALE,
        "input": [args.size, args.size],
        "gflop": flops / 1e9,
        "gbytes_op_by_op": traffic_bytes(ours.net, x) / 1e9,
        "weights": source,
        "official_source": ref.sources[name],
        "max_abs_diff": diff,
        "agreement": agreement,
        "tolerance": r / 255.0,
        "outputs_agree": diff <= r / 255.0,
        "slimsr_path": inference_config(fast).describe(),
        "slimsr_plain_path": inference_config(plain).describe(),
    }
    if not args.no_memory:
        whos = ("official", "slimsr_plain", "slimsr")
        mem = {w: memory_from_rss(memory_in_child(args, name, w)) for w in whos}
        common["memory"] = {w: m.to_dict() for w, m in mem.items()}
        base = max(mem["official"].peak_increase_bytes, 1)
        common["memory_ratio"] = mem["slimsr"].peak_increase_bytes / base
        common["memory_ratio_plain"] = mem["slimsr_plain"].peak_increase_bytes / base
    rows = []
    for threads in args.thread_counts:
        times = interleaved_times(runs, threads, args.warmup, args.repeats)
        med = {k: statistics.median(v) for k, v in times.items()}
        peaks = args.peaks[threads]
        rows.append(
            {
                **common,
                "threads": threads,
                "peaks": peaks,
                "gflops": {k: round(flops / t / 1e6, 1) for k, t in med.items()},
                # the roofline's compute floor: the network's FLOPs at this machine's GEMM rate
                "compute_floor_ms": flops / peaks["gemm_gflops"] / 1e6,
                "times_ms": times,
                "median_ms": med,
                "iqr_ms": {k: _iqr(v) for k, v in times.items()},
                "latency_ratio": med["slimsr"] / med["official"],
                "latency_ratio_plain": med["slimsr_plain"] / med["official"],
                "latency_ratio_vs_official_channels_last": med["slimsr"] / med["official_cl"],
                "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            }
        )
    return rows


def _iqr(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[2] - q[0]


def table(rows: list[dict[str, Any]], threads: int) -> Table:
    peaks = rows[0]["peaks"] if rows else {}
    t = Table(
        title=f"slimsr vs official, x{SCALE}, CPU {threads} threads, fp32 (median ms); peaks "
        f"GEMM {peaks.get('gemm_gflops', 0):.0f} GFLOP/s, copy {peaks.get('copy_gbs', 0):.1f} "
        "GB/s (measured in this run)"
    )
    cols = (
        "model",
        "GFLOP",
        "floor ms",
        "max|diff|",
        "agree",
        "official",
        "official CL",
        "slimsr plain",
        "slimsr",
        "ratio plain",
        "ratio",
        "ratio vs CL",
        "GFLOP/s official",
        "GFLOP/s slimsr (% peak)",
        "mem official",
        "mem plain",
        "mem slimsr",
        "mem ratio",
    )
    for col in cols:
        t.add_column(col, justify="left" if col == "model" else "right")
    for row in rows:
        med, mem = row["median_ms"], row.get("memory")
        mb = {w: f"{m['peak_increase_bytes'] / 2**20:.1f} MB" for w, m in (mem or {}).items()}
        rate, peak = row["gflops"], row["peaks"]["gemm_gflops"]
        t.add_row(
            row["model"],
            f"{row['gflop']:.1f}",
            f"{row['compute_floor_ms']:.0f}",
            f"{row['max_abs_diff']:.2e}",
            "yes" if row["outputs_agree"] else "NO",
            f"{med['official']:.1f}",
            f"{med['official_cl']:.1f}",
            f"{med['slimsr_plain']:.1f}",
            f"{med['slimsr']:.1f}",
            f"{row['latency_ratio_plain']:.2f}x",
            f"{row['latency_ratio']:.2f}x",
            f"{row['latency_ratio_vs_official_channels_last']:.2f}x",
            f"{rate['official']:.0f}",
            f"{rate['slimsr']:.0f} ({100 * rate['slimsr'] / peak:.0f}%)",
            mb.get("official", "-"),
            mb.get("slimsr_plain", "-"),
            mb.get("slimsr", "-"),
            f"{row['memory_ratio']:.2f}x" if mem else "-",
        )
    return t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-dir", type=Path, required=True)
    parser.add_argument("--models", default=",".join(WEIGHTS))
    parser.add_argument("--size", type=int, default=256, help="LR height and width")
    parser.add_argument(
        "--threads", default="2", help="CPU thread count(s), e.g. 2 or 2,1 (one table each)"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--weights-dir", type=Path, default=shared_weights_dir())
    parser.add_argument("--no-memory", action="store_true", help="skip the memory children")
    parser.add_argument("--json", type=Path, default=Path("bench_vs_reference.json"))
    parser.add_argument(
        "--memory-child", nargs=2, metavar=("MODEL", "WHICH"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    args.thread_counts = [int(t) for t in str(args.threads).split(",") if t.strip()]
    args.threads = args.thread_counts[0]  # agreement checks and memory children
    if args.memory_child:
        memory_child(args)
        return
    ref = load_reference(args.reference_dir)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in WEIGHTS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {', '.join(WEIGHTS)}")
    console = Console(highlight=False, width=260)
    args.peaks = {}
    for threads in args.thread_counts:  # the machine's roofline, measured in this run
        with cpu_threads(threads):
            args.peaks[threads] = {
                "gemm_gflops": round(gemm_peak(), 1),
                "copy_gbs": round(copy_peak(), 1),
            }
    rows = []
    for name in names:
        if name not in ref.builders:
            console.print(f"{name}: its official code is not under {args.reference_dir}, skipped")
            continue
        with console.status(f"{name} ..."):
            rows += compare(args, ref, name)
    for threads in args.thread_counts:
        console.print(table([r for r in rows if r["threads"] == threads], threads))
    report = {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": args.thread_counts,
        "peaks": args.peaks,
        "rows": rows,
    }
    atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
