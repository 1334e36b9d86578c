"""One GPU check for a session that is lent a GPU: one markdown table, one JSON file.

Parts (each a row group; a part that breaks gives FAILED rows with a one-line reason):

- train-swinirmini, train-edsrmini: training throughput of `slimsr train`'s own step (the
  trainer, its data pipeline, loss and optimiser, through `bench_train.bench_recipe`) at x2,
  batch 16 of 64 px LR patches, bf16 autocast, once eager and once with the forward wrapped in
  `torch.compile`: the recipe's `train.fast_path.compile=on` for the inductor backend (what
  users run), else a `Trainer` subclass that compiles its step forward with the backend asked
  for (the CPU test uses a cheap one); the loop, loss, backward and optimiser step are the
  trainer's. it/s is the trainer's own (train.jsonl windows, the first
  window left out as warm-up); the first step's time, which holds the compilation, is reported
  on its own.
- profile: `slimsr profile` on CUDA (CUDA-event timing, `torch.cuda.max_memory_allocated`) of
  FMEN-S x4 and E-RFDN x4 at a 256x256 LR input, fp32, and the FMEN-S / E-RFDN ratios next to
  the FMEN paper's Table 4 (Du et al. 2022; 1080Ti, PyTorch 1.4): runtime 28.07 vs 41.97 ms
  (-33.1%), memory 204.6 vs 788.13 MB (-74.0%). The paper's runtime is the NTIRE 2022 mean
  over the DIV2K validation images (about 510x340 LR), its memory at a 256x256 input.
- upscale: `slimsr upscale` (the command, in this process) of a synthetic 960x540 PNG with the
  bundled x4 model to 3840x2160 on CUDA: wall time of a first and a second call (the first
  loads the model and initialises cuDNN), peak CUDA memory and the process's peak RSS.
- ddp: a 2-rank DDP run (`torchrun --nproc-per-node 2 -m slimsr train`, NCCL) of a tiny recipe
  when two or more GPUs exist; skipped otherwise.

    bash benchmarks/gpu_check.sh                          # what a GPU session runs (time limits)
    python benchmarks/gpu_check.py                        # every part in this process, on CUDA
    python benchmarks/gpu_check.py --device cpu --quick   # tiny sizes on CPU (the test)
    python benchmarks/gpu_check.py --part profile --rows DIR  # one part -> DIR/profile.json
    python benchmarks/gpu_check.py --report DIR           # the table from DIR's parts

The JSON goes to $OUT/gpu_check.json when OUT is set (the device tool returns files under
$OUT), else benchmarks/results/gpu_check.json (or --json). Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

PAPER_TABLE4 = {  # FMEN (Du et al., CVPRW 2022), Table 4, x4, NVIDIA 1080Ti, PyTorch 1.4.0
    "fmen_s": {"runtime_ms": 28.07, "memory_mb": 204.6},
    "e_rfdn": {"runtime_ms": 41.97, "memory_mb": 788.13},
}
PAPER_REF = "FMEN paper Table 4 (1080Ti)"

TRAIN_MODELS = {"swinirmini": "SwinIRmini", "edsrmini": "EDSRmini"}
EXPECTED: dict[str, list[str]] = {
    **{
        f"train-{m}": [f"{label} x2 train, bf16 eager", f"{label} x2 train, bf16 + torch.compile"]
        for m, label in TRAIN_MODELS.items()
    },
    "profile": ["profile FMEN-S x4", "profile E-RFDN x4", "FMEN-S vs E-RFDN"],
    "upscale": ["upscale to 3840x2160"],
    "ddp": ["DDP, 2 ranks"],
}
PARTS = list(EXPECTED)
OK, SKIPPED, FAILED = "ok", "skipped", "FAILED"


@dataclass(frozen=True)
class Settings:
    """Sizes of one check; `--quick` shrinks them so the CPU test takes seconds."""

    device: str
    quick: bool
    batch: int
    patch: int
    window: int  # trainer report window (iterations); the first is warm-up
    windows: int
    workers: int
    compile_backend: str
    profile_input: int
    profile_warmup: int
    profile_repeats: int
    upscale_lr: tuple[int, int]  # (width, height) of the upscale input
    ddp_iterations: int
    ddp_cpu: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        common = {"device": args.device, "quick": args.quick, "ddp_cpu": args.ddp_cpu}
        if args.quick:
            return cls(
                **common,
                batch=2,
                patch=16,
                window=1,
                windows=3,
                workers=0,
                # dynamo's capture without inductor's minutes of C++ builds on a CPU
                compile_backend=args.compile_backend or "eager",
                profile_input=32,
                profile_warmup=1,
                profile_repeats=2,
                upscale_lr=(48, 27),
                ddp_iterations=2,
            )
        return cls(
            **common,
            batch=16,
            patch=64,
            window=25,
            windows=5,
            workers=min(4, os.cpu_count() or 1),
            compile_backend=args.compile_backend or "inductor",
            profile_input=256,
            profile_warmup=5,
            profile_repeats=50,
            upscale_lr=(960, 540),
            ddp_iterations=4,
        )


def row(part: str, item: str, status: str, result: str, ref: str = "", **data: Any) -> dict:
    return {
        "part": part,
        "item": item,
        "status": status,
        "result": result,
        "reference": ref,
        "data": data,
    }


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


def check_device(s: Settings) -> None:
    import torch

    if s.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"CUDA not available (torch {torch.__version__}, built for CUDA {torch.version.cuda})"
        )


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def reset_cuda_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def cuda_peak_mb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None


def run_cli(argv: list[str]) -> str:
    """Run `slimsr ARGV` in this process (the command's own code path); its output is returned
    (and copied to stderr); a non-zero exit raises with the command's last line."""
    from slimsr.cli import main

    buffer = io.StringIO()
    code: Any = 0
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code
    text = buffer.getvalue()
    sys.stderr.write(text)
    if code not in (0, None):
        last = next((x for x in reversed(text.splitlines()) if x.strip()), "")
        raise RuntimeError(f"slimsr {argv[0]} exited with {code}: {last.strip()}")
    return text


# -- training -------------------------------------------------------------------------------------


def timed_trainer(backend: str | None) -> tuple[Callable[[Any], Any], list[float]]:
    """A `run(config)` for `bench_recipe` and the list it fills with each step's seconds.

    With `backend`, the trainer's step forward (the model, before the loss) is `torch.compile`d
    with that backend after the trainer builds it; everything else is the trainer's own step.
    """
    import torch

    from slimsr.train import Trainer

    steps: list[float] = []

    class _Timed(Trainer):
        def _build(self, state: Any = None) -> None:
            super()._build(state)
            if backend is not None:
                self.step_forward = torch.compile(self.forward, backend=backend, dynamic=False)

        def train_step(self, lr_img: Any, hr_img: Any, teacher_img: Any = None) -> dict[str, Any]:
            t0 = time.perf_counter()
            stats = super().train_step(lr_img, hr_img, teacher_img)  # ends on a host read
            steps.append(time.perf_counter() - t0)
            return stats

    return lambda config: _Timed(config).run(), steps


def part_train(model: str, s: Settings, emit: Callable[[dict], None]) -> None:
    import statistics

    from bench_train import MODEL_BASE, bench_recipe, synthetic_images

    part = f"train-{model}"
    items = EXPECTED[part]
    check_device(s)
    scale = 2
    eager_it_s: float | None = None
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        synthetic_images(images, 4 if s.quick else 24, max(2 * s.patch * scale, 64))
        for item, backend in zip(items, (None, s.compile_backend)):
            # inductor: the trainer's own compile option; another backend: the subclass
            by_recipe = backend == "inductor"
            run, steps = timed_trainer(None if by_recipe else backend)
            compile_opt = ["train.fast_path.compile=on"] if by_recipe else []
            tag = "compiled" if backend else "eager"
            try:
                reset_cuda_peak(s.device)
                r = bench_recipe(
                    f"{model}_x{scale}_{tag}",
                    images,
                    Path(tmp) / "runs",
                    s.window * (s.windows - 1),
                    s.window,
                    s.batch,
                    s.workers,
                    recipe=MODEL_BASE,
                    extra=[
                        f"model.name={model}",
                        f"model.scale={scale}",
                        f"data.train.patch_size={s.patch}",
                        "train.precision=bf16",
                        f"device={s.device}",
                        *compile_opt,
                    ],
                    run=run,
                )
            except Exception as exc:
                traceback.print_exc()
                emit(row(part, item, FAILED, one_line(exc)))
                continue
            peak = cuda_peak_mb(s.device)
            steady = statistics.median(steps[s.window :]) if len(steps) > s.window else None
            text = (
                f"{r['it_per_s']:.2f} it/s ({r['samples_per_s']:.0f} samples/s), batch "
                f"{s.batch} x {s.patch} px LR, data wait {100 * r['data_wait_frac']:.0f}%"
            )
            if backend is None:
                eager_it_s = r["it_per_s"]
                text += f"; first step {steps[0]:.2f} s"
            else:
                text += f"; first step (compile, backend {backend}) {steps[0]:.1f} s"
                if eager_it_s:
                    text += f"; {r['it_per_s'] / eager_it_s:.2f}x eager"
            if peak is not None:
                text += f"; peak CUDA {peak:.0f} MB"
            emit(
                row(
                    part,
                    item,
                    OK,
                    text,
                    "trainer step, first window excluded",
                    **r,
                    first_step_s=steps[0],
                    median_step_s=steady,
                    compile_backend=backend,
                    peak_cuda_mb=peak,
                )
            )


# -- profile --------------------------------------------------------------------------------------


def part_profile(s: Settings, emit: Callable[[dict], None]) -> None:
    part = "profile"
    items = EXPECTED[part]
    check_device(s)
    found: dict[str, dict] = {}
    n = s.profile_input
    with tempfile.TemporaryDirectory() as tmp:
        for name, item in zip(("fmen_s", "e_rfdn"), items):
            out = Path(tmp) / f"{name}.json"
            argv = ["profile", "-m", name, "--scale", "4", "--input", f"{n}x{n}"]
            argv += ["--device", s.device, "--json", str(out)]
            argv += ["--warmup", str(s.profile_warmup), "--repeats", str(s.profile_repeats)]
            if s.device == "cpu":
                argv += ["--threads", "1"]
            try:
                run_cli(argv)
                d = json.loads(out.read_text())
                rt, mem = d["runtime"], d["memory"]
                # CUDA: max_memory_allocated incl. weights and input, as NTIRE and the paper;
                # CPU: the forward's resident-memory increase (a process baseline is no model's)
                key = "peak_bytes" if s.device == "cuda" else "peak_increase_bytes"
                found[name] = {"runtime_ms": rt["median_ms"], "memory_mb": mem[key] / 2**20}
            except Exception as exc:
                traceback.print_exc()
                emit(row(part, item, FAILED, one_line(exc)))
                continue
            p = PAPER_TABLE4[name]
            what = "" if s.device == "cuda" else ", increase"
            emit(
                row(
                    part,
                    item,
                    OK,
                    f"{rt['median_ms']:.2f} ms median (IQR {rt['iqr_ms']:.2f}, "
                    f"{len(rt['times_ms'])} runs, {rt['method']}), peak "
                    f"{found[name]['memory_mb']:.1f} MB ({mem['method']}{what}); {n}x{n} LR, "
                    f"{d['settings'].get('dtype')}",
                    f"{PAPER_REF}: {p['runtime_ms']} ms, {p['memory_mb']} MB",
                    **found[name],
                    report=d,
                )
            )
    item = items[2]
    if len(found) < 2:
        missing = ", ".join(x for x in ("fmen_s", "e_rfdn") if x not in found)
        emit(row(part, item, FAILED, f"no ratio: {missing} not measured"))
        return
    ratios = {k: found["fmen_s"][k] / found["e_rfdn"][k] for k in ("runtime_ms", "memory_mb")}
    paper = {
        k: PAPER_TABLE4["fmen_s"][k] / PAPER_TABLE4["e_rfdn"][k]
        for k in ("runtime_ms", "memory_mb")
    }
    emit(
        row(
            part,
            item,
            OK,
            f"runtime {100 * (ratios['runtime_ms'] - 1):+.1f}% (x{ratios['runtime_ms']:.3f}), "
            f"memory {100 * (ratios['memory_mb'] - 1):+.1f}% (x{ratios['memory_mb']:.3f})",
            f"{PAPER_REF}: runtime {100 * (paper['runtime_ms'] - 1):+.1f}%, memory "
            f"{100 * (paper['memory_mb'] - 1):+.1f}% (paper runtime: DIV2K val mean, memory: "
            "256x256)",
            ratios=ratios,
            paper_ratios=paper,
        )
    )


# -- upscale --------------------------------------------------------------------------------------


def photo_like(width: int, height: int, path: Path) -> None:
    """A smooth random colour field with texture: resizes like a photo, compresses like one."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    small = (rng.random((max(height // 16, 2), max(width // 16, 2), 3)) * 255).astype(np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), np.float32)
    noise = rng.normal(0, 6, (height, width, 3))
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path)


def part_upscale(s: Settings, emit: Callable[[dict], None]) -> None:
    import resource

    from PIL import Image

    part = "upscale"
    (item,) = EXPECTED[part]
    check_device(s)
    w, h = s.upscale_lr
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "frame.png"
        photo_like(w, h, src)
        out = Path(tmp) / "out"
        argv = ["upscale", str(src), "-o", str(out), "--device", s.device, "--overwrite"]
        walls, peaks = [], []
        # the default options twice (the first call loads the model and warms cuDNN and the
        # allocator), then whole-image (--tile 0): the default tiles by a host-memory budget
        for extra in ([], [], ["--tile", "0"]):
            reset_cuda_peak(s.device)
            t0 = time.perf_counter()
            run_cli(argv + extra)
            sync(s.device)
            walls.append(time.perf_counter() - t0)
            peaks.append(cuda_peak_mb(s.device))
            dst = out / "frame_x4.png"
            with Image.open(dst) as im:
                size = im.size
            if size != (4 * w, 4 * h):
                raise RuntimeError(f"{dst.name} is {size[0]}x{size[1]}, not {4 * w}x{4 * h}")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = f"{w}x{h} -> {size[0]}x{size[1]} (bundled x4, read + forward + PNG write): "
    text += f"first call {walls[0]:.2f} s, second {walls[1]:.2f} s"
    if peaks[0] is not None:
        text += f" (peak CUDA {max(peaks[:2]):.0f} MB)"
    text += f"; --tile 0 {walls[2]:.2f} s"
    if peaks[2] is not None:
        text += f" (peak CUDA {peaks[2]:.0f} MB)"
    text += f"; process peak RSS {rss_mb:.0f} MB"
    emit(
        row(
            part,
            item,
            OK,
            text,
            "`slimsr upscale`, default options, then --tile 0",
            input=[w, h],
            output=list(size),
            wall_s=walls,
            peak_cuda_mb=peaks,
            peak_rss_mb=rss_mb,
        )
    )


# -- DDP ------------------------------------------------------------------------------------------


def part_ddp(s: Settings, emit: Callable[[dict], None]) -> None:
    import torch
    from bench_train import MODEL_BASE, synthetic_images

    from slimsr.train import dump_config, load_config

    part = "ddp"
    (item,) = EXPECTED[part]
    check_device(s)
    if s.device == "cuda" and torch.cuda.device_count() < 2:
        n = torch.cuda.device_count()
        emit(row(part, item, SKIPPED, f"{n} CUDA device(s): needs 2", "not run"))
        return
    if s.device == "cpu" and not s.ddp_cpu:
        emit(row(part, item, SKIPPED, "CPU run: --ddp-cpu runs 2 gloo ranks", "not run"))
        return
    backend = "nccl" if s.device == "cuda" else "gloo"
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        synthetic_images(images, 4, 64)
        overrides = [
            f"output_dir={Path(tmp) / 'runs'}",
            "name=ddp",
            f"device={s.device}",
            "model.name=edsrmini",
            "model.scale=2",
            f"data.train.sources=[{{hr: {images}}}]",
            "data.train.patch_size=16",
            "data.train.batch_size=4",
            "data.train.num_workers=0",
            "data.val=null",
            f"train.iterations={s.ddp_iterations}",
            "train.scheduler={type: constant}",
            "logging.print_every=1",
            "logging.tensorboard=false",
            "logging.progress=none",
        ]
        cfg = load_config(REPO / "configs" / f"{MODEL_BASE}.yaml", overrides, base_dir=REPO)
        recipe = Path(tmp) / "ddp.yaml"
        recipe.write_text(dump_config(cfg))
        path = [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        if s.device == "cpu":
            env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
        cmd += ["2", "-m", "slimsr", "train", str(recipe)]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp)
        wall = time.perf_counter() - t0
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        if done.returncode != 0:
            last = next((x for x in reversed(done.stderr.splitlines()) if x.strip()), "")
            raise RuntimeError(f"torchrun exited with {done.returncode}: {last.strip()}")
        log = Path(tmp) / "runs" / "ddp" / "train.jsonl"
        events = [json.loads(x) for x in log.read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    end = [e for e in events if e["event"] == "end"]
    if start["world_size"] != 2 or not end or end[0]["iter"] != s.ddp_iterations:
        raise RuntimeError(f"run did not finish on 2 ranks: {start}, {end}")
    emit(
        row(
            part,
            item,
            OK,
            f"{s.ddp_iterations} steps of EDSRmini x2 on 2 ranks ({backend}, {start['device']} "
            f"on rank 0): finished in {wall:.1f} s incl. start-up",
            "torchrun --standalone --nproc-per-node 2 -m slimsr train",
            wall_s=wall,
            backend=backend,
            world_size=start["world_size"],
        )
    )


# -- assembling -----------------------------------------------------------------------------------


def run_part(part: str, s: Settings, emit: Callable[[dict], None]) -> None:
    if part.startswith("train-"):
        part_train(part.removeprefix("train-"), s, emit)
    elif part == "profile":
        part_profile(s, emit)
    elif part == "upscale":
        part_upscale(s, emit)
    elif part == "ddp":
        part_ddp(s, emit)
    else:
        raise ValueError(f"unknown part {part!r}")


def complete(part: str, rows: list[dict], reason: str | None) -> list[dict]:
    """`rows` with a FAILED row for every expected item the part did not report."""
    have = {r["item"] for r in rows}
    missing = [i for i in EXPECTED[part] if i not in have]
    fill = [row(part, i, FAILED, reason or "no result") for i in missing]
    order = {item: k for k, item in enumerate(EXPECTED[part])}
    return sorted(rows + fill, key=lambda r: order.get(r["item"], len(order)))


def environment(s: Settings | None) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": torch.cuda.get_device_name()
        if cuda and (s is None or s.device == "cuda")
        else f"CPU ({platform.processor() or platform.machine()})",
        "cuda_devices": torch.cuda.device_count() if cuda else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "settings": asdict(s) if s is not None else None,
    }


def atomic_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def markdown(meta: dict[str, Any], rows: list[dict]) -> str:
    head = (
        f"slimsr GPU check: {meta.get('device')}, torch {meta.get('torch')}, CUDA "
        f"{meta.get('cuda')}, {meta.get('date')}"
    )
    lines = [head, "", "| part | item | status | result | reference |", "|---|---|---|---|---|"]
    for r in rows:
        cells = (r["part"], r["item"], r["status"], r["result"], r["reference"])
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def default_json() -> Path:
    out = os.environ.get("OUT")
    return (
        Path(out) / "gpu_check.json" if out else REPO / "benchmarks" / "results" / "gpu_check.json"
    )


def finish(meta: dict[str, Any], rows: list[dict], json_path: Path) -> None:
    table = markdown(meta, rows)
    atomic_json(json_path, {"meta": meta, "rows": rows})
    json_path.with_suffix(".md").write_text(table)
    print(table, end="")
    print(f"\nwrote {json_path} and {json_path.with_suffix('.md').name}", file=sys.stderr)


def report(rows_dir: Path, json_path: Path) -> None:
    """The table from the parts' files: DIR/PART.json (rows) and DIR/PART.failed (reason)."""
    meta: dict[str, Any] = {}
    rows: list[dict] = []
    for part in PARTS:
        f, failed = rows_dir / f"{part}.json", rows_dir / f"{part}.failed"
        data = json.loads(f.read_text()) if f.is_file() else {}
        meta = meta or data.get("meta", {})
        reason = " ".join(failed.read_text().split())[:300] if failed.is_file() else None
        rows += complete(part, data.get("rows", []), reason)
    if not meta:  # no part got as far as writing its rows
        try:
            meta = environment(None)
        except Exception as exc:
            meta = {"device": f"unknown ({one_line(exc)})"}
    finish(meta, rows, json_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke run)")
    parser.add_argument("--ddp-cpu", action="store_true", help="CPU: run the DDP part (gloo)")
    parser.add_argument(
        "--compile-backend", help="torch.compile backend (default: inductor; --quick: eager)"
    )
    parser.add_argument("--part", choices=PARTS, help="run one part; its rows go to --rows")
    parser.add_argument("--rows", type=Path, help="folder of the parts' row files")
    parser.add_argument("--report", type=Path, metavar="DIR", help="table from DIR's parts")
    parser.add_argument("--json", type=Path, default=None, help="default: $OUT or results/")
    args = parser.parse_args()
    json_path = args.json or default_json()
    if args.report is not None:
        report(args.report, json_path)
        return
    sys.path.insert(0, str(REPO / "src"))
    s = Settings.from_args(args)
    if args.part is not None:
        if args.rows is None:
            parser.error("--part needs --rows DIR")
        meta, rows = environment(s), []

        def emit_part(r: dict) -> None:
            rows.append(r)  # written after every row: a later hang keeps the earlier rows
            atomic_json(args.rows / f"{args.part}.json", {"meta": meta, "rows": rows})
            print(f"[{args.part}] {r['item']}: {r['status']} {r['result']}", file=sys.stderr)

        try:
            run_part(args.part, s, emit_part)
        except Exception as exc:
            traceback.print_exc()
            (args.rows / f"{args.part}.failed").write_text(one_line(exc) + "\n")
        atomic_json(args.rows / f"{args.part}.json", {"meta": meta, "rows": rows})
        return
    meta, all_rows = environment(s), []
    for part in PARTS:
        rows: list[dict] = []
        reason = None
        try:
            run_part(part, s, rows.append)
        except Exception as exc:
            traceback.print_exc()
            reason = one_line(exc)
        all_rows += complete(part, rows, reason)
    finish(meta, all_rows, json_path)


if __name__ == "__main__":
    main()
