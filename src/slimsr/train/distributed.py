"""torchrun integration: process group from the environment, rank-0 helpers, small reductions.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE in the environment (the `--local-rank` argument
of the old launcher broke with torch 2.x: BasicSR#626), so nothing here parses argv. NCCL on
GPUs, gloo on CPU. A single process (no WORLD_SIZE, or 1) never initialises a process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from slimsr.errors import SlimsrError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SlimsrError(f"environment variable {name}={raw!r} is not an integer") from None


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SlimsrError("device: cuda asked for, but no CUDA device is available")
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def setup(device_choice: str = "auto") -> DistInfo:
    """Join the torchrun process group if there is one; pick this process's device."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_choice, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=60))
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=device)


def teardown(info: DistInfo, finished: bool = True) -> None:
    """Leave the process group; after a finished run, only once every rank has got here.

    Without the barrier a rank can tear gloo down while a peer still has work in flight, which
    occasionally aborts that rank at exit (seen once in CI as SIGABRT, "terminate called without
    an active exception"). After a failure there is no barrier: the peers may be gone.
    """
    if info.enabled and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over ranks of a tensor (a copy; the input is untouched)."""
    if not info.enabled:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank if `flag` is true on any (so all ranks stop at the same step)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj: object, info: DistInfo) -> object:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
