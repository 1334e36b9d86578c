"""Reading and writing images as float tensors, without silently losing what the file held.

`read_image` returns an `Image`: a float32 (C,H,W) tensor in [0,1] plus the facts needed to
write the result back the way it came in (gray or colour, alpha, 8 or 16 bit, ICC profile).
Channels: 1 = gray, 2 = gray + alpha, 3 = RGB, 4 = RGBA. EXIF orientation is applied.

16-bit colour PNGs: Pillow opens them in mode RGB/RGBA and keeps only the high byte of every
sample. We decode such files twice through Pillow's own PNG decoder, once with the file's raw
mode (high bytes) and once with the byte-swapped raw mode (low bytes), and join the two; the
PNG unfiltering is unchanged because both raw modes have the same bits per pixel. 16-bit
gray + alpha is decoded as raw 8-bit RGBA bytes for the same reason. 16-bit TIFFs that Pillow
opens as 8-bit RGB/RGBA go through the same route. Modes Pillow cannot give us losslessly
(premultiplied 16-bit, float, 32-bit integer) raise `ImageError` rather than truncate.

Every failure a user can cause raises `ImageError` with the file name in a one-line message.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import ImageFile
from torch import Tensor

from slimsr.errors import SlimsrError
from slimsr.fileio import atomic_path

__all__ = [
    "SUFFIXES",
    "Image",
    "ImageError",
    "PngStream",
    "check_output",
    "from_rgb_tensor",
    "list_images",
    "output_bit_depth",
    "quantize",
    "read_image",
    "tensor_to_uint8",
    "to_rgb_tensor",
    "write_image",
    "write_like",
    "write_samples",
    "write_samples_like",
]

#: Suffix (lower case) -> Pillow format name, for reading and writing.
SUFFIXES: dict[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}

_ORIENTATION_TAG = 0x0112
# Raw modes that Pillow squeezes into 8-bit modes, and the raw mode that yields the other byte.
_LOW_BYTE_RAWMODE = {
    "RGB;16B": "RGB;16L",
    "RGB;16L": "RGB;16B",
    "RGBA;16B": "RGBA;16L",
    "RGBA;16L": "RGBA;16B",
    "RGBX;16B": "RGBX;16L",
    "RGBX;16L": "RGBX;16B",
}
# Luma weights (ITU-R 601, as Pillow's RGB -> L) used to turn a gray input's RGB result back.
_LUMA = (0.299, 0.587, 0.114)
# Pillow writes RGBA BMPs as 32-bit BI_RGB, which readers (Pillow included) take as opaque.
_NO_ALPHA = ("JPEG", "BMP")
_TRUNCATION_LOCK = threading.Lock()
_8BIT = ("L", "LA", "RGB", "RGBA", "RGBX", "RGBa", "La", "P", "PA", "CMYK")


class ImageError(SlimsrError):
    """An image file that is missing, unreadable, corrupt, of an unsupported kind, or protected."""


@dataclass(frozen=True, eq=False)
class Image:
    """A decoded image and the facts needed to write a result back in the same form."""

    tensor: Tensor  # float32 (C,H,W) in [0,1]; C: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA
    path: Path | None = None
    had_alpha: bool = False
    was_gray: bool = False
    bit_depth: int = 8  # 8 or 16 (bits per sample of the source)
    icc_profile: bytes | None = None
    mode: str = ""  # Pillow mode of the file as opened, for messages
    format: str | None = None  # Pillow format name (PNG, JPEG, ...)

    @property
    def rgb(self) -> Tensor:
        """(3,H,W): alpha dropped, gray expanded: what a model takes."""
        return to_rgb_tensor(self.tensor)

    @property
    def alpha(self) -> Tensor | None:
        """(1,H,W) alpha in [0,1], or None."""
        return self.tensor[-1:] if self.had_alpha else None

    @property
    def height(self) -> int:
        return int(self.tensor.shape[-2])

    @property
    def width(self) -> int:
        return int(self.tensor.shape[-1])


# ----------------------------------------------------------------------------- reading


@contextlib.contextmanager
def _truncation_is_an_error() -> Iterator[None]:
    """Undo `ImageFile.LOAD_TRUNCATED_IMAGES = True` (set by some libraries) while we decode.

    The flag is global; it is only touched (under a lock) when someone has set it.
    """
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        yield
        return
    with _TRUNCATION_LOCK:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _rawmode(im: PILImage.Image) -> str | None:
    tile = getattr(im, "tile", None)
    if not tile:
        return None
    args = tile[0].args
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _decode_with_rawmode(path: Path, rawmode: str) -> np.ndarray:
    """Decode `path` again, unpacking its pixel data with another raw mode of equal width."""
    with PILImage.open(path) as im:
        new_tiles = []
        for t in im.tile:
            args = t.args
            args = rawmode if isinstance(args, str) else (rawmode, *args[1:])
            new_tiles.append(ImageFile._Tile(t.codec_name, t.extents, t.offset, args))
        im.tile = new_tiles
        im.load()
        return np.array(im)


def _read_wide(path: Path, rawmode: str) -> np.ndarray:
    """uint16 HWC samples of a 16-bit colour file that Pillow would truncate to 8 bits."""
    if rawmode == "LA;16B":
        raw = _decode_with_rawmode(path, "RGBA").astype(np.uint16)  # bytes L_hi L_lo A_hi A_lo
        return np.stack([raw[..., 0] << 8 | raw[..., 1], raw[..., 2] << 8 | raw[..., 3]], -1)
    high = _decode_with_rawmode(path, rawmode).astype(np.uint16)
    low = _decode_with_rawmode(path, _LOW_BYTE_RAWMODE[rawmode]).astype(np.uint16)
    out = high << 8 | low
    if rawmode.startswith("RGBX"):
        out = out[..., :3]
    return out


def _key_alpha(arr: np.ndarray, key: object) -> np.ndarray | None:
    """Alpha (0 where the pixel equals the tRNS colour key, else max) or None."""
    if key is None or isinstance(key, bytes):
        return None
    key_arr = np.atleast_1d(np.asarray(key))
    if key_arr.size != arr.shape[-1]:
        return None
    hit = np.all(arr == key_arr.astype(arr.dtype), axis=-1, keepdims=True)
    full = np.iinfo(arr.dtype).max
    return np.where(hit, 0, full).astype(arr.dtype)


def _orientation(im: PILImage.Image) -> int:
    """EXIF orientation 1..8; a missing or malformed EXIF block means 1 (as displayed)."""
    try:
        value = int(im.getexif().get(_ORIENTATION_TAG, 1) or 1)
    except (OSError, SyntaxError, ValueError, TypeError, struct.error):
        return 1
    return value if 1 <= value <= 8 else 1


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an HWC array, as `ImageOps.exif_transpose` does."""
    if orientation == 2:
        arr = arr[:, ::-1]
    elif orientation == 3:
        arr = arr[::-1, ::-1]
    elif orientation == 4:
        arr = arr[::-1]
    elif orientation == 5:
        arr = arr.transpose(1, 0, 2)
    elif orientation == 6:
        arr = np.rot90(arr, k=-1)
    elif orientation == 7:
        arr = arr[::-1, ::-1].transpose(1, 0, 2)
    elif orientation == 8:
        arr = np.rot90(arr, k=1)
    return np.ascontiguousarray(arr)


@dataclass
class _Decoded:
    samples: np.ndarray  # HWC uint8 or uint16
    gray: bool
    alpha: bool
    icc_ok: bool = True  # False when the colour model changed (CMYK -> RGB): profile dropped


def _decode(path: Path, im: PILImage.Image) -> _Decoded:
    """Pixel samples of an opened (not yet loaded) image, converted to L/LA/RGB/RGBA layout."""
    mode = im.mode
    rawmode = _rawmode(im)
    if rawmode in _LOW_BYTE_RAWMODE or rawmode == "LA;16B":
        samples = _read_wide(path, rawmode)
        im.load()  # checks the whole stream and reads chunks after the pixel data (EXIF)
        gray = rawmode == "LA;16B"
        alpha = samples.shape[-1] in (2, 4)
        if not alpha:
            key = _key_alpha(samples, im.info.get("transparency"))
            if key is not None:
                samples, alpha = np.concatenate([samples, key], -1), True
        return _Decoded(samples, gray=gray, alpha=alpha)
    if rawmode is not None and rawmode.endswith((";16B", ";16L", ";16N")) and mode in _8BIT:
        raise ImageError(
            f"{path}: 16-bit {mode} data in raw mode {rawmode} cannot be read without "
            "truncation by this Pillow version"
        )
    im.load()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        samples = np.array(im).astype(np.uint16)[..., None]
        key = _key_alpha(samples, im.info.get("transparency"))
        if key is not None:
            return _Decoded(np.concatenate([samples, key], -1), gray=True, alpha=True)
        return _Decoded(samples, gray=True, alpha=False)
    if mode == "I":
        values = np.array(im)
        if values.min() < 0 or values.max() > 65535:
            raise ImageError(f"{path}: 32-bit integer images are not supported")
        return _Decoded(values.astype(np.uint16)[..., None], gray=True, alpha=False)
    if mode in ("F", "I;32", "I;32B", "I;32L"):
        raise ImageError(f"{path}: {mode} (floating point / 32-bit) images are not supported")
    icc_ok = True
    if mode == "1":
        im, mode = im.convert("L"), "L"
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        mode = "RGBA" if has_alpha else "RGB"
        im = im.convert(mode)
    elif mode == "La":
        im, mode = im.convert("LA"), "LA"
    elif mode == "RGBa":
        im, mode = im.convert("RGBA"), "RGBA"
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        try:
            im = im.convert("RGB")
        except (ValueError, OSError) as exc:
            raise ImageError(f"{path}: unsupported image mode {mode}") from exc
        icc_ok, mode = mode == "RGBX", "RGB"
    samples = np.array(im)
    if samples.ndim == 2:
        samples = samples[..., None]
    alpha = mode in ("LA", "RGBA")
    if not alpha:
        key = _key_alpha(samples, im.info.get("transparency"))
        if key is not None:
            samples, alpha = np.concatenate([samples, key], -1), True
    return _Decoded(samples, gray=mode in ("L", "LA"), alpha=alpha, icc_ok=icc_ok)


def read_image(path: str | os.PathLike[str]) -> Image:
    """Read any common image file into an `Image` (float32 (C,H,W) in [0,1] plus facts).

    Honours EXIF orientation; keeps 16 bits when the file has them; palette images become
    RGB(A); CMYK becomes RGB (its ICC profile, which describes CMYK, is dropped); a tRNS colour
    key becomes an alpha channel. Raises `ImageError` naming the file for anything unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file")
    try:
        with _truncation_is_an_error(), PILImage.open(path) as im:
            fmt, mode = im.format, im.mode
            decoded = _decode(path, im)
            orientation = _orientation(im)
            icc = im.info.get("icc_profile") or None
    except ImageError:
        raise
    except PILImage.DecompressionBombError as exc:
        raise ImageError(f"{path}: image too large ({exc})") from exc
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageError(f"{path}: cannot read image ({reason})") from exc
    samples = _orient(decoded.samples, orientation)
    bits = 16 if samples.dtype == np.uint16 else 8
    scale = 65535.0 if bits == 16 else 255.0
    # CHW first (uint8: cheap), then one float32 array divided in place: the largest
    # image-size buffer of a read is the result itself (same values as HWC float / scale).
    had_alpha, was_gray, icc_ok = decoded.alpha, decoded.gray, decoded.icc_ok
    chw = np.ascontiguousarray(samples.transpose(2, 0, 1))
    del samples, decoded
    values = chw.astype(np.float32)
    del chw
    values /= np.float32(scale)
    return Image(
        tensor=torch.from_numpy(values),
        path=path,
        had_alpha=had_alpha,
        was_gray=was_gray,
        bit_depth=bits,
        icc_profile=icc if icc_ok else None,
        mode=mode,
        format=fmt,
    )


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly in `folder` with a supported suffix, sorted by name (no hidden)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a folder")
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SUFFIXES
    )


# ------------------------------------------------------------------------ channel layout


def to_rgb_tensor(x: Image | Tensor) -> Tensor:
    """(..., C, H, W) with C in 1..4 -> (..., 3, H, W): drop alpha, repeat gray."""
    t = x.tensor if isinstance(x, Image) else x
    c = t.shape[-3]
    if c in (2, 4):
        t = t[..., : c - 1, :, :]
    if t.shape[-3] == 1:
        t = t.expand(*t.shape[:-3], 3, *t.shape[-2:]).contiguous()
    elif t.shape[-3] != 3:
        raise ValueError(f"expected 1 to 4 channels, got shape {tuple(t.shape)}")
    return t


def from_rgb_tensor(rgb: Tensor, *, gray: bool = False, alpha: Tensor | None = None) -> Tensor:
    """Inverse of `to_rgb_tensor`: RGB (..., 3, H, W) -> the source layout.

    `gray` turns RGB back into one luma channel (ITU-R 601 weights, as Pillow's RGB -> L);
    `alpha` (..., 1, H, W), e.g. the upscaled source alpha, is appended.
    """
    if rgb.shape[-3] != 3:
        raise ValueError(f"expected RGB (..., 3, H, W), got shape {tuple(rgb.shape)}")
    out = rgb
    if gray:
        r, g, b = rgb.unbind(-3)
        out = (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(-3)
    if alpha is not None:
        if alpha.shape[-2:] != rgb.shape[-2:]:
            raise ValueError(f"alpha {tuple(alpha.shape)} does not match {tuple(rgb.shape)}")
        out = torch.cat([out, alpha.to(out.dtype)], dim=-3)
    return out


# ----------------------------------------------------------------------------- writing


def tensor_to_uint8(t: Tensor) -> Tensor:
    """BasicSR's `tensor2img` quantisation: float32 clamp(0,1) * 255, round half to even."""
    return (t.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)


def quantize(t: Tensor, bit_depth: int = 8) -> np.ndarray:
    """(C,H,W) float -> HWC uint8/uint16: floor(clamp(x, 0, 1) * max + 0.5) in float64."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    top = 255.0 if bit_depth == 8 else 65535.0
    x = torch.nan_to_num(t.detach().to("cpu", torch.float64), nan=0.0).clamp(0, 1)
    q = torch.floor(x * top + 0.5).permute(1, 2, 0).numpy()
    return np.ascontiguousarray(q.astype(np.uint8 if bit_depth == 8 else np.uint16))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


class PngStream:
    """A PNG (8 or 16 bits; gray, gray+alpha, RGB, RGBA) written block of rows by block of rows.

    Why: Pillow needs the whole image as one array and copies it into its own 4-byte-per-pixel
    buffer, so a 24000x16000 result would need ~2.7 GB just to be written; here each finished
    strip is filtered (PNG "Sub": byte minus the same byte one pixel left, mod 256), fed to one
    zlib stream and dropped, so writing costs a few rows of memory.
    """

    def __init__(
        self,
        fh: BinaryIO,
        width: int,
        height: int,
        channels: int,
        bit_depth: int,
        icc_profile: bytes | None = None,
    ) -> None:
        if bit_depth not in (8, 16) or channels not in (1, 2, 3, 4):
            raise ValueError(f"PNG of {channels} channels at {bit_depth} bits is not supported")
        self.fh, self.width, self.height = fh, width, height
        self.channels, self.bit_depth = channels, bit_depth
        self.rows = 0
        self._zip = zlib.compressobj(6)
        color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
        fh.write(b"\x89PNG\r\n\x1a\n")
        ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
        fh.write(_png_chunk(b"IHDR", ihdr))
        if icc_profile:
            fh.write(_png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile)))

    def write_rows(self, samples: np.ndarray) -> None:
        """Append (rows, W, C) uint8 (8-bit) or uint16 (16-bit) samples."""
        want = np.uint8 if self.bit_depth == 8 else np.uint16
        if samples.dtype != want or samples.shape[1:] != (self.width, self.channels):
            raise ValueError(f"expected (rows, {self.width}, {self.channels}) {want.__name__}")
        n = samples.shape[0]
        if self.rows + n > self.height:
            raise ValueError("more rows than the PNG's height")
        raw = samples.astype(">u2") if self.bit_depth == 16 else samples
        rows = np.ascontiguousarray(raw).view(np.uint8).reshape(n, -1)
        bpp = self.channels * self.bit_depth // 8
        body = np.empty((n, rows.shape[1] + 1), np.uint8)
        body[:, 0] = 1  # filter type Sub
        body[:, 1 : bpp + 1] = rows[:, :bpp]
        np.subtract(rows[:, bpp:], rows[:, :-bpp], out=body[:, bpp + 1 :])
        self._idat(self._zip.compress(body.tobytes()))
        self.rows += n

    def close(self) -> None:
        if self.rows != self.height:
            raise ValueError(f"PNG has {self.rows} of {self.height} rows")
        self._idat(self._zip.flush())
        self.fh.write(_png_chunk(b"IEND", b""))

    def _idat(self, data: bytes) -> None:
        if data:
            self.fh.write(_png_chunk(b"IDAT", data))


def _as_paths(protect: object) -> list[Path]:
    if protect is None:
        return []
    if isinstance(protect, (str, os.PathLike)):
        return [Path(protect)]
    assert isinstance(protect, Iterable)
    return [Path(p) for p in protect]


def write_image(
    tensor: Tensor,
    path: str | os.PathLike[str],
    *,
    bit_depth: int = 8,
    alpha: Tensor | None = None,
    icc_profile: bytes | None = None,
    quality: int = 95,
    protect: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
) -> Path:
    """Write (C,H,W) or (1,C,H,W) floats in [0,1] (C: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA).

    The format follows the suffix (.png .jpg/.jpeg .webp .bmp .tif/.tiff). Samples are
    quantised as floor(clamp(x, 0, 1) * 255 + 0.5) (65535 for 16-bit; 16-bit is PNG only).
    `alpha` (1,H,W) is appended as the last channel. JPEG and BMP cannot hold alpha: that is an
    error, not a silent drop. The file appears atomically (temp file + rename) and never replaces a
    file that is the same file as one of `protect` (the inputs).
    """
    path = Path(path)
    t = tensor.detach()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if alpha is not None:
        a = alpha.detach()
        a = a[0] if a.dim() == 4 else a
        a = a.unsqueeze(0) if a.dim() == 2 else a
        t = torch.cat([t.to(torch.float64), a.to(t.device, torch.float64)], dim=0)
    if t.dim() != 3 or t.shape[0] not in (1, 2, 3, 4):
        raise ValueError(f"write_image expects (C,H,W) with C in 1..4, got {tuple(t.shape)}")
    check_output(path, t.shape[0], bit_depth == 16, protect)
    return write_samples(
        quantize(t, bit_depth), path, icc_profile=icc_profile, quality=quality, protect=protect
    )


def check_output(
    path: Path,
    channels: int,
    bit16: bool,
    protect: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
) -> str:
    """The Pillow format name for `path`, after the checks every writer makes before writing:
    a known suffix, never over a protected (input) file, 16 bits only in PNG, alpha only where
    the format has it."""
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(SUFFIXES))
        raise ImageError(f"{path}: unsupported output format {path.suffix!r} (use {known})")
    for src in _as_paths(protect):
        if path.exists() and src.exists() and os.path.samefile(path, src):
            raise ImageError(f"{path}: refusing to overwrite the input image")
    if bit16 and fmt != "PNG":
        raise ImageError(f"{path}: 16-bit output is only supported for PNG")
    if fmt in _NO_ALPHA and channels in (2, 4):
        raise ImageError(f"{path}: {fmt} cannot store an alpha channel (write .png or .webp)")
    return fmt


def write_samples(
    samples: np.ndarray,
    path: str | os.PathLike[str],
    *,
    icc_profile: bytes | None = None,
    quality: int = 95,
    protect: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
) -> Path:
    """Write HWC uint8/uint16 samples (C: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) as they are.

    The quantised form of `write_image` (same checks, same atomic write): the encoder reads
    the array itself, so a large result needs no float copy on its way to the file.
    """
    path = Path(path)
    if samples.ndim != 3 or samples.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"write_samples expects HWC with C in 1..4, got {samples.shape}")
    fmt = check_output(path, samples.shape[-1], samples.dtype == np.uint16, protect)
    try:
        with atomic_path(path) as tmp:
            if fmt == "PNG":
                h, w, c = samples.shape
                with open(tmp, "wb") as fh:
                    png = PngStream(fh, w, h, c, samples.dtype.itemsize * 8, icc_profile)
                    for r in range(0, h, 256):
                        png.write_rows(samples[r : r + 256])
                    png.close()
            else:
                _save_8bit(samples, tmp, fmt, icc_profile=icc_profile, quality=quality)
    except (OSError, ValueError) as exc:  # encoder / file system refused; nothing was written
        raise ImageError(f"{path}: cannot write image ({exc})") from exc
    return path


def _save_8bit(
    samples: np.ndarray, tmp: Path, fmt: str, *, icc_profile: bytes | None, quality: int
) -> None:
    channels = samples.shape[-1]
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    im = PILImage.fromarray(samples[..., 0] if channels == 1 else samples)
    if mode == "LA" and fmt == "WEBP":  # WebP has no gray + alpha
        im = im.convert("RGBA")
    elif mode == "L" and fmt == "WEBP":
        im = im.convert("RGB")
    options: dict[str, object] = {}
    if icc_profile and fmt != "BMP":
        options["icc_profile"] = icc_profile
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = quality
    im.save(tmp, format=fmt, **options)


def output_bit_depth(path: str | os.PathLike[str], like: Image) -> int:
    """Bits per sample of a result written to `path` in the form of `like` (16: PNG only)."""
    return like.bit_depth if SUFFIXES.get(Path(path).suffix.lower()) == "PNG" else 8


def write_samples_like(
    samples: np.ndarray, path: str | os.PathLike[str], like: Image, *, quality: int = 95
) -> Path:
    """Write `upscale_samples`' array with `like`'s ICC profile, never over `like`'s file."""
    return write_samples(
        samples, path, icc_profile=like.icc_profile, quality=quality, protect=like.path
    )


def write_like(
    rgb: Tensor,
    path: str | os.PathLike[str],
    like: Image,
    *,
    alpha: Tensor | None = None,
    quality: int = 95,
) -> Path:
    """Write a model's RGB result in the form of the source `like` (gray, 16-bit, ICC).

    16 bits are kept for PNG outputs only. Pass the (resized) source alpha as `alpha`; the
    source file itself is protected from being overwritten.
    """
    out = from_rgb_tensor(rgb, gray=like.was_gray, alpha=alpha)
    is_png = SUFFIXES.get(Path(path).suffix.lower()) == "PNG"
    return write_image(
        out,
        path,
        bit_depth=like.bit_depth if is_png else 8,
        icc_profile=like.icc_profile,
        quality=quality,
        protect=like.path,
    )
