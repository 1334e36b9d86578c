"""OBProx-SG: exact zeros where the l1 solution has them, no sign flips, resumable phases."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from slimsr.train import load_config
from slimsr.train.config import ConfigError
from slimsr.train.optim import OBProxSG, build_optimizer
from tests.train_utils import tiny_recipe

LAM = 0.1


pytestmark = pytest.mark.usefixtures("one_thread")


def lasso_problem(n: int = 200, d: int = 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """min 1/(2n)||Ax - b||^2 + LAM ||x||_1 with A^T A = n I, so the solution is known exactly:
    the soft-threshold of x_true by LAM (zero wherever |x_true| <= LAM)."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(n, d, dtype=torch.float64, generator=gen))
    a = q * math.sqrt(n)
    x_true = torch.zeros(d, dtype=torch.float64)
    x_true[:6] = torch.tensor([2.0, -1.5, 1.0, -0.8, 0.5, 0.05])  # the last is below LAM
    x_star = torch.sign(x_true) * (x_true.abs() - LAM).clamp(min=0)
    return a, a @ x_true, x_star


def objective(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> float:
    return float(0.5 / a.shape[0] * (a @ x - b).square().sum() + LAM * x.abs().sum())


def solve(prox_steps: int, iters: int = 1500, lr: float = 0.05) -> torch.Tensor:
    """Mini-batch training from a dense start, the step size decaying linearly to 0."""
    a, b, _ = lasso_problem()
    x = torch.nn.Parameter(torch.randn(a.shape[1], dtype=torch.float64) * 0.5)
    opt = OBProxSG([x], lr=lr, lambda_l1=LAM, prox_steps=prox_steps)
    gen = torch.Generator().manual_seed(1)
    for t in range(iters):
        rows = torch.randint(0, a.shape[0], (10,), generator=gen)
        loss = 0.5 * (a[rows] @ x - b[rows]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.param_groups[0]["lr"] = lr * (1 - t / iters)
        opt.step()
    return x.detach()


def test_reaches_the_known_sparse_solution_and_beats_prox_sgd() -> None:
    a, b, x_star = lasso_problem()
    torch.manual_seed(2)
    x_ob = solve(prox_steps=300)
    torch.manual_seed(2)
    x_prox = solve(prox_steps=10**9)  # never an orthant step: plain proximal SGD
    # zeros exactly where the solution is zero, and only there
    assert torch.equal(x_ob == 0, x_star == 0), (x_ob, x_star)
    assert torch.allclose(x_ob, x_star, atol=0.05)
    assert objective(a, b, x_ob) <= objective(a, b, x_prox) + 1e-9
    # plain proximal SGD leaves some of the zeros non-zero (what the orthant step fixes)
    assert int((x_prox != 0).sum()) > int((x_star != 0).sum())


def test_orthant_step_never_flips_a_sign() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.nn.Parameter(torch.randn(4000, generator=gen))
    with torch.no_grad():
        x[::7] = 0.0
    opt = OBProxSG([x], lr=0.5, lambda_l1=0.3, prox_steps=0, eps=1e-3)  # orthant steps only
    flipped_to_zero = 0
    for _ in range(5):
        before = x.detach().clone()
        x.grad = torch.randn(4000, generator=gen) * 3.0  # large steps that would cross zero
        opt.step()
        after = x.detach()
        assert bool(((torch.sign(after) == torch.sign(before)) | (after == 0)).all())
        assert bool((after[before == 0] == 0).all())  # zeros stay zeros
        assert bool((after.abs()[after != 0] > 1e-3).all())  # eps: nothing left within eps
        flipped_to_zero += int(((before != 0) & (after == 0)).sum())
    assert flipped_to_zero > 100  # the projection did act


def test_prox_step_is_the_soft_threshold() -> None:
    x = torch.nn.Parameter(torch.tensor([1.0, -1.0, 0.02, -0.02, 0.0]))
    x.grad = torch.tensor([0.5, 0.5, 0.0, 0.0, 1.0])
    OBProxSG([x], lr=0.1, lambda_l1=0.5, prox_steps=5).step()
    z = torch.tensor([0.95, -1.05, 0.02, -0.02, -0.1])
    expected = torch.sign(z) * (z.abs() - 0.05).clamp(min=0)
    assert torch.equal(x.detach(), expected)
    assert int((x == 0).sum()) == 2  # exact zeros, not tiny values


def test_phases_follow_the_step_count_and_survive_state_dict() -> None:
    cyc = OBProxSG([torch.nn.Parameter(torch.ones(2))], lr=0.1, prox_steps=2, orthant_steps=3)
    assert [cyc.is_orthant_step(t) for t in range(7)] == [0, 0, 1, 1, 1, 0, 0]
    once = OBProxSG([torch.nn.Parameter(torch.ones(2))], lr=0.1, prox_steps=3)
    assert [once.is_orthant_step(t) for t in (0, 2, 3, 1000)] == [0, 0, 1, 1]
    p = torch.nn.Parameter(torch.ones(3))
    opt = OBProxSG([p], lr=0.1, prox_steps=2, orthant_steps=1)
    for _ in range(4):
        p.grad = torch.ones(3)
        opt.step()
    fresh = OBProxSG([p], lr=0.1, prox_steps=2, orthant_steps=1)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.param_groups[0]["step"] == 4 and not fresh.is_orthant_step(4)


def test_recipes_select_obproxsg(tmp_path: Path) -> None:
    opt = {"type": "obproxsg", "lambda_l1": 1e-3, "prox_steps": 4, "orthant_steps": 2}
    cfg = load_config(tiny_recipe(tmp_path, train__optimizer=opt))
    built = build_optimizer([torch.nn.Parameter(torch.ones(1))], cfg.train.optimizer, 0.01)
    assert isinstance(built, OBProxSG)
    assert (built.prox_steps, built.orthant_steps) == (4, 2)
    assert built.param_groups[0]["lambda_l1"] == 1e-3
    with pytest.raises(ConfigError, match="prox_steps"):
        load_config(tiny_recipe(tmp_path, train__optimizer={"type": "obproxsg"}))
