"""Re-parameterisation: the deploy FMEN equals the train-time FMEN (eval mode) numerically."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimsr.archs.fmen import FMEN, RRRB, detect_fmen
from slimsr.model import SRModel
from slimsr.registry import build_network, get_model_info
from slimsr.reparam import (
    NotReparameterizableError,
    deploy_state_dict,
    fuse_rrrb,
    reparameterize,
    reparameterize_model,
)


def _randomise(net: nn.Module, eps: float | None = None, small_var: bool = False) -> nn.Module:
    """Non-trivial BN statistics and affine parameters (and non-zero conv biases), eval mode."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 3.0)
                if small_var:
                    m.running_var.uniform_(0.01, 0.1)
                else:
                    m.running_var.uniform_(0.25, 4.0)
                m.weight.uniform_(0.5, 2.0).mul_(torch.randint(0, 2, m.weight.shape) * 2 - 1)
                m.bias.normal_(0.0, 1.0)
                if eps is not None:
                    m.eps = eps
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def _x(shape: tuple[int, ...] = (1, 3, 24, 20)) -> torch.Tensor:
    return torch.rand(*shape) * 255.0


def _assert_close(train_out: torch.Tensor, deploy_out: torch.Tensor) -> float:
    span = float(train_out.max() - train_out.min())
    diff = float((train_out - deploy_out).abs().max())
    assert span > 1.0  # a degenerate (constant) output would prove nothing
    assert diff <= 1e-4 * span, (diff, span)
    return diff


@pytest.mark.parametrize(
    ("name", "scale"),
    [("fmen_s_train", 2), ("fmen_s_train", 3), ("fmen_s_train", 4), ("fmen_train", 3)],
)
def test_deploy_equals_train(name: str, scale: int) -> None:
    train = _randomise(build_network(name, scale))
    deploy = reparameterize(train)
    assert isinstance(deploy, FMEN)
    info = get_model_info(name)
    assert set(deploy.state_dict()) == set(build_network(info.deploy_form, scale).state_dict())
    x = _x()
    with torch.no_grad():
        _assert_close(train(x), deploy(x))


def test_bn_eps_is_read_from_the_modules() -> None:
    """With eps far from 1e-5 and small variances, a hard-coded eps would be visibly wrong."""
    train = _randomise(build_network("fmen_s_train", 2), eps=0.05, small_var=True)
    x = _x()
    with torch.no_grad():
        expected = train(x)
        _assert_close(expected, reparameterize(train)(x))
        wrong = build_network("fmen_s", 2).eval()
        wrong.load_state_dict(deploy_state_dict(train.state_dict(), bn_eps=1e-5))
        assert float((wrong(x) - expected).abs().max()) > 1e-2 * float(
            expected.max() - expected.min()
        )


def test_non_default_config_and_registry_deploy_form() -> None:
    kwargs: dict[str, Any] = {
        "n_feats": 20,
        "mid_feats": 10,
        "down_blocks": 3,
        "up_blocks": [0, 2, 1, 1],
        "backbone_expand_ratio": 3,
        "attention_expand_ratio": 1,
    }
    train = _randomise(build_network("fmen_s_train", 3, **kwargs))
    deploy = reparameterize(train, deploy_form="fmen_s")
    x = _x((2, 3, 13, 17))
    with torch.no_grad():
        _assert_close(train(x), deploy(x))
    found = detect_fmen(deploy.state_dict())
    assert found is not None and found.name == "fmen_s" and found.scale == 3
    assert found.kwargs == {
        k: kwargs[k] for k in ("n_feats", "mid_feats", "down_blocks", "up_blocks")
    }


def test_float64_is_exact_to_rounding() -> None:
    """In float64 the folds are exact: a residual of ~1e-12 leaves no room for a wrong term."""
    train = _randomise(build_network("fmen_s_train", 2, n_feats=16, mid_feats=8)).double()
    deploy = reparameterize(train)
    assert next(deploy.parameters()).dtype == torch.float64
    x = _x((1, 3, 11, 9)).double()
    with torch.no_grad():
        assert float((train(x) - deploy(x)).abs().max()) < 1e-9


def test_fuse_rrrb_alone_including_borders() -> None:
    block = RRRB(6, ratio=2).double()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_()
    w, b = fuse_rrrb(
        block.expand_conv.weight,
        block.expand_conv.bias,
        block.fea_conv.weight,
        block.fea_conv.bias,
        block.reduce_conv.weight,
        block.reduce_conv.bias,
    )
    assert w.shape == (6, 6, 3, 3) and b.shape == (6,)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(block(x), F.conv2d(x, w, b, padding=1), atol=1e-10)


def test_train_net_is_left_untouched() -> None:
    train = _randomise(build_network("fmen_s_train", 2, n_feats=16, mid_feats=8))
    before = {k: v.clone() for k, v in train.state_dict().items()}
    reparameterize(train)
    assert all(torch.equal(v, before[k]) for k, v in train.state_dict().items())


def test_reparameterize_model_on_srmodel() -> None:
    train = _randomise(build_network("fmen_s_train", 3, up_blocks=[1, 1, 1, 1, 2]))
    kwargs = {"up_blocks": [1, 1, 1, 1, 2]}
    model = SRModel(train, get_model_info("fmen_s_train"), 3, kwargs)
    deployed = reparameterize_model(model)
    assert isinstance(deployed, SRModel)
    assert (deployed.name, deployed.scale, deployed.kwargs) == ("fmen_s", 3, kwargs)
    assert deployed.info.deploy_form is None
    x = torch.rand(1, 3, 10, 12)  # SRModel convention: [0,1]
    with torch.no_grad():
        _assert_close(model(x), deployed(x))
    assert isinstance(reparameterize_model(train), FMEN)  # a raw net is accepted too


def test_train_mode_forward_then_reparameterize() -> None:
    """Training updates BN statistics; the fold then uses them (deploy == train in eval mode)."""
    train = build_network("fmen_s_train", 2, n_feats=16, mid_feats=8).train()
    train(_x((2, 3, 12, 12))).mean().backward()
    train.eval()
    x = _x((1, 3, 9, 11))
    with torch.no_grad():
        _assert_close(train(x), reparameterize(train)(x))


def test_refuses_networks_without_a_train_form() -> None:
    deploy = build_network("fmen_s", 2)
    with pytest.raises(NotReparameterizableError, match="train-time FMEN"):
        reparameterize(deploy)
    with pytest.raises(NotReparameterizableError):
        reparameterize(nn.Conv2d(3, 3, 3))
    with pytest.raises(NotReparameterizableError, match="already a deploy"):
        reparameterize_model(SRModel(deploy, get_model_info("fmen_s"), 2))
    with pytest.raises(NotReparameterizableError, match="not a train-time FMEN or SPAN state dict"):
        deploy_state_dict(deploy.state_dict())
