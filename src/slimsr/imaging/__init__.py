"""Image files and pixel conventions: reading/writing (io), MATLAB bicubic (resize), BT.601 (color)."""

from __future__ import annotations

from slimsr.imaging.color import rgb_to_ycbcr, to_y_channel, ycbcr_to_rgb
from slimsr.imaging.io import (
    SUFFIXES,
    Image,
    ImageError,
    from_rgb_tensor,
    list_images,
    read_image,
    tensor_to_uint8,
    to_rgb_tensor,
    write_image,
    write_like,
)
from slimsr.imaging.resize import imresize, modcrop

__all__ = [
    "SUFFIXES",
    "Image",
    "ImageError",
    "from_rgb_tensor",
    "imresize",
    "list_images",
    "modcrop",
    "read_image",
    "rgb_to_ycbcr",
    "tensor_to_uint8",
    "to_rgb_tensor",
    "to_y_channel",
    "write_image",
    "write_like",
    "ycbcr_to_rgb",
]
