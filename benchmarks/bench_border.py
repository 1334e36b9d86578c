"""What the upscale pipeline's mirrored border does to the bundled models (docs/efficiency.md,
"Borders"): Set5 Y-PSNR with the network's own zero padding (`slimsr eval`, the papers'
protocol) against the pipeline (`slimsr.upscale.upscale_rgb`, 8 LR pixels of mirroring), and
the worst error on flat-colour images by mirrored margin.

    python benchmarks/bench_border.py --json benchmarks/results/border_bundled.json

A zero-padded network tints flat colours at the edge (a rim); a margin of mirrored context
removes it. Flat images: 1x1, 3x17, 8x8 and 24x24 in five colours (black and white included);
error in levels of 255 on the unquantised output. No asserts: tests/test_upscale_pipeline.py
checks the 2-level promise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from slimsr.data.folders import dataset_from_root
from slimsr.errors import SlimsrError
from slimsr.evaluate import evaluate_dataset
from slimsr.fileio import atomic_write_text
from slimsr.model import BORDER, SRModel, pad_border
from slimsr.upscale import UpscaleOptions, upscale_rgb
from slimsr.weights import bundled_scales, default_model

MARGINS = (0, 4, BORDER)
SIZES = ((1, 1), (3, 17), (8, 8), (24, 24))
COLOURS = ((0.9, 0.2, 0.1), (0.5, 0.5, 0.5), (0.05, 0.6, 0.95), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def with_margin(model: SRModel, x: torch.Tensor, margin: int) -> torch.Tensor:
    """The network on `x` with `margin` LR pixels of mirrored context, cropped back."""
    if margin == 0:
        return model(x)
    s, (h, w) = model.scale, x.shape[-2:]
    y = model.raw(pad_border(x, margin))
    return y[..., margin * s : margin * s + h * s, margin * s : margin * s + w * s].clamp(0, 1)


def flat_error(model: SRModel, margin: int) -> float:
    """Worst deviation (levels of 255) from the input colour over every flat image."""
    worst = 0.0
    for size in SIZES:
        for colour in COLOURS:
            c = torch.tensor(colour).view(1, 3, 1, 1)
            with torch.inference_mode():
                y = with_margin(model, c.expand(1, 3, *size).contiguous(), margin)
            worst = max(worst, float((y - c).abs().max()) * 255)
    return worst


def measure(scale: int, set5: Path) -> dict[str, object]:
    model = default_model(scale).eval()
    data = dataset_from_root(set5, scale)
    opts = UpscaleOptions()
    zero = evaluate_dataset(model, data, scale).mean("psnr")
    piped = evaluate_dataset(lambda x: upscale_rgb(model, x, opts)[None], data, scale).mean("psnr")
    return {
        "scale": scale,
        "set5_psnr_zero_padding": round(zero, 4),
        "set5_psnr_pipeline": round(piped, 4),
        "flat_max_error_by_margin": {m: round(flat_error(model, m), 1) for m in MARGINS},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    set5 = args.shared / "datasets" / "Set5"
    try:
        rows = [measure(scale, set5) for scale in bundled_scales()]
    except SlimsrError as exc:  # a missing or unreadable Set5: one line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = Table("bundled", "Set5 zero pad", "Set5 pipeline", *(f"margin {m}" for m in MARGINS))
    for r in rows:
        errors = r["flat_max_error_by_margin"]
        assert isinstance(errors, dict)
        table.add_row(
            f"x{r['scale']}",
            f"{r['set5_psnr_zero_padding']:.3f}",
            f"{r['set5_psnr_pipeline']:.3f}",
            *(f"{errors[m]:.1f}" for m in MARGINS),
        )
    Console().print(table)
    if args.json is not None:
        out = {"threads": args.threads, "torch": torch.__version__, "rows": rows}
        atomic_write_text(args.json, json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
