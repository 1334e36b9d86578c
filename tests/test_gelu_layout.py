"""`slimsr.archs.blocks.gelu`: exact GELU through a channels-last map's dense view: what
`F.gelu` gives (to the rounding of ATen's vectorised erf), in the input's layout, forward, in
place and backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slimsr.archs.blocks import GELU, channels_last_view, gelu
from slimsr.fused.kernels import Act


def maps() -> list[torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 7) * 4
    return [x, x.contiguous(memory_format=torch.channels_last), x[:, :, 1:, 2:]]


def exact_gelu(x: torch.Tensor) -> torch.Tensor:
    """x * Phi(x) in float64: the reference both ATen kernels approximate."""
    d = x.double()
    return (d * 0.5 * (1 + torch.erf(d / 2**0.5))).float()


@pytest.mark.parametrize("index", [0, 1, 2], ids=["contiguous", "channels_last", "strided"])
def test_gelu_equals_f_gelu_and_keeps_the_layout(index: int) -> None:
    x = maps()[index]
    y = gelu(x)
    ref = exact_gelu(x)
    assert torch.allclose(y, ref, rtol=0, atol=1e-6)
    assert torch.allclose(y, F.gelu(x), rtol=0, atol=1e-6)
    if index != 1:  # nothing to view differently: ATen's own call, bit for bit
        assert torch.equal(y, F.gelu(x))
    assert y.stride() == F.gelu(x).stride()  # the layout F.gelu gives (channels-last stays so)
    # in place (a clone: a strided map's clone is dense, so the reference is too)
    z = x.clone()
    expected = gelu(x.clone())
    assert gelu(z, inplace=True) is z and torch.equal(z, expected)
    z = x.clone()
    assert Act("gelu")(z) is z and torch.equal(z, expected)  # the fused forms' in-place GELU
    assert torch.equal(GELU()(x), y)


def test_a_channels_last_map_takes_the_vectorised_kernel() -> None:
    """The same values as the contiguous map's GELU, element for element: the kernel that
    ran is the one a dense tensor gets (ATen's channels-last path rounds differently)."""
    plain, nhwc, _ = maps()
    dense = F.gelu(plain.permute(0, 2, 3, 1).contiguous())  # the NHWC memory, as ATen sees it
    assert torch.equal(gelu(nhwc).permute(0, 2, 3, 1), dense)


def test_the_dense_view_is_used_exactly_for_channels_last_maps() -> None:
    plain, nhwc, strided = maps()
    assert channels_last_view(plain) is None and channels_last_view(strided) is None
    view = channels_last_view(nhwc)
    assert view is not None and view.is_contiguous() and view.data_ptr() == nhwc.data_ptr()
    assert channels_last_view(torch.zeros(1, 1, 4, 4)) is None  # both layouts at once


def test_gelu_gradients_equal_f_gelu() -> None:
    x = maps()[1].requires_grad_()
    g = torch.randn_like(x)
    (a,) = torch.autograd.grad(gelu(x), x, g)
    (b,) = torch.autograd.grad(F.gelu(x), x, g)
    assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(g.abs().max()))
    assert a.is_contiguous(memory_format=torch.channels_last)
