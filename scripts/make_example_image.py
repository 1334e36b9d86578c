"""Render the bundled example image (src/slimsr/assets/example.png) procedurally.

The package ships no third-party photographs; this scene has what shows super-resolution at
work: text, thin lines, curved edges, fine stripes and smooth gradients. Deterministic.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont


def render(width: int = 192, height: int = 128) -> Image.Image:
    yy = np.mgrid[0:height, 0:width][0].astype(np.float32)
    sky = np.stack([90 + 80 * yy / height, 140 + 60 * yy / height, 210 - 40 * yy / height], axis=-1)
    img = Image.fromarray(sky.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse((128, 10, 172, 54), fill=(250, 215, 90), outline=(200, 120, 40), width=2)
    for i in range(12):  # fine radial lines
        a = i * math.pi / 6
        draw.line((150, 32, 150 + 40 * math.cos(a), 32 + 40 * math.sin(a)), fill=(255, 240, 180))
    draw.polygon([(0, 128), (60, 58), (110, 128)], fill=(70, 110, 80))
    draw.polygon([(70, 128), (130, 74), (192, 128)], fill=(50, 90, 70))
    for x in range(4, 64, 3):  # a striped fence: aliasing-prone detail
        draw.line((x, 100, x, 126), fill=(235, 230, 215))
    draw.line((4, 104, 64, 104), fill=(120, 90, 60), width=2)
    draw.rectangle((96, 86, 186, 120), fill=(245, 245, 240), outline=(30, 30, 30))
    font = ImageFont.load_default()
    draw.text((101, 90), "slimsr", fill=(20, 20, 20), font=font)
    draw.text((101, 104), "x2 x3 x4", fill=(160, 30, 30), font=font)
    return img.filter(ImageFilter.SMOOTH)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("src/slimsr/assets/example.png")
    render().save(out, optimize=True)
    print(out)
