"""Input sizes for profiling: the `WxH` strings users type and the LR size behind an output size.

The papers quote FLOPs "for a 1280x720 output"; the network's input is then the LR size that
output comes from, and which rounding the papers use decides the figure.
"""

from __future__ import annotations

from slimsr.errors import SlimsrError


def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' (W x H, as image sizes are written) -> (H, W); a single number is square."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise SlimsrError(f"size {text!r}: expected WxH, e.g. 256x256 or 1280x720") from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) < 1:
        raise SlimsrError(f"size {text!r}: expected WxH with positive integers")
    return nums[1], nums[0]


def lr_size_for_output(output_hw: tuple[int, int], scale: int) -> tuple[int, int]:
    """The LR size whose x`scale` output is (at most) `output_hw`: floor(H/s) x floor(W/s).

    The papers' "Mult-Adds for a 1280x720 output" use this: FMEN's 77.2 G and BSRN's 33.3 G at
    x3 come out of a 426x240 input, not 427x240.
    """
    return output_hw[0] // scale, output_hw[1] // scale
