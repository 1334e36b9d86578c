"""Optimisers by name (the recipe's `train.optimizer`), including OBProx-SG for pruning."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from slimsr.errors import SlimsrError
from slimsr.train.config import (
    AdamaxConfig,
    AdamConfig,
    AdamWConfig,
    OBProxSGConfig,
    OptimizerConfig,
)

_CLASSES: dict[type, type[torch.optim.Optimizer]] = {
    AdamConfig: torch.optim.Adam,
    AdamWConfig: torch.optim.AdamW,
    AdamaxConfig: torch.optim.Adamax,
}


class OBProxSG(torch.optim.Optimizer):
    """Orthant-based proximal stochastic gradient for min f(x) + lambda * ||x||_1.

    Chen et al., "Orthant Based Proximal Stochastic Gradient Method for l1-Regularized
    Optimization", ECML-PKDD 2020. Steps alternate in cycles: `prox_steps` proximal-SG steps,
    then `orthant_steps` orthant steps (None: orthant steps for the rest of the run).

    - Proximal-SG step: z = x - lr * grad f; x = sign(z) * max(|z| - lr * lambda, 0). The
      soft-threshold sets small entries to exactly zero: it predicts the support.
    - Orthant step: with zeta = sign(x) (the orthant x lies in), take a gradient step on the
      smooth function f + lambda * zeta^T x, which equals the objective inside that orthant, and
      project back onto it: entries that would cross zero (or end within `eps` of it) become 0,
      entries already 0 stay 0. No sign ever flips, and the zero set only grows, which is what
      makes the method far sparser than proximal SG alone.

    The step count lives in each parameter group (`group["step"]`), so the phase is restored by
    `load_state_dict` and a resumed run continues the same schedule. Plain SGD, no momentum, as
    in the paper; the learning rate is read from the group every step (schedules set it).
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
        lr: float,
        lambda_l1: float = 1e-4,
        prox_steps: int = 0,
        orthant_steps: int | None = None,
        eps: float = 0.0,
    ) -> None:
        if lr <= 0 or lambda_l1 < 0 or prox_steps < 0 or eps < 0:
            raise ValueError("OBProx-SG needs lr > 0 and lambda_l1, prox_steps, eps >= 0")
        if orthant_steps is not None and orthant_steps <= 0:
            raise ValueError("orthant_steps must be positive (or None: no more proximal steps)")
        defaults = {"lr": lr, "lambda_l1": lambda_l1, "eps": eps, "step": 0}
        super().__init__(params, defaults)
        self.prox_steps = int(prox_steps)
        self.orthant_steps = orthant_steps

    def is_orthant_step(self, step: int) -> bool:
        """Whether step number `step` (0-based) is an orthant step."""
        if self.orthant_steps is None:
            return step >= self.prox_steps
        return step % (self.prox_steps + self.orthant_steps) >= self.prox_steps

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, lam, eps = group["lr"], group["lambda_l1"], group["eps"]
            orthant = self.is_orthant_step(int(group["step"]))
            for p in group["params"]:
                if p.grad is None:
                    continue
                if orthant:
                    _orthant_step(p, p.grad, lr, lam, eps)
                else:
                    _prox_step(p, p.grad, lr, lam)
            group["step"] = int(group["step"]) + 1
        return loss


def _prox_step(p: torch.Tensor, grad: torch.Tensor, lr: float, lam: float) -> None:
    z = p - lr * grad
    p.copy_(torch.sign(z) * torch.clamp(z.abs() - lr * lam, min=0.0))


def _orthant_step(p: torch.Tensor, grad: torch.Tensor, lr: float, lam: float, eps: float) -> None:
    zeta = torch.sign(p)  # 0 for entries already 0: their step is 0 and they stay 0
    z = p - lr * (grad + lam * zeta)
    p.copy_(torch.where(z * zeta > eps, z, torch.zeros_like(z)))


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters that learn (EDSR's frozen mean shift is left out), in module order."""
    return [p for p in module.parameters() if p.requires_grad]


def has_own_step(cfg: OptimizerConfig) -> bool:
    """Optimisers implemented here (no foreach / fused choice to make)."""
    return isinstance(cfg, OBProxSGConfig)


def build_optimizer(
    params: Iterable[nn.Parameter],
    cfg: OptimizerConfig,
    lr: float,
    impl: dict[str, bool] | None = None,
) -> torch.optim.Optimizer:
    """`impl`: torch's implementation switches (`foreach` / `fused`, slimsr.train.fastpath)."""
    if isinstance(cfg, OBProxSGConfig):
        return OBProxSG(
            list(params),
            lr=lr,
            lambda_l1=cfg.lambda_l1,
            prox_steps=cfg.prox_steps,
            orthant_steps=cfg.orthant_steps,
            eps=cfg.eps,
        )
    cls = _CLASSES[type(cfg)]
    try:
        return cls(
            list(params),
            lr=lr,
            betas=tuple(cfg.betas),
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            **(impl or {}),
        )
    except (RuntimeError, TypeError, ValueError) as exc:  # e.g. no fused form of this optimiser
        raise SlimsrError(
            f"train.fast_path.optimizer_impl: {cfg.type} cannot run as {impl} "
            f"({str(exc).splitlines()[0]})"
        ) from None
