"""Structural re-parameterisation: a train-time FMEN or SPAN becomes its plain-conv deploy form.

The deploy network computes exactly what the train-time network computes in eval mode (BN with
running statistics), up to float rounding. Two folds do it; the algebra, with `*` a 2-D
cross-correlation, `pad0` zero padding by one pixel and `d` the centre tap of a 3x3 kernel:

RRRB -> one 3x3 conv. With expand K0 (r*n x n, 1x1), fea K1 (r*n x r*n, 3x3), reduce K2
(n x r*n, 1x1) and biases b0, b1, b2, the train block computes

    e = K0 x + b0;   p = pad_b0(e);   f = K1 * p + b1 + e;   y = K2 f + b2 + x.

Padding `e` with its own bias b0 makes p = K0 pad0(x) + b0 everywhere, borders included.
`e` is the centre tap of p, so `K1 * p + e = K1' * p` with K1' = K1 + I*d (inner identity). Then

    f = (K1' K0) * pad0(x) + b1 + sum_{m,u,v} K1'[:, m, u, v] b0[m]
    y = (K2 K1' K0 + I*d) * pad0(x) + K2 (b1 + sum K1' b0) + b2,

where products of kernels contract the channel index, tap by tap: W[o,i,u,v] = sum_m A[o,m]
B[m,i,u,v]. The outer identity (+ x) is another centre tap. That is one 3x3 conv with padding 1.

BatchNorm -> neighbouring conv. In eval mode BN(z) = s z + t with s = gamma / sqrt(var + eps) and
t = beta - mean * s (per channel; eps read from each BN module).
- BN before a conv W, b whose input the train graph pads with t (= BN(0)): that input is
  s pad0(z) + t, so W' = W s[None, :] and b' = b + sum_{i,u,v} W[:, i, u, v] t[i].
- BN after a conv: s (W z + b) + t, so W' = s[:, None] W and b' = s b + t.
HFAB folds bn1 into `squeeze`, then bn2 (before) and bn3 (after) into `excitate`.
Everything else (head, warm-up conv, lr_conv, tail) is copied. The folds run in float64 and the
results are cast back to the dtype of the train weights.

SPAN's Conv3XC -> its `eval_conv` (`slimsr.archs.span.fold_conv3xc`, where the algebra is written
down: the network itself folds in eval mode, as the official module does). The train branches
(`sk`, `conv.0..2`) are dropped and `eval_conv` is recomputed from them, never copied: a file's
stored `eval_conv` can be stale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from slimsr.archs.fmen import FMEN, TrainFMEN, rrrb_kernel
from slimsr.archs.span import CONV3XC_PARTS, SPAN, fold_conv3xc
from slimsr.errors import SlimsrError
from slimsr.registry import get_model_info

DEFAULT_BN_EPS = 1e-5


class NotReparameterizableError(SlimsrError, TypeError):
    """A network (or weights) that has no train-time form to fold, e.g. already deployed."""


# -- the folds, on tensors ---------------------------------------------------------------------


def fuse_rrrb(
    k0: Tensor, b0: Tensor, k1: Tensor, b1: Tensor, k2: Tensor, b2: Tensor
) -> tuple[Tensor, Tensor]:
    """One 3x3 kernel and bias equal to expand(1x1) -> fea(3x3)+skip -> reduce(1x1) -> +x,
    folded in float64 and returned in the weights' dtype."""
    dtype = k0.dtype
    weight, bias = rrrb_kernel(*(t.detach().double() for t in (k0, b0, k1, b1, k2, b2)))
    return weight.to(dtype), bias.to(dtype)


def _bn_affine(sd: Mapping[str, Tensor], prefix: str, eps: float) -> tuple[Tensor, Tensor]:
    """(s, t) with BN(z) = s z + t in eval mode."""
    gamma, beta = sd[prefix + "weight"].double(), sd[prefix + "bias"].double()
    mean, var = sd[prefix + "running_mean"].double(), sd[prefix + "running_var"].double()
    s = gamma / torch.sqrt(var + eps)
    return s, beta - mean * s


def fold_bn_before(weight: Tensor, bias: Tensor, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """conv(pad_t(s z + t)) as one conv on pad0(z) (float64 in, float64 out)."""
    return weight * s.view(1, -1, 1, 1), bias + weight.sum(dim=(2, 3)) @ t


def fold_bn_after(weight: Tensor, bias: Tensor, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """s * conv(z) + t as one conv (float64 in, float64 out)."""
    return weight * s.view(-1, 1, 1, 1), bias * s + t


# -- state dicts -------------------------------------------------------------------------------

_RRRB_PARTS = ("expand_conv", "fea_conv", "reduce_conv")
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def deploy_state_dict(
    train_state_dict: Mapping[str, Tensor], bn_eps: float | Mapping[str, float] = DEFAULT_BN_EPS
) -> dict[str, Tensor]:
    """The deploy state dict of a train-time one: FMEN (`TRAIN_FMEN` -> `TEST_FMEN`) or SPAN
    (Conv3XC branches + `eval_conv` -> `eval_conv`).

    `bn_eps` is one eps for every BN, or a mapping from BN module name (e.g. `HFABs.0.bn1`) to
    its eps; a state dict does not record eps, `reparameterize` reads it from the modules.
    """
    sd = train_state_dict
    if not any(k.endswith((".expand_conv.weight", ".sk.weight")) or ".bn1." in k for k in sd):
        raise NotReparameterizableError(
            "these weights have no RRRB, BatchNorm or Conv3XC keys: "
            "not a train-time FMEN or SPAN state dict"
        )

    def eps(bn: str) -> float:
        if isinstance(bn_eps, Mapping):
            return float(bn_eps.get(bn, DEFAULT_BN_EPS))
        return float(bn_eps)

    def conv(prefix: str) -> tuple[Tensor, Tensor]:
        return sd[prefix + "weight"].detach().double(), sd[prefix + "bias"].detach().double()

    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for key in sd:
        if key in used:
            continue
        if key.endswith(".expand_conv.weight"):
            block = key[: -len("expand_conv.weight")]
            parts = [sd[f"{block}{p}.{f}"] for p in _RRRB_PARTS for f in ("weight", "bias")]
            w, b = fuse_rrrb(*parts)
            out[block + "rep_conv.weight"], out[block + "rep_conv.bias"] = w, b
            used.update(f"{block}{p}.{f}" for p in _RRRB_PARTS for f in ("weight", "bias"))
        elif key.endswith(".sk.weight") and key[: -len("sk.weight")] + "eval_conv.weight" in sd:
            conv3xc = key[: -len("sk.weight")]
            dtype = sd[key].dtype
            w, b = fold_conv3xc(*(sd[conv3xc + p].detach().double() for p in CONV3XC_PARTS))
            out[conv3xc + "eval_conv.weight"] = w.to(dtype)
            out[conv3xc + "eval_conv.bias"] = b.to(dtype)
            used.update(conv3xc + p for p in CONV3XC_PARTS)
            used.update({conv3xc + "eval_conv.weight", conv3xc + "eval_conv.bias"})
        elif key.endswith(".squeeze.weight") and key[: -len("squeeze.weight")] + "bn1.weight" in sd:
            hfab = key[: -len("squeeze.weight")]
            w, b = fold_bn_before(
                *conv(hfab + "squeeze."), *_bn_affine(sd, hfab + "bn1.", eps(hfab + "bn1"))
            )
            _put(out, used, sd, hfab + "squeeze.", w, b, [hfab + "bn1."])
        elif (
            key.endswith(".excitate.weight") and key[: -len("excitate.weight")] + "bn2.weight" in sd
        ):
            hfab = key[: -len("excitate.weight")]
            w, b = fold_bn_before(
                *conv(hfab + "excitate."), *_bn_affine(sd, hfab + "bn2.", eps(hfab + "bn2"))
            )
            w, b = fold_bn_after(w, b, *_bn_affine(sd, hfab + "bn3.", eps(hfab + "bn3")))
            _put(out, used, sd, hfab + "excitate.", w, b, [hfab + "bn2.", hfab + "bn3."])
    for key, value in sd.items():
        if key not in used:
            out[key] = value
    return out


def _put(
    out: dict[str, Tensor],
    used: set[str],
    sd: Mapping[str, Tensor],
    conv: str,
    weight: Tensor,
    bias: Tensor,
    bns: list[str],
) -> None:
    """Store a folded conv in the train weights' dtype; mark it and its BNs as consumed."""
    dtype = sd[conv + "weight"].dtype
    out[conv + "weight"], out[conv + "bias"] = weight.to(dtype), bias.to(dtype)
    used.update({conv + "weight", conv + "bias"})
    used.update(bn + f for bn in bns for f in _BN_FIELDS)


# -- networks ----------------------------------------------------------------------------------


def _bn_eps(net: nn.Module) -> dict[str, float]:
    return {name: m.eps for name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)}


def _fill(deploy: nn.Module, train_net: nn.Module) -> nn.Module:
    ref = next(train_net.parameters())
    deploy = deploy.to(device=ref.device, dtype=ref.dtype)
    deploy.load_state_dict(deploy_state_dict(train_net.state_dict(), _bn_eps(train_net)))
    return deploy.eval()


def is_train_form(net: nn.Module) -> bool:
    """A network with re-parameterisable blocks to fold: `TrainFMEN`, or a train-form `SPAN`."""
    return isinstance(net, TrainFMEN) or (isinstance(net, SPAN) and not net.deploy)


def reparameterize(train_net: nn.Module, deploy_form: str | None = None) -> nn.Module:
    """The deploy network of a train-time FMEN or SPAN, same hyper-parameters, weights folded.

    The result equals `train_net` in eval mode (running BN statistics); `train_net` is left
    untouched. `deploy_form` names the registered deploy variant to build (the train variant's
    `ModelInfo.deploy_form`); without it the deploy class is built from the net's hyper-parameters.
    """
    if not is_train_form(train_net):
        raise NotReparameterizableError(
            f"reparameterize needs a train-time FMEN or SPAN (e.g. fmen_s_train, span_train), "
            f"got {type(train_net).__name__}; deploy-form networks are already re-parameterised"
        )
    hparams = dict(train_net.hparams)
    scale = hparams.pop("scale")
    if deploy_form is None:
        deploy: nn.Module = (
            SPAN(scale, **hparams, deploy=True)
            if isinstance(train_net, SPAN)
            else FMEN(scale, **hparams)
        )
    else:
        deploy = get_model_info(deploy_form).build(scale, **hparams)
    return _fill(deploy, train_net)


def reparameterize_model(model: Any) -> Any:
    """Re-parameterise a raw train-time net, or an `SRModel` around one (returns an `SRModel`).

    For an `SRModel` the deploy variant comes from the registry (`info.deploy_form`) and keeps
    the model's scale and kwargs, so sidecars and detection name it correctly.
    """
    if not all(hasattr(model, a) for a in ("net", "info", "scale", "kwargs")):
        return reparameterize(model)
    from slimsr.model import SRModel

    info = model.info
    if info.deploy_form is None:
        raise NotReparameterizableError(
            f"{info.name} has no train-time form to fold (it is already a deploy network)"
        )
    if not is_train_form(model.net):
        raise NotReparameterizableError(f"{info.name}: its network is not a train-time form")
    deploy_info = get_model_info(info.deploy_form)
    deploy = _fill(deploy_info.build(model.scale, **model.kwargs), model.net)
    return SRModel(deploy, deploy_info, model.scale, dict(model.kwargs))
