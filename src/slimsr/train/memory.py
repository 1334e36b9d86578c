"""How much memory a training recipe needs, estimated before anything is decoded or trained.

A run that does not fit should fail in a second with the number and the override that fits,
not be OOM-killed minutes later (a paper recipe's batch of 256 64-px patches keeps ~22 GB of
BSRN-S activations for the backward pass). The estimate adds:

* activations: what autograd saves for the backward pass, measured on the recipe's own network
  with one patch (`saved_bytes_per_sample`), times the per-process batch, times `BACKWARD_PEAK`
  for the gradients that live alongside them while the backward runs;
* the model: weights, gradients, optimiser state and EMA (4 bytes per parameter each);
* a distillation teacher run on every batch (`distill.cache: false`): its weights and one
  inference forward (`slimsr.upscale.activation_bytes_per_pixel`: no gradients, so only a few
  tensors live). With the teacher cache (the default) nothing: the teacher runs before training
  (its forward bounded by `teacher.TEACHER_BUILD_BUDGET_MB`), is then released, and the cached
  outputs are a memory-mapped file (reclaimable page cache, not process memory);
* the data: the decoded-image cache (sized from the image headers, no decoding) once per
  process on this machine (DataLoader workers share it copy-on-write), the validation images,
  and the batches the loader keeps in flight (workers x prefetch, plus the one in use);
* `PROCESS_BYTES` per process for the interpreter and torch itself.

Activations, model and teacher live on the GPU when training on CUDA; the rest on the host.
The estimate is fp32 (autocast to bf16/fp16 only lowers it) and errs on the high side; it is
compared with the memory the system says is available (cgroup limit included).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image as PILImage

from slimsr.archs.blocks import set_online_fold
from slimsr.errors import SlimsrError
from slimsr.train.config import TrainConfig

BACKWARD_PEAK = 1.3
"""Peak / saved activations during backward (gradients of the activations coexist with them);
measured 1.15-1.3 on BSRN-S, EDSR and SwinIR patches with /usr/bin/time."""

PROCESS_BYTES = 600 * 2**20
"""The interpreter, torch and its allocator in one training process."""

WORKER_BYTES = 200 * 2**20
"""What a forked DataLoader worker adds beyond the pages it shares with its parent."""

PREFETCH_FACTOR = 4
"""Batches each DataLoader worker prepares ahead (the trainer's `prefetch_factor`)."""

HEADROOM = 0.9
"""Use at most this fraction of the available memory: the estimate is not exact."""

GB = 2**30


class InsufficientMemoryError(SlimsrError):
    """The recipe would not fit in this machine's memory (a usage error, not `MemoryError`)."""


def cpu_count() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def local_processes() -> int:
    """Training processes on this machine (torchrun sets LOCAL_WORLD_SIZE)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def effective_workers(requested: int) -> tuple[int, str | None]:
    """`data.train.num_workers`, clamped to the CPUs each process has; the note when clamped.

    More workers than CPUs cannot decode faster, they only compete with the training process
    and hold more batches in memory. The data stream does not depend on the worker count.
    """
    cpus = max(1, cpu_count() // local_processes())
    if requested <= cpus:
        return requested, None
    return cpus, (
        f"data.train.num_workers {requested} -> {cpus}: this process has {cpus} CPU"
        f"{'s' if cpus > 1 else ''}"
    )


def available_memory() -> int | None:
    """Bytes the system can give without swapping: MemAvailable, capped by a cgroup limit."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        with contextlib.suppress(ValueError, OSError, AttributeError):
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    try:  # cgroup v2: a container's limit, which MemAvailable does not show
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            found.append(max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def saved_bytes_per_sample(net: torch.nn.Module, patch: int) -> int:
    """Bytes autograd keeps for the backward of one `patch` x `patch` LR sample.

    Measured with `saved_tensors_hooks` on a forward of the real network: the inference
    figure (`activation_bytes_per_pixel`, two live tensors) is far too low for training,
    where every layer's input is kept until the backward reaches it.
    """
    storages: dict[int, int] = {}
    alive: list[torch.Tensor] = []  # as autograd would: a freed storage's address is reused

    def pack(t: torch.Tensor) -> None:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        # detached: returning `t` itself makes a reference cycle through C++ (an op's saved
        # output -> its grad_fn -> the output) that leaks the whole graph
        alive.append(t.detach())

    was_training = net.training
    net.train()
    x = torch.rand(1, 3, patch, patch)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None):
            y = net(x)
    finally:
        net.train(was_training)
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    return sum(n for ptr, n in storages.items() if ptr not in params) + y.numel() * 4


def _header(path: Path) -> tuple[int, int, bool]:
    """(width, height, more than 8 bits) without decoding the pixels."""
    with PILImage.open(path) as im:
        return im.size[0], im.size[1], im.mode in ("I", "F") or "16" in im.mode


def _pair_bytes(hr: Path, lr: Path | None, scale: int, lr_float: bool) -> tuple[int, int]:
    """(cache bytes, LR short side) of one training pair, as `PairStore` keeps it."""
    w, h, wide = _header(hr)
    lw, lh = w // scale, h // scale
    hr_bytes = 3 * lw * scale * lh * scale * (4 if wide else 1)
    lr_wide = _header(lr)[2] if lr is not None else lr_float
    return hr_bytes + 3 * lw * lh * (4 if lr_wide else 1), min(lw, lh)


def cache_bytes(config: TrainConfig) -> int:
    """The decoded training cache (`PairStore`): uint8 8-bit pixels, float32 otherwise."""
    from slimsr.data.folders import find_pairs

    d = config.data.train
    if not d.cache:
        return 0
    total = 0
    for source in d.sources:
        for pair in find_pairs(source.hr, source.lr, config.model.scale):
            lr_float = pair.lr is None and d.lr_mode == "float"
            nbytes, short = _pair_bytes(pair.hr, pair.lr, config.model.scale, lr_float)
            if short >= d.patch_size:
                total += nbytes
    return total


def validation_bytes(config: TrainConfig) -> int:
    """Validation pairs, kept as float32 for the whole run."""
    v = config.data.val
    if v is None:
        return 0
    from slimsr.data.folders import DataError, dataset_from_root, pair_folders

    try:
        ds = (
            dataset_from_root(v.root, config.model.scale)
            if v.root is not None
            else pair_folders(v.hr, v.lr, config.model.scale)  # type: ignore[arg-type]
        )
    except DataError:
        return 0  # reported by the run itself, with its own message
    total = 0
    for pair in ds.pairs:
        w, h, _ = _header(pair.hr)
        total += 3 * w * h * 4 * (1 + 1 / config.model.scale**2)
    return int(total)


@dataclass
class MemoryEstimate:
    """Bytes per part; `device`: where activations and weights live (cpu or cuda)."""

    device: str
    processes: int
    local_batch: int
    patch: int
    activations: int
    model: int
    teacher: int
    cache: int
    validation: int
    loader: int
    runtime: int
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def on_device(self) -> int:
        """Per process, on the training device."""
        return self.activations + self.model + self.teacher

    @property
    def host(self) -> int:
        """All processes of this machine, in host RAM (plus the device part on CPU)."""
        per_process = self.cache + self.validation + self.loader + self.runtime
        if self.device == "cpu":
            per_process += self.on_device
        return per_process * self.processes

    def summary(self) -> str:
        where = "RAM" if self.device == "cpu" else f"RAM, {self.on_device / GB:.1f} GB on the GPU"
        parts = [
            f"activations {self.activations / GB:.1f} GB for {self.local_batch} patches of "
            f"{self.patch}x{self.patch}",
            f"data cache {self.cache / GB:.1f} GB",
            f"loader {self.loader / GB:.1f} GB",
        ]
        if self.teacher:
            parts.append(f"teacher {self.teacher / GB:.1f} GB")
        procs = f" x {self.processes} processes" if self.processes > 1 else ""
        return f"about {self.host / GB:.1f} GB of {where}{procs} ({', '.join(parts)})"


def _device(config: TrainConfig) -> str:
    if config.device == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def estimate_memory(config: TrainConfig, *, batch_size: int | None = None) -> MemoryEstimate:
    """What `config` needs (with another global `batch_size` if given); see the module doc."""
    from slimsr.factory import create_model, load
    from slimsr.upscale import activation_bytes_per_pixel

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    d = config.data.train
    batch = (batch_size or d.batch_size) // max(world, 1)
    patch, scale = d.patch_size, config.model.scale
    m = config.model
    model = create_model(m.name, scale, **m.kwargs)
    # a new run folds re-parameterisable blocks unless told not to (train/fastpath.py): its
    # autograd then keeps the folded convs' inputs, not the wider branches'
    set_online_fold(model.net, config.train.fast_path.online_fold is not False)
    n_params = sum(p.numel() for p in model.net.parameters() if p.requires_grad)
    states = 2  # Adam / AdamW / Adamax moments; OBProx-SG keeps no more
    copies = 2 + states + (1 if config.train.ema is not None else 0)
    per_sample = saved_bytes_per_sample(model.net, patch)
    teacher = 0
    if config.distill is not None and config.distill.teacher.is_file() and not config.distill.cache:
        t = load(config.distill.teacher, param_key=config.distill.param_key)
        per_px = activation_bytes_per_pixel(t.net)
        teacher = int(per_px * batch * patch * patch) + 4 * sum(
            p.numel() for p in t.net.parameters()
        )
    workers, _ = effective_workers(d.num_workers)
    batch_bytes = batch * 3 * (patch * patch + (patch * scale) ** 2) * 4
    in_flight = workers * PREFETCH_FACTOR + 2
    return MemoryEstimate(
        device=_device(config),
        processes=local_processes(),
        local_batch=batch,
        patch=patch,
        activations=int(per_sample * batch * BACKWARD_PEAK),
        model=4 * n_params * copies,
        teacher=teacher,
        cache=cache_bytes(config),
        validation=validation_bytes(config),
        loader=batch_bytes * in_flight,
        runtime=PROCESS_BYTES + workers * WORKER_BYTES,
    )


def _device_available(device: str) -> int | None:
    if device != "cuda":
        return None
    try:
        free, _ = torch.cuda.mem_get_info()
    except (RuntimeError, AssertionError):
        return None
    return int(free)


def _fits(est: MemoryEstimate, ram: int | None, gpu: int | None) -> bool:
    ok = ram is None or est.host <= HEADROOM * ram
    return ok and (gpu is None or est.on_device <= HEADROOM * gpu)


def check_memory(
    config: TrainConfig,
    *,
    what: str | None = None,
    ram: int | None = -1,
    gpu: int | None = -1,
) -> MemoryEstimate:
    """The estimate, or a one-line error naming it and the `--set` that fits.

    `ram` / `gpu`: bytes available (default: asked of the system; None: unknown, not checked).
    """
    est = estimate_memory(config)
    ram = available_memory() if ram == -1 else ram
    gpu = _device_available(est.device) if gpu == -1 else gpu
    if _fits(est, ram, gpu):
        return est
    label = what or config.name
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    have = f"{ram / GB:.1f} GB of RAM" if ram is not None else "?"
    if gpu is not None:
        have += f" and {gpu / GB:.1f} GB on the GPU"
    batch = config.data.train.batch_size
    hint = ""
    while batch > world:
        batch = max(world, (batch // 2) // world * world)
        smaller = estimate_memory(config, batch_size=batch)
        if _fits(smaller, ram, gpu):
            hint = (
                f"; use --set data.train.batch_size={batch} (about {smaller.host / GB:.1f} GB"
                + ("" if gpu is None else f", {smaller.on_device / GB:.1f} GB on the GPU")
                + ") or a machine with more memory"
            )
            break
    if not hint:
        hint = "; even the smallest batch does not fit: lower data.train.patch_size"
        if est.cache > est.activations:
            hint += " or set data.train.cache=false"
    raise InsufficientMemoryError(f"{label} needs {est.summary()}, {have} available{hint}")
