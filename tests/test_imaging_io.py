"""Image reading/writing: every mode, 16 bits, alpha, EXIF orientation, errors, atomic writes."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from PIL import ImageFile, ImageOps

from slimsr.errors import SlimsrError
from slimsr.imaging.io import (
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

RNG = np.random.default_rng(0)


def _u8(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def _u16(*shape: int) -> np.ndarray:
    return RNG.integers(0, 65536, shape, dtype=np.uint16)


def _hwc(img: Image, top: float) -> np.ndarray:
    return np.rint(img.tensor.permute(1, 2, 0).double().numpy() * top).astype(np.int64)


# --- independent 16-bit PNG / TIFF writers (Pillow cannot write 16-bit colour) -------------

_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2))
_ADAM7 = (*_ADAM7, (0, 1, 1, 2))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png16(path: Path, arr: np.ndarray, *, interlace: bool = False, trns: bytes = b"") -> Path:
    """A 16-bit PNG with filter 0 everywhere, optionally Adam7-interlaced."""
    arr = arr if arr.ndim == 3 else arr[..., None]
    h, w, c = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = arr[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\x00" + row.astype(">u2").tobytes() for row in sub)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, int(interlace))
    body = _chunk(b"IHDR", ihdr) + (_chunk(b"tRNS", trns) if trns else b"")
    body += _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def _tiff16_rgb(path: Path, arr: np.ndarray, little: bool = True) -> Path:
    """Uncompressed 16-bit RGB baseline TIFF, one strip."""
    h, w, _ = arr.shape
    e = "<" if little else ">"
    data = arr.astype(f"{e}u2").tobytes()
    entries = [
        (256, 4, 1, w),
        (257, 4, 1, h),
        (258, 3, 3, None),  # BitsPerSample -> offset to (16, 16, 16)
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (273, 4, 1, None),  # StripOffsets -> data
        (277, 3, 1, 3),
        (278, 4, 1, h),
        (279, 4, 1, len(data)),
        (284, 3, 1, 1),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    bps_at = 8 + ifd_size
    data_at = bps_at + 6
    out = (b"II*\x00" if little else b"MM\x00*") + struct.pack(f"{e}I", 8)
    out += struct.pack(f"{e}H", len(entries))
    for tag, typ, count, value in entries:
        value = {258: bps_at, 273: data_at}.get(tag, value)
        if typ == 3 and count == 1:
            out += struct.pack(f"{e}HHIHH", tag, typ, count, value, 0)
        else:
            out += struct.pack(f"{e}HHII", tag, typ, count, value)
    out += struct.pack(f"{e}I", 0) + struct.pack(f"{e}HHH", 16, 16, 16) + data
    path.write_bytes(out)
    return path


# --- reading -------------------------------------------------------------------------------


def test_read_8bit_modes(tmp_path: Path) -> None:
    rgb, rgba, gray, la = _u8(5, 7, 3), _u8(5, 7, 4), _u8(5, 7), _u8(5, 7, 2)
    cases = {
        "rgb.png": (PILImage.fromarray(rgb), rgb, False, False),
        "rgba.png": (PILImage.fromarray(rgba), rgba, True, False),
        "l.png": (PILImage.fromarray(gray), gray[..., None], False, True),
        "la.png": (PILImage.fromarray(la), la, True, True),
        "rgb.bmp": (PILImage.fromarray(rgb), rgb, False, False),
        "rgb.tif": (PILImage.fromarray(rgb), rgb, False, False),
    }
    for name, (im, want, alpha, gray_) in cases.items():
        im.save(tmp_path / name)
        img = read_image(tmp_path / name)
        assert img.tensor.dtype == torch.float32 and img.bit_depth == 8, name
        assert (img.had_alpha, img.was_gray) == (alpha, gray_), name
        assert img.tensor.shape == (want.shape[-1], 5, 7), name
        np.testing.assert_array_equal(_hwc(img, 255), want, err_msg=name)
        assert img.path == tmp_path / name


def test_palette_with_transparency_becomes_rgba(tmp_path: Path) -> None:
    im = PILImage.new("P", (4, 2))
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    im.putdata([0, 1, 2, 1, 0, 2, 1, 0])
    im.save(tmp_path / "p.png", transparency=1)
    img = read_image(tmp_path / "p.png")
    assert img.had_alpha and not img.was_gray and img.tensor.shape == (4, 2, 4)
    alpha = img.alpha[0].numpy()
    np.testing.assert_array_equal(alpha, np.array([[1, 0, 1, 0], [1, 1, 0, 1]], np.float32))
    assert img.tensor[:3, 0, 2].tolist() == [0.0, 1.0, 0.0]
    im.save(tmp_path / "p_opaque.png")
    assert not read_image(tmp_path / "p_opaque.png").had_alpha


def test_colour_key_transparency_becomes_alpha(tmp_path: Path) -> None:
    arr = np.array([[[1, 2, 3], [4, 5, 6]]], np.uint8)
    PILImage.fromarray(arr).save(tmp_path / "k.png", transparency=(4, 5, 6))
    img = read_image(tmp_path / "k.png")
    assert img.had_alpha and img.alpha[0].tolist() == [[1.0, 0.0]]


def test_cmyk_jpeg_and_icc_profile(tmp_path: Path) -> None:
    cmyk = PILImage.fromarray(_u8(6, 6, 4), mode="CMYK")
    cmyk.save(tmp_path / "c.jpg", icc_profile=b"fake-cmyk-profile")
    img = read_image(tmp_path / "c.jpg")
    assert img.tensor.shape == (3, 6, 6) and img.mode == "CMYK"
    assert img.icc_profile is None  # a CMYK profile does not describe the RGB we return
    PILImage.fromarray(_u8(6, 6, 3)).save(tmp_path / "i.png", icc_profile=b"rgb-profile")
    assert read_image(tmp_path / "i.png").icc_profile == b"rgb-profile"


def test_16bit_gray_png(tmp_path: Path) -> None:
    g = _u16(6, 9)
    img = read_image(_png16(tmp_path / "g16.png", g))
    assert img.bit_depth == 16 and img.was_gray and not img.had_alpha
    np.testing.assert_array_equal(_hwc(img, 65535)[..., 0], g)


@pytest.mark.parametrize("channels", [2, 3, 4])
@pytest.mark.parametrize("interlace", [False, True])
def test_16bit_colour_png_is_not_truncated(tmp_path: Path, channels: int, interlace: bool) -> None:
    arr = _u16(13, 11, channels)
    path = _png16(tmp_path / "c16.png", arr, interlace=interlace)
    # Pillow alone keeps only the high byte: the reason for the special route.
    assert PILImage.open(path).mode in ("RGB", "RGBA")
    img = read_image(path)
    assert img.bit_depth == 16
    assert img.had_alpha == (channels != 3) and img.was_gray == (channels == 2)
    np.testing.assert_array_equal(_hwc(img, 65535), arr)


def test_16bit_rgb_png_colour_key(tmp_path: Path) -> None:
    arr = _u16(3, 4, 3)
    arr[1, 2] = (1000, 2000, 3000)
    path = _png16(tmp_path / "k16.png", arr, trns=struct.pack(">HHH", 1000, 2000, 3000))
    img = read_image(path)
    assert img.had_alpha and img.bit_depth == 16
    assert img.alpha[0, 1, 2] == 0 and img.alpha.sum() == 11


@pytest.mark.parametrize("little", [True, False])
def test_16bit_rgb_tiff(tmp_path: Path, little: bool) -> None:
    arr = _u16(5, 6, 3)
    img = read_image(_tiff16_rgb(tmp_path / "t16.tif", arr, little=little))
    assert img.bit_depth == 16
    np.testing.assert_array_equal(_hwc(img, 65535), arr)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path: Path, orientation: int) -> None:
    arr = _u8(4, 7, 3)
    im = PILImage.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(tmp_path / "o.png", exif=exif)
    img = read_image(tmp_path / "o.png")
    want = np.asarray(ImageOps.exif_transpose(PILImage.open(tmp_path / "o.png")))
    assert (orientation == 1) == (want.shape == arr.shape and np.array_equal(want, arr))
    np.testing.assert_array_equal(_hwc(img, 255), want)
    # the 16-bit route honours it too
    path16 = _png16(tmp_path / "o16.png", arr.astype(np.uint16) * 257)
    raw = path16.read_bytes()
    exif_chunk = _chunk(b"eXIf", exif.tobytes())
    path16.write_bytes(raw[:-12] + exif_chunk + raw[-12:])
    np.testing.assert_array_equal(_hwc(read_image(path16), 255), want)


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


def test_unreadable_files_raise_image_error(tmp_path: Path) -> None:
    good = _png_bytes(_u8(40, 40, 3))
    jpeg = io.BytesIO()
    PILImage.fromarray(_u8(64, 64, 3)).save(jpeg, format="JPEG")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "trunc.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "trunc.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (tmp_path / "folder.png").mkdir()
    names = ["empty.png", "text.png", "trunc.png", "trunc.jpg", "folder.png", "missing.png"]
    for name in names:
        with pytest.raises(ImageError) as info:
            read_image(tmp_path / name)
        msg = str(info.value)
        assert name in msg and "\n" not in msg
        assert isinstance(info.value, SlimsrError)


def test_truncation_detected_even_with_load_truncated_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = _png_bytes(_u8(40, 40, 3))
    (tmp_path / "trunc.png").write_bytes(good[: len(good) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    PILImage.open(tmp_path / "trunc.png").load()  # Pillow alone now accepts the file
    with pytest.raises(ImageError, match=r"trunc\.png"):
        read_image(tmp_path / "trunc.png")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for whoever set it


def test_unsupported_and_32bit_integer_modes(tmp_path: Path) -> None:
    PILImage.fromarray(np.zeros((3, 3), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageError, match=r"f\.tif.*not supported"):
        read_image(tmp_path / "f.tif")
    values = np.array([[0, 65535, 7]], np.int32)
    PILImage.fromarray(values).save(tmp_path / "i.tif")
    assert PILImage.open(tmp_path / "i.tif").mode == "I"
    img = read_image(tmp_path / "i.tif")
    assert img.bit_depth == 16 and img.was_gray
    np.testing.assert_array_equal(_hwc(img, 65535)[..., 0], values)
    PILImage.fromarray(values + 70000).save(tmp_path / "big.tif")
    with pytest.raises(ImageError, match=r"big\.tif.*32-bit"):
        read_image(tmp_path / "big.tif")


# --- channel layout --------------------------------------------------------------------------


def test_to_rgb_and_back() -> None:
    gray = torch.rand(1, 4, 5)
    la = torch.rand(2, 4, 5)
    rgba = torch.rand(4, 4, 5)
    assert torch.equal(to_rgb_tensor(gray), gray.expand(3, 4, 5))
    assert torch.equal(to_rgb_tensor(la), la[:1].expand(3, 4, 5))
    assert torch.equal(to_rgb_tensor(rgba), rgba[:3])
    assert torch.equal(to_rgb_tensor(rgba[None]), rgba[None, :3])
    back = from_rgb_tensor(to_rgb_tensor(la), gray=True, alpha=la[1:])
    torch.testing.assert_close(back, la, atol=1e-6, rtol=0)
    assert torch.equal(from_rgb_tensor(rgba[:3], alpha=rgba[3:]), rgba)


# --- writing ---------------------------------------------------------------------------------


def test_quantisation_round_half_up_and_basicsr() -> None:
    t = torch.tensor([-0.2, 0.0, 0.5 / 255, 1.5 / 255, 2.5 / 255, 0.999, 1.0, 1.7, float("nan")])
    t = t.view(1, 1, -1)
    from slimsr.imaging.io import quantize

    assert quantize(t)[0, :, 0].tolist() == [0, 0, 1, 2, 3, 255, 255, 255, 0]
    # BasicSR's tensor2img: float32 clamp * 255 then round half to even
    x = torch.tensor([0.3, 0.5 / 255, 2.5 / 255, 1.2]).view(1, 1, -1)
    want = (np.clip(x.numpy(), 0, 1) * np.float32(255.0)).round().astype(np.uint8)
    assert tensor_to_uint8(x).dtype == torch.uint8
    np.testing.assert_array_equal(tensor_to_uint8(x).numpy(), want)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".webp"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_write_read_roundtrip_lossless(tmp_path: Path, suffix: str, channels: int) -> None:
    arr = _u8(channels, 6, 5)
    t = torch.from_numpy(arr).float() / 255
    if suffix == ".webp":
        # lossy by default: only check the layout comes back
        write_image(t, tmp_path / f"x{suffix}", quality=100)
        img = read_image(tmp_path / f"x{suffix}")
        assert img.had_alpha == (channels in (2, 4))
        return
    if suffix == ".bmp" and channels in (2, 4):
        with pytest.raises(ImageError, match="alpha"):  # BMP readers ignore alpha
            write_image(t, tmp_path / f"x{suffix}")
        return
    write_image(t, tmp_path / f"x{suffix}")
    img = read_image(tmp_path / f"x{suffix}")
    assert (img.was_gray, img.had_alpha) == (channels < 3, channels in (2, 4))
    np.testing.assert_array_equal(np.rint(img.tensor.numpy() * 255), arr)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_write_16bit_png_roundtrip(tmp_path: Path, channels: int) -> None:
    arr = _u16(channels, 7, 9)
    t = torch.from_numpy(arr.astype(np.float64) / 65535)
    write_image(t, tmp_path / "x.png", bit_depth=16, icc_profile=b"profile")
    img = read_image(tmp_path / "x.png")
    assert img.bit_depth == 16 and img.icc_profile == b"profile"
    np.testing.assert_array_equal(_hwc(img, 65535), arr.transpose(1, 2, 0))
    if channels == 1:  # Pillow's own decoder agrees on gray files
        np.testing.assert_array_equal(np.asarray(PILImage.open(tmp_path / "x.png")), arr[0])


def test_write_jpeg_and_alpha_argument(tmp_path: Path) -> None:
    rgb = torch.rand(3, 8, 8)
    write_image(rgb, tmp_path / "a.jpg", quality=90, icc_profile=b"p")
    with PILImage.open(tmp_path / "a.jpg") as im:
        assert im.format == "JPEG" and im.info.get("icc_profile") == b"p"
    with pytest.raises(ImageError, match="alpha"):
        write_image(rgb, tmp_path / "b.jpg", alpha=torch.ones(1, 8, 8))
    write_image(rgb, tmp_path / "b.png", alpha=torch.zeros(1, 8, 8))
    assert read_image(tmp_path / "b.png").alpha.max() == 0
    with pytest.raises(ImageError, match=r"\.gif"):
        write_image(rgb, tmp_path / "c.gif")
    with pytest.raises(ImageError, match="16-bit"):
        write_image(rgb, tmp_path / "c.jpg", bit_depth=16)


def test_write_is_atomic_and_protects_inputs(tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    PILImage.fromarray(_u8(4, 4, 3)).save(src)
    before = src.read_bytes()
    img = read_image(src)
    with pytest.raises(ImageError, match="overwrite"):
        write_image(img.tensor, src, protect=src)
    (tmp_path / "link.png").symlink_to(src)
    with pytest.raises(ImageError, match="overwrite"):
        write_like(img.rgb, tmp_path / "link.png", img)
    assert src.read_bytes() == before


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_failed_write_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    import slimsr.imaging.io as imaging_io

    target = tmp_path / f"out.{suffix}"
    target.write_bytes(b"previous result")

    def half_written(samples: np.ndarray, tmp: Path, fmt: str, **_: object) -> None:
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    def half_streamed(self: imaging_io.PngStream, samples: np.ndarray) -> None:
        self.fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(imaging_io, "_save_8bit", half_written)  # JPEG/WebP: Pillow
    monkeypatch.setattr(imaging_io.PngStream, "write_rows", half_streamed)  # PNG: streamed
    with pytest.raises(ImageError, match=rf"out\.{suffix}.*disk full"):
        write_image(torch.rand(3, 4, 4), target)
    assert target.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    with pytest.raises(ValueError):
        write_image(torch.rand(5, 4, 4), tmp_path / "bad.png")


def test_write_like_restores_source_form(tmp_path: Path) -> None:
    g16 = _u16(6, 6)
    src = read_image(_png16(tmp_path / "g16.png", g16))
    out = write_like(src.rgb, tmp_path / "out.png", src)
    back = read_image(out)
    assert back.was_gray and back.bit_depth == 16
    np.testing.assert_array_equal(_hwc(back, 65535)[..., 0], g16)
    back_jpg = read_image(write_like(src.rgb, tmp_path / "out.jpg", src))
    assert back_jpg.bit_depth == 8 and back_jpg.was_gray


def test_list_images(tmp_path: Path) -> None:
    for name in ["b.PNG", "a.jpg", "c.txt", ".hidden.png", "d.tiff", "e.webp"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "d.tiff", "e.webp"]
    with pytest.raises(ImageError):
        list_images(tmp_path / "nope")
