"""Every official checkpoint in ../shared/weights/official loads strictly with no architecture
named, and restores a real Set5 image clearly better than bicubic (which a wrong input range
or a wrong channel order would not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import slimsr
from slimsr.errors import CheckpointError
from tests.conftest import official_weight, shared_file

OFFICIAL = {
    # file: (name, scale, parameters)
    "bsrn_x2.pth": ("bsrn", 2, 331_628),
    "bsrn_x3.pth": ("bsrn", 3, 340_283),
    "bsrn_x4.pth": ("bsrn", 4, 352_400),
    "bsrn_s_x4.pth": ("bsrn_s", 4, 156_288),
    "bsrn_s_x4_ntire2022.pth": ("bsrn_s", 4, 156_288),
    "fmen_s_x4_deploy.pt": ("fmen_s", 4, 341_066),
    "fmen_s_x4_deploy_ntire2022.pth": ("fmen_s", 4, 341_066),
    "e_rfdn_x4.pth": ("e_rfdn", 4, 433_448),
    "abpn_x3_float_keras.npz": ("abpn", 3, 42_539),
}


def read_rgb(path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def rgb_psnr(sr: torch.Tensor, hr: torch.Tensor, border: int) -> float:
    """uint8-quantised RGB PSNR with `border` pixels cropped (a sanity metric, not eval's)."""
    sr = (sr.clamp(0, 1) * 255).round()
    hr = (hr * 255).round()
    sr, hr = (t[..., border:-border, border:-border].double() for t in (sr, hr))
    return float(10 * torch.log10(255.0**2 / ((sr - hr) ** 2).mean()))


@pytest.mark.parametrize("filename", sorted(OFFICIAL))
def test_official_checkpoint_is_detected_and_loads_strictly(filename: str) -> None:
    model = slimsr.load(official_weight(filename))
    assert (model.name, model.scale, model.num_parameters()) == OFFICIAL[filename]


@pytest.mark.parametrize("filename", sorted(OFFICIAL))
def test_official_checkpoint_beats_bicubic_by_over_1db_on_set5(filename: str) -> None:
    _name, scale, _ = OFFICIAL[filename]
    lr = read_rgb(
        shared_file("datasets", "Set5", "LR_bicubic", f"X{scale}", f"butterflyx{scale}.png")
    )
    hr = read_rgb(shared_file("datasets", "Set5", "HR", "butterfly.png"))
    hr = hr[..., : lr.shape[-2] * scale, : lr.shape[-1] * scale]
    model = slimsr.load(official_weight(filename))
    with torch.inference_mode():
        sr = model(lr)
    bicubic = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)
    gain = rgb_psnr(sr, hr, scale) - rgb_psnr(bicubic, hr, scale)
    assert gain > 1.0, f"{filename}: only {gain:.2f} dB over bicubic"


def test_create_model_by_name_accepts_the_ntire_key_set() -> None:
    model = slimsr.create_model(
        "fmen_s", 4, weights=official_weight("fmen_s_x4_deploy_ntire2022.pth")
    )
    assert model.num_parameters() == 341_066


def test_bsrn_x2_weights_into_a_x4_model_raise_a_clear_error() -> None:
    with pytest.raises(CheckpointError) as err:
        slimsr.create_model("bsrn", 4, weights=official_weight("bsrn_x2.pth"))
    msg = str(err.value)
    assert "does not fit bsrn x4" in msg
    assert "0 missing, 0 unexpected, 2 mis-shaped keys" in msg
    assert "looks like bsrn x2" in msg
