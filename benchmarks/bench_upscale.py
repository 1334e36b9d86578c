"""`slimsr upscale` throughput and peak memory: whole image vs tiled, as the image grows.

    python benchmarks/bench_upscale.py [--weights W] [--sizes 512,2048] [--tile 256]
        [--threads 2] [--repeats 3] [--json OUT]

Each (size, mode) case runs in a fresh Python process, so its peak resident set size is its
own: the process loads the model, upscales a synthetic photo-like RGB image of `size` x `size`
once as a warm-up, records its resident memory, then upscales `repeats` more times through
`slimsr.upscale.upscale_rgb` (the code path of the CLI) and reports output megapixels per
second and the peak RSS above the pre-run level. The claim under test: with tiling, peak RSS
stays roughly flat as the image grows, while whole-image inference grows with the pixel count.
Prints a table and writes JSON; no asserts on timings.

    python benchmarks/bench_upscale.py --command 512x512,1024x540,6000x4000 [--threads 1]
        [--max-memory 2048] [--json OUT]

`--command` measures the whole `slimsr upscale` command instead (read, border, tiles, outscale,
quantise, PNG write) on synthetic PNG inputs of W x H with the bundled x4: each size runs
`python -m slimsr upscale` in a fresh process, and its peak resident set size (ru_maxrss, all
of it, interpreter and torch included) and wall time are reported. The claim under test
(issue 16): peak RSS nearly flat in the image size (512 px input vs a 4096x2160 output, ratio
<= 1.5x) and a 6000x4000 input completes within the `--max-memory` budget.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def synthetic_image(size: int):
    """Smooth gradients plus texture, so the input is not trivially compressible."""
    import torch

    g = torch.Generator().manual_seed(size)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([xx, yy, (xx + yy) / 2])
    noise = torch.rand(3, size // 8 + 1, size // 8 + 1, generator=g)
    noise = torch.nn.functional.interpolate(noise[None], size=(size, size), mode="bilinear")[0]
    return (0.6 * base + 0.4 * noise).clamp(0, 1)


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    import torch

    import slimsr
    from slimsr.inference_form import prepare_for_inference
    from slimsr.upscale import UpscaleOptions, upscale_rgb
    from slimsr.weights import default_model

    torch.set_num_threads(args.threads)
    model = slimsr.load(args.weights) if args.weights else default_model()
    model = prepare_for_inference(model)  # what `slimsr upscale` runs
    x = synthetic_image(args.size)
    opts = UpscaleOptions(tile=args.tile, overlap=args.overlap)
    before = peak_rss_mb()
    upscale_rgb(model, x, opts)  # warm-up; its peak counts (the first run allocates)
    times = []
    out_hw = (0, 0)
    for _ in range(args.repeats):
        start = time.perf_counter()
        y = upscale_rgb(model, x, opts)
        times.append(time.perf_counter() - start)
        out_hw = tuple(y.shape[-2:])
        del y  # else the next run's peak holds two outputs
    out_mp = out_hw[0] * out_hw[1] / 1e6
    result = {
        "model": model.info.name,
        "scale": model.scale,
        "size": args.size,
        "tile": args.tile,
        "threads": args.threads,
        "output_mp": round(out_mp, 3),
        "median_s": round(statistics.median(times), 4),
        "mp_per_s": round(out_mp / statistics.median(times), 3),
        "rss_before_mb": round(before, 1),
        "peak_rss_increase_mb": round(peak_rss_mb() - before, 1),
    }
    print(json.dumps(result))


def run_case(args: argparse.Namespace, size: int, tile: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--size",
        str(size),
        "--tile",
        str(tile),
        "--overlap",
        str(args.overlap),
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
    ]
    if args.weights:
        cmd += ["--weights", str(args.weights)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"case size={size} tile={tile} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_input(path: Path, w: int, h: int) -> None:
    """A photo-like synthetic RGB PNG (gradients plus smooth noise), made with numpy only."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(w * 7919 + h)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    coarse = rng.random((h // 8 + 2, w // 8 + 2, 3), dtype=np.float32)
    noise = coarse[(yy // 8).astype(int), (xx // 8).astype(int)]
    base = np.stack([xx / max(w - 1, 1), yy / max(h - 1, 1), (xx + yy) / max(w + h - 2, 1)], -1)
    Image.fromarray((255 * (0.6 * base + 0.4 * noise)).astype(np.uint8)).save(path)


def command_case(args: argparse.Namespace, src: Path, out: Path) -> None:
    """Run `slimsr upscale` once in a child; print its peak RSS (MB) and wall time as JSON."""
    cmd = [sys.executable, "-m", "slimsr", "upscale", str(src), "-o", str(out), "--overwrite"]
    cmd += ["--max-memory", str(args.max_memory), "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "rc": proc.returncode,
                "wall_s": round(wall, 1),
                "peak_rss_mb": round(rss),
                "stderr": proc.stderr[-2000:] if proc.returncode else "",
            }
        )
    )


def run_command_cases(args: argparse.Namespace) -> None:
    import tempfile

    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from slimsr.fileio import atomic_write_text

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.command.split(","):
            w, h = (int(v) for v in spec.lower().split("x"))
            src = Path(tmp) / f"in_{w}x{h}.png"
            write_input(src, w, h)
            cmd = [sys.executable, __file__, "--command-child", str(src), "--out", tmp]
            cmd += ["--threads", str(args.threads), "--max-memory", str(args.max_memory)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            if r["rc"] != 0:
                raise SystemExit(f"{spec} failed:\n{r['stderr']}")
            Image.MAX_IMAGE_PIXELS = None  # our own output, read for its size only
            with Image.open(Path(tmp) / f"in_{w}x{h}_x4.png") as im:
                ow, oh = im.size
            row = {
                "input": f"{w}x{h}",
                "output": f"{ow}x{oh}",
                "threads": args.threads,
                "max_memory_mb": args.max_memory,
                "wall_s": r["wall_s"],
                "peak_rss_mb": r["peak_rss_mb"],
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    base = rows[0]["peak_rss_mb"]
    print("| input | output | wall s | peak RSS MB | ratio to first |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        r["rss_ratio"] = round(r["peak_rss_mb"] / base, 2)
        print(
            f"| {r['input']} | {r['output']} | {r['wall_s']} | {r['peak_rss_mb']} | "
            f"{r['rss_ratio']} |"
        )
    atomic_write_text(args.json, json.dumps({"command": "slimsr upscale", "rows": rows}, indent=2))
    print(f"wrote {args.json}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=None, help="default: the bundled model")
    p.add_argument("--sizes", default="512,2048")
    p.add_argument("--tile", type=int, default=256, help="LR tile side for the tiled runs")
    p.add_argument("--overlap", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=Path("bench_upscale.json"))
    p.add_argument("--command", default=None, help="WxH,... : measure the whole CLI command")
    p.add_argument("--max-memory", type=float, default=2048, help="--max-memory of the command")
    p.add_argument("--command-child", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=512, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    if args.command_child is not None:
        command_case(args, args.command_child, args.out)
        return
    if args.command:
        run_command_cases(args)
        return

    from rich.console import Console
    from rich.table import Table

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from slimsr.fileio import atomic_write_text

    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for mode, tile in (("whole", 0), ("tiled", args.tile)):
            r = run_case(args, size, tile)
            r["mode"] = mode
            rows.append(r)
    table = Table(
        title=f"slimsr upscale, {rows[0]['model']} x{rows[0]['scale']}, CPU {args.threads} threads"
    )
    for col in ("input", "mode", "output MP", "median s", "MP/s", "peak RSS +MB"):
        table.add_column(col, justify="right")
    for r in rows:
        mode = r["mode"] + (f" {r['tile']}px" if r["tile"] else "")
        table.add_row(
            f"{r['size']}px",
            mode,
            f"{r['output_mp']:.2f}",
            f"{r['median_s']:.3f}",
            f"{r['mp_per_s']:.2f}",
            f"{r['peak_rss_increase_mb']:.0f}",
        )
    Console().print(table)
    by = {(r["size"], r["mode"]): r for r in rows}
    sizes = sorted({r["size"] for r in rows})
    if len(sizes) > 1:
        small, big = sizes[0], sizes[-1]
        for mode in ("whole", "tiled"):
            a = by[small, mode]["peak_rss_increase_mb"]
            b = by[big, mode]["peak_rss_increase_mb"]
            print(f"{mode}: peak RSS increase {small}px -> {big}px: {a:.0f} -> {b:.0f} MB")
    atomic_write_text(args.json, json.dumps({"threads": args.threads, "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
