"""The teacher's outputs, computed once per training image, so distilling costs a plain step.

A distillation step used to run the frozen teacher on every LR patch batch: with the official
BSRN x2 teaching EDSRmini x2 that made a step ~5.6x a plain one. The teacher's output does not
depend on the iteration, so it is computed once on every whole training LR image (what the
teacher gives at inference) and each patch's target is cut from it with the HR patch's own
coordinates and flip/rotation (`slimsr.data.PatchDataset`).

Storage: `<cache_dir>/<digest>.f16`, the outputs of all images back to back as float16
(C, H*s, W*s) arrays, memory-mapped read-only (DataLoader workers share the pages), and
`<digest>.json`, the index (shape and offset of each image) with the full key. float16 keeps
the raw, unclamped output (a teacher overshoots [0,1] a little); its rounding error is at most
2^-12 (1.2e-4, 0.03/255) below 1 and 2^-11 (4.9e-4) on [1, 2): 78.7 dB against the fp32 output
at worst for BSRN x2 on BSD200, far below any teacher-student difference.

Key: the teacher file's sha256 and `param_key`, the precision the teacher runs in, the scale,
the LR mode, and every training image in order (size and sha256 of its bytes, HR and LR). The
digest of the key names the files, so a changed teacher, image, image order or LR mode finds no
cache and builds its own; several runs with the same teacher and data share one. Contents, not
paths and mtimes: a dataset copied or re-extracted (new mtimes, as on a fresh machine each
session) keeps its cache; hashing the 66 MB of T91 + BSD200 took 0.22 s here (2026-12-07)
against minutes for a rebuild. Nothing else is deleted:
a folder of caches can be removed at any time, it is rebuilt when needed.

Atomic: the data and the index are written to temporary names and renamed, data first, index
last; only an index whose key matches and whose data file has exactly the indexed size counts,
so an interrupted build never leaves a cache that looks valid (its temporaries are removed on
the way out, or ignored and overwritten after a kill).

Exactness (measured in docs/training.md): a patch of the whole-image output is not what the
teacher gives on the patch alone. Near the patch border the live teacher saw zero padding
where the cache's teacher saw the real neighbours, and a teacher with global statistics (BSRN's
contrast-aware channel attention) sees the whole image's; the cached target is the teacher's
actual prediction for those pixels, the one it gives at inference. The flips/rotations are
applied to the output (the teacher is not exactly equivariant to them), which keeps one copy
instead of eight.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

from slimsr.errors import SlimsrError

FORMAT = 2
"""Bumped when the layout or the key changes: an old cache then simply does not match.
2: images identified by size and content sha256 instead of path, size and mtime."""

STORAGE = np.float16


class TeacherCacheError(SlimsrError):
    """The teacher cache cannot be written (read-only or full folder)."""


def cache_key(
    *,
    teacher_sha256: str,
    param_key: str | None,
    precision: str,
    scale: int,
    lr_mode: str,
    images: Sequence[Any],
) -> dict[str, Any]:
    """Everything the cached outputs depend on; a change in any of it means another cache."""
    return {
        "format": FORMAT,
        "storage": np.dtype(STORAGE).name,
        "teacher_sha256": teacher_sha256,
        "param_key": param_key,
        "teacher_precision": precision,
        "scale": scale,
        "lr_mode": lr_mode,
        "images": list(images),  # PairStore.identities: size and sha256 of each HR / LR file
    }


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def cache_paths(folder: Path, key: dict[str, Any]) -> tuple[Path, Path]:
    """(data, index) file of `key` in `folder`."""
    stem = key_digest(key)[:24]
    return folder / f"{stem}.f16", folder / f"{stem}.json"


class TeacherOutputs(Sequence[np.ndarray]):
    """The cached outputs: item i is image i's (C, H*s, W*s) float16 array, a read-only view
    of the memory map. Pickles without the map (a spawned worker maps the file itself)."""

    def __init__(self, path: Path, shapes: list[tuple[int, ...]], offsets: list[int]) -> None:
        self.path = Path(path)
        self.shapes = shapes
        self.offsets = offsets
        self._flat: np.ndarray | None = None

    @property
    def numel(self) -> int:
        return self.offsets[-1] + int(np.prod(self.shapes[-1])) if self.shapes else 0

    @property
    def nbytes(self) -> int:
        return self.numel * np.dtype(STORAGE).itemsize

    def _map(self) -> np.ndarray:
        if self._flat is None:
            self._flat = np.memmap(self.path, dtype=STORAGE, mode="r", shape=(self.numel,))
        return self._flat

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        shape = self.shapes[index]
        start = self.offsets[index]
        return self._map()[start : start + int(np.prod(shape))].reshape(shape)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_flat": None}


def open_cache(folder: Path, key: dict[str, Any]) -> TeacherOutputs | None:
    """The complete cache of `key` in `folder`, or None (missing, partial or another key)."""
    data, index = cache_paths(Path(folder), key)
    try:
        meta = json.loads(index.read_text())
        if meta.get("key") != key:
            return None
        shapes = [tuple(int(n) for n in s) for s in meta["shapes"]]
        offsets = [int(o) for o in meta["offsets"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    outputs = TeacherOutputs(data, shapes, offsets)
    try:
        if len(shapes) != len(key["images"]) or data.stat().st_size != outputs.nbytes:
            return None
    except OSError:
        return None
    return outputs


@dataclass
class BuildReport:
    path: Path
    built: bool
    seconds: float
    images: int
    megabytes: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "built": self.built,
            "seconds": round(self.seconds, 2),
            "images": self.images,
            "mb": round(self.megabytes, 1),
        }


def build_cache(
    folder: Path,
    key: dict[str, Any],
    lr_image: Callable[[int], Tensor],
    teacher: Callable[[Tensor], Tensor],
    *,
    progress: bool = False,
) -> TeacherOutputs:
    """Run `teacher` on each whole LR image (`lr_image(i)`, (C,h,w) float32) and store the
    float16 outputs; temporaries are removed if anything interrupts the build."""
    folder = Path(folder)
    data, index = cache_paths(folder, key)
    suffix = f".tmp{os.getpid()}"
    tmp_data, tmp_index = data.with_name(data.name + suffix), index.with_name(index.name + suffix)
    count = len(key["images"])
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shapes: list[tuple[int, ...]] = []
        offsets: list[int] = []
        total = 0
        with open(tmp_data, "wb") as f, _progress_bar(progress, count) as advance:
            for i in range(count):
                lr = lr_image(i)
                with torch.no_grad():
                    out = teacher(lr.unsqueeze(0))[0]
                array = out.detach().float().cpu().numpy().astype(STORAGE)
                shapes.append(tuple(array.shape))
                offsets.append(total)
                total += array.size
                f.write(np.ascontiguousarray(array).tobytes())
                advance()
            f.flush()
            os.fsync(f.fileno())
        meta = {"key": key, "shapes": [list(s) for s in shapes], "offsets": offsets}
        tmp_index.write_text(json.dumps(meta))
        os.replace(tmp_data, data)
        os.replace(tmp_index, index)  # last: the index makes the cache valid
    except OSError as exc:
        raise TeacherCacheError(
            f"teacher cache {folder}: cannot write ({exc.strerror or exc}); set "
            "distill.cache_dir to a writable folder, or distill.cache: false"
        ) from None
    finally:
        for tmp in (tmp_data, tmp_index):
            with contextlib.suppress(OSError):
                tmp.unlink()
    return TeacherOutputs(data, shapes, offsets)


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Callable[[], None]]:
    """A bar on stderr when it is a terminal (no bar lines in logs and pipes)."""
    console = Console(file=sys.stderr, markup=False, highlight=False, emoji=False)
    bar = Progress(
        TextColumn("teacher outputs"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled or not console.is_terminal,
    )
    with bar:
        task = bar.add_task("teacher", total=total)
        yield lambda: bar.advance(task)


def ensure_cache(
    folder: Path,
    key: dict[str, Any],
    lr_image: Callable[[int], Tensor],
    teacher: Callable[[Tensor], Tensor],
    *,
    progress: bool = False,
) -> tuple[TeacherOutputs, BuildReport]:
    """The cache of `key`, built first when there is none."""
    t0 = time.perf_counter()
    outputs = open_cache(folder, key)
    built = outputs is None
    if outputs is None:
        outputs = build_cache(folder, key, lr_image, teacher, progress=progress)
    report = BuildReport(
        outputs.path, built, time.perf_counter() - t0, len(outputs), outputs.nbytes / 2**20
    )
    return outputs, report
