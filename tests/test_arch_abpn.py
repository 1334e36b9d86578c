"""ABPN: Keras import (HWIO kernels, DCR depth_to_space) against a direct NumPy Keras graph."""

from __future__ import annotations

import itertools

import numpy as np
import torch

import slimsr
from slimsr.archs.abpn import dcr_to_crd, state_dict_from_keras
from tests.conftest import official_weight


def keras_abpn_numpy(arrays: dict[str, np.ndarray], img: np.ndarray, scale: int) -> np.ndarray:
    """The official Keras graph evaluated literally: NHWC 'same' convs, concat anchor, DCR, clip."""
    n = len(arrays) // 2
    x = img.astype(np.float64)
    h, w, _ = x.shape
    for k in range(n):
        kernel = arrays[f"layer_with_weights-{k}_kernel"].astype(np.float64)  # (3, 3, in, out)
        bias = arrays[f"layer_with_weights-{k}_bias"].astype(np.float64)
        padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
        out = np.zeros((h, w, kernel.shape[-1])) + bias
        for dy in range(3):
            for dx in range(3):
                out += padded[dy : dy + h, dx : dx + w, :] @ kernel[dy, dx]
        x = np.maximum(out, 0) if k < n - 1 else out
    x = x + np.concatenate([img.astype(np.float64)] * scale * scale, axis=-1)
    c = x.shape[-1] // (scale * scale)
    x = x.reshape(h, w, scale, scale, c).transpose(0, 2, 1, 3, 4).reshape(h * scale, w * scale, c)
    return np.clip(x, 0, 255)


def random_keras_arrays(scale: int, feat: int = 8, rng=None) -> dict[str, np.ndarray]:
    rng = rng or np.random.default_rng(0)
    chans = [3, feat, feat, 3 * scale * scale, 3 * scale * scale]
    return {
        **{
            f"layer_with_weights-{k}_kernel": rng.normal(0, 0.2, (3, 3, a, b)).astype(np.float32)
            for k, (a, b) in enumerate(itertools.pairwise(chans))
        },
        **{
            f"layer_with_weights-{k}_bias": rng.normal(0, 1.0, (b,)).astype(np.float32)
            for k, b in enumerate(chans[1:])
        },
    }


def test_dcr_to_crd_is_a_permutation_matching_tf_order() -> None:
    perm = dcr_to_crd(3, 3)
    assert sorted(perm.tolist()) == list(range(27))
    # colour 1, offset (i=2, j=0): CRD index 1*9 + 6 = 15, DCR index (2*3+0)*3 + 1 = 19
    assert perm[15].item() == 19


def test_random_keras_weights_match_numpy_graph_at_every_scale() -> None:
    rng = np.random.default_rng(1)
    for scale in (2, 3, 4):
        arrays = random_keras_arrays(scale, rng=rng)
        img = rng.uniform(0, 255, (9, 11, 3)).astype(np.float32)
        ref = keras_abpn_numpy(arrays, img, scale)
        sd, detected_scale, feat = state_dict_from_keras(
            {k: torch.from_numpy(v) for k, v in arrays.items()}
        )
        assert detected_scale == scale and feat == 8
        net = slimsr.build_network("abpn", scale, num_feat=8, num_mid=1)
        net.load_state_dict(sd, strict=True)
        with torch.no_grad():
            out = net(torch.from_numpy(img).permute(2, 0, 1)[None]).squeeze(0).permute(1, 2, 0)
        np.testing.assert_allclose(out.double().numpy(), ref, atol=1e-3)


def test_official_keras_npz_matches_numpy_graph() -> None:
    path = official_weight("abpn_x3_float_keras.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    model = slimsr.load(path)
    assert (model.name, model.scale, model.num_parameters()) == ("abpn", 3, 42_539)
    img = np.random.default_rng(2).uniform(0, 255, (14, 10, 3)).astype(np.float32)
    ref = keras_abpn_numpy(arrays, img, 3)
    with torch.no_grad():
        out = model.net(torch.from_numpy(img).permute(2, 0, 1)[None]).squeeze(0).permute(1, 2, 0)
    diff = np.abs(out.double().numpy() - ref).max()
    assert diff <= 1e-3, diff


def test_output_is_clipped_and_anchor_makes_zero_net_a_nearest_upscale() -> None:
    net = slimsr.build_network("abpn", 2)
    for p in net.parameters():
        torch.nn.init.zeros_(p)
    x = torch.rand(1, 3, 5, 6) * 255
    y = net(x)
    nearest = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    torch.testing.assert_close(y, nearest)
    net.convs[-1].bias.data.fill_(1000.0)
    assert net(x).max().item() == 255.0
