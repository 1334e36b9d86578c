"""`slimsr eval --report`: one HTML page per evaluation, with crops a person can compare.

The page is self-contained in its output folder: `report.html` names its PNG crops by paths
relative to itself (`report_files/...`), and carries its own CSS, no scripts, nothing fetched.
Relative files rather than data URIs because a report over B100 or Urban100 with several models
holds hundreds of crops: inlined, they would make one slow 30+ MB page, and as files each crop
can be reused in a paper or a slide. Move or zip the folder, not the page alone.

Every column of an image's row (bicubic | each model | HR) is the same HR window: the one with
the most gradient energy in HR (`slimsr.evaluate.detail_window`, the window `--save-images`
cuts too). It is chosen from HR alone, so it does not depend on which models are compared, and
detailed regions are where SR methods differ from each other and from bicubic; a flat window
would show identical blur in every column. Crops are enlarged by an integer factor with
nearest-neighbour sampling so that every pixel of the window stays visible.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from slimsr.evaluate import DatasetResult, Row, detail_window, safe_file_name
from slimsr.fileio import atomic_write_text
from slimsr.imaging import write_image

REPORT_FILE = "report.html"
CROPS_FOLDER = "report_files"
CROP_SIZE = 128
"""HR pixels of a crop's side (smaller images: their shorter side)."""
VIEW_SIZE = 256
"""Crops are enlarged (nearest, integer factor) to at least this many pixels a side."""


@dataclass
class ModelRun:
    """One model's results over all datasets, as `slimsr eval` computed them."""

    label: str
    results: list[DatasetResult]


def crop_window(hr: Tensor, size: int = CROP_SIZE) -> tuple[int, int, int]:
    """(top, left, side) of the crop window of an HR (C,H,W) image: its most detailed square."""
    side = min(size, hr.shape[-2], hr.shape[-1])
    top, left = detail_window(hr.clamp(0, 1), side)
    return top, left, side


def enlarge(crop: Tensor, view: int = VIEW_SIZE) -> Tensor:
    """Nearest-neighbour enlargement by the integer factor that makes the shorter side >= view."""
    factor = max(1, math.ceil(view / min(crop.shape[-2], crop.shape[-1])))
    return crop.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


@dataclass
class CropWriter:
    """Writes the report's crops under `out/report_files/` and remembers their relative paths.

    `paths[(dataset, image)][column]` is the crop of that column, relative to `out`; columns are
    "bicubic", "hr" and the model's index as a string.
    """

    out: Path
    size: int = CROP_SIZE
    paths: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)

    def callback(
        self, dataset_index: int, dataset: str, model_index: int
    ) -> Callable[[str, Tensor, Tensor, Tensor], None]:
        """The `on_output` of `evaluate_dataset` for one model on one dataset."""
        folder = Path(CROPS_FOLDER) / f"{dataset_index}_{safe_file_name(dataset)}"

        def save(image: str, sr: Tensor, bicubic: Tensor, hr: Tensor) -> None:
            top, left, side = crop_window(hr, self.size)
            columns = {str(model_index): sr}
            if model_index == 0:  # bicubic and HR are the same for every model: written once
                columns.update(bicubic=bicubic, hr=hr)
            entry = self.paths.setdefault((dataset, image), {})
            for column, img in columns.items():
                rel = folder / f"{safe_file_name(image)}__{column}.png"
                crop = img.float().clamp(0, 1)[:, top : top + side, left : left + side]
                write_image(enlarge(crop), self.out / rel)
                entry[column] = rel.as_posix()

        return save


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: center; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.best { font-weight: bold; color: #0a5; }
figure { margin: 0; }
figure img { image-rendering: pixelated; display: block; max-width: 320px; height: auto; }
figcaption { font-size: 0.85em; font-variant-numeric: tabular-nums; }
.error { color: #b00; text-align: left; }
.meta { color: #555; }
"""


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _num(value: float | None, digits: int, metric: str, best: bool = False) -> str:
    cls = "num best" if best else "num"
    return f'<td class="{cls}" data-metric="{metric}">{_fmt(value, digits)}</td>'


def _best(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return max(finite) if finite else None


def _summary_table(runs: list[ModelRun]) -> list[str]:
    """Mean PSNR / SSIM per dataset (rows) and method (columns), bicubic first."""
    e = html.escape
    lines = [
        '<table id="summary">',
        "<thead><tr><th rowspan=2>dataset</th><th rowspan=2>images</th>",
    ]
    methods = ["bicubic", *(run.label for run in runs)]
    lines.append("".join(f"<th colspan=2>{e(m)}</th>" for m in methods) + "</tr><tr>")
    lines.append("<th>PSNR</th><th>SSIM</th>" * len(methods) + "</tr></thead><tbody>")
    for i, first in enumerate(runs[0].results):
        means = [(first.mean("bicubic_psnr"), first.mean("bicubic_ssim"))]
        means += [(run.results[i].mean("psnr"), run.results[i].mean("ssim")) for run in runs]
        best_psnr, best_ssim = _best([m[0] for m in means]), _best([m[1] for m in means])
        failed = len(first.rows) - len(first.ok_rows)
        count = f"{len(first.ok_rows)}" + (f" ({failed} failed)" if failed else "")
        cells = [f'<td data-dataset="{e(first.dataset)}">{e(first.dataset)}</td><td>{count}</td>']
        for method, (psnr, ssim) in zip(methods, means, strict=True):
            cells.append(
                f'<td class="num{" best" if psnr == best_psnr else ""}" data-model="{e(method)}" '
                f'data-metric="psnr">{_fmt(psnr, 2)}</td>'
                f'<td class="num{" best" if ssim == best_ssim else ""}" data-model="{e(method)}" '
                f'data-metric="ssim">{_fmt(ssim, 4)}</td>'
            )
        lines.append(f'<tr data-dataset="{e(first.dataset)}">{"".join(cells)}</tr>')
    lines.append("</tbody></table>")
    return lines


def _image_cell(method: str, src: str | None, psnr: float | None, ssim: float | None) -> str:
    e = html.escape
    img = f'<img src="{e(src)}" alt="{e(method)}" loading="lazy">' if src else ""
    caption = ""
    if psnr is not None or ssim is not None:
        caption = (
            f'<figcaption><span data-metric="psnr">{_fmt(psnr, 2)}</span> dB / '
            f'<span data-metric="ssim">{_fmt(ssim, 4)}</span></figcaption>'
        )
    return f'<td data-model="{e(method)}"><figure>{img}{caption}</figure></td>'


def _dataset_section(index: int, runs: list[ModelRun], crops: dict) -> list[str]:
    """Per-image rows of one dataset: each column the crop and its PSNR / SSIM."""
    e = html.escape
    first = runs[0].results[index]
    methods = ["bicubic", *(run.label for run in runs)]
    lines = [
        f"<h2>{e(first.dataset)}</h2>",
        f'<p class="meta">LR: {e(first.lr_source)}; crops: the most detailed HR window, '
        "enlarged with nearest-neighbour sampling</p>",
        f'<table class="images" data-dataset="{e(first.dataset)}"><thead><tr><th>image</th>',
        "".join(f"<th>{e(m)}</th>" for m in methods) + "<th>HR</th></tr></thead><tbody>",
    ]
    for j, row in enumerate(first.rows):
        rows: list[Row] = [run.results[index].rows[j] for run in runs]
        paths = crops.get((first.dataset, row.image), {})
        name = f'<td data-image="{e(row.image)}">{e(row.image)}</td>'
        errors = [r.error for r in rows if r.error]
        if errors:
            cols = len(methods) + 1
            lines.append(
                f'<tr data-image="{e(row.image)}">{name}'
                f'<td class="error" colspan={cols}>{e(errors[0])}</td></tr>'
            )
            continue
        scores = [(row.bicubic_psnr, row.bicubic_ssim)] + [(r.psnr, r.ssim) for r in rows]
        cells = [_image_cell("bicubic", paths.get("bicubic"), *scores[0])]
        for k, run in enumerate(runs):
            cells.append(_image_cell(run.label, paths.get(str(k)), *scores[k + 1]))
        cells.append(_image_cell("HR", paths.get("hr"), None, None))
        lines.append(f'<tr data-image="{e(row.image)}">{name}{"".join(cells)}</tr>')
    lines.append("</tbody></table>")
    return lines


def report_html(runs: list[ModelRun], crops: dict, title: str, settings: str) -> str:
    """The whole page: summary table, then per dataset one row per image with its crops."""
    if not runs:
        raise ValueError("a report needs at least one model")
    e = html.escape
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="meta">{e(settings)}; best of each row in bold</p>',
        *_summary_table(runs),
    ]
    for i in range(len(runs[0].results)):
        lines += _dataset_section(i, runs, crops)
    lines.append("</body></html>")
    return "\n".join(lines) + "\n"


def write_report(
    out: Path, runs: list[ModelRun], crops: CropWriter, title: str, settings: str
) -> Path:
    """Write `out/report.html` atomically (its crops are already under `out/report_files/`)."""
    path = out / REPORT_FILE
    atomic_write_text(path, report_html(runs, crops.paths, title, settings))
    return path
