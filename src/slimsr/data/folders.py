"""HR/LR pairs in folders: the one vocabulary for "a pair of images" (training, validation,
evaluation).

An HR image is paired by file name with `<stem>.*`, `<stem>x<s>.*`, `<stem>_x<s>.*` or
`<stem>X<s>.*` in its LR folder; with no LR folder the pair has `lr=None` (the LR is made
from the HR with MATLAB bicubic by whoever loads it). A benchmark root (`Set5/HR` +
`Set5/LR_bicubic/X2`, or Huang et al.'s layout) becomes a `PairedFolder`.

This module is the bottom layer's: training (`slimsr.data`) and evaluation (`slimsr.evaluate`)
both pair through it, so the layout rules and their error messages exist once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slimsr.errors import SlimsrError
from slimsr.imaging import list_images


class DataError(SlimsrError):
    """A training, validation or evaluation folder that cannot be used: missing, empty, or
    a pair that does not fit."""


@dataclass(frozen=True)
class ImagePair:
    """An HR file and its LR file (None: LR is made from HR with MATLAB bicubic).

    An `lr` path that does not exist means "no partner found": evaluation reports it as a
    failed row, training refuses it (`find_pairs`).
    """

    hr: Path
    lr: Path | None

    @property
    def name(self) -> str:
        """The image's name in tables and output files: the HR file's stem."""
        return self.hr.stem

    @property
    def label(self) -> str:
        return f"{self.hr} / {self.lr}" if self.lr is not None else str(self.hr)


@dataclass
class PairedFolder:
    """One set of pairs: its name, the pairs, and where the LR images come from."""

    name: str
    pairs: list[ImagePair]
    lr_source: str


def _match_lr(lr_files: dict[str, Path], stem: str, scale: int) -> Path | None:
    for candidate in (stem, f"{stem}x{scale}", f"{stem}_x{scale}", f"{stem}X{scale}"):
        if candidate in lr_files:
            return lr_files[candidate]
    return None


def pair_folders(
    hr_dir: Path, lr_dir: Path | None, scale: int, name: str | None = None
) -> PairedFolder:
    """Pair every HR image with `<stem>.*` or `<stem>x<s>.*` in `lr_dir` (or none: generate).

    An HR image without an LR partner keeps a pair whose LR path does not exist; evaluation
    reports it by name.
    """
    hr_dir = Path(hr_dir)
    if not hr_dir.is_dir():
        raise DataError(f"{hr_dir}: HR folder not found")
    hr_files = list_images(hr_dir)
    if not hr_files:
        raise DataError(f"{hr_dir}: no images in the HR folder")
    lr_files: dict[str, Path] = {}
    if lr_dir is not None:
        if not Path(lr_dir).is_dir():
            raise DataError(f"{lr_dir}: LR folder not found")
        lr_files = {p.stem: p for p in list_images(lr_dir)}
    pairs = []
    for hr in hr_files:
        lr = None
        if lr_dir is not None:
            lr = _match_lr(lr_files, hr.stem, scale) or Path(lr_dir) / f"{hr.stem}x{scale}.png"
        pairs.append(ImagePair(hr, lr))
    source = str(lr_dir) if lr_dir is not None else "generated (MATLAB bicubic, uint8)"
    default_name = hr_dir.parent.name if hr_dir.name.upper() == "HR" else hr_dir.name
    return PairedFolder(name or default_name, pairs, source)


LR_LAYOUTS = ("LR_bicubic/X{s}", "LR_bicubic_huang2015/X{s}", "LR/X{s}", "LR_bicubic/x{s}")


def dataset_from_root(root: Path, scale: int, generate_lr: bool = False) -> PairedFolder:
    """A benchmark folder laid out as `ROOT/HR` + `ROOT/LR_bicubic/X{s}` (or Huang et al.'s).

    The first LR layout that exists is used (MATLAB-made `LR_bicubic` first); with none, or
    with `generate_lr`, LR images are made from HR with our MATLAB-exact bicubic.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    hr_dir = root / "HR" if (root / "HR").is_dir() else root
    lr_dir = None
    if not generate_lr:
        for layout in LR_LAYOUTS:
            if (root / layout.format(s=scale)).is_dir():
                lr_dir = root / layout.format(s=scale)
                break
    return pair_folders(hr_dir, lr_dir, scale, name=root.name)


def find_pairs(hr_dir: Path, lr_dir: Path | None, scale: int) -> list[ImagePair]:
    """Every image of `hr_dir` with its partner in `lr_dir`; a missing partner is an error
    (training cannot leave an image out silently)."""
    pairs = pair_folders(Path(hr_dir), None if lr_dir is None else Path(lr_dir), scale).pairs
    for pair in pairs:
        if pair.lr is not None and not pair.lr.exists():
            raise DataError(
                f"{pair.hr}: no LR partner in {lr_dir} (looked for {pair.hr.stem}.* and "
                f"{pair.hr.stem}x{scale}.*)"
            )
    return pairs
