"""RLAR penalty, PCGrad and uncertainty weighting against hand computations on toy networks."""
import math

import pytest
import torch
from torch import nn

from ssmt_lib.rlar import UncertaintyWeighting, check_rlar, pcgrad, pcgrad_backward, rlar_penalty, task_cosine


def toy():
    """z = W x (shared, 2-d), task a: (a . z - y)^2, task b: (b . z)^2 -> grads 2 r_a a and 2 r_b b."""
    torch.manual_seed(0)
    x = torch.randn(3, 2)
    w = nn.Parameter(torch.tensor([[1.0, 0.5], [-0.3, 2.0]]))
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])
    z = x @ w.T  # (B, 2)
    la = (z @ a - 1.0) ** 2  # (B,)
    lb = (z @ b) ** 2
    return x, w, a, b, z, la, lb


def test_cosine_and_penalty_value_by_hand():
    x, w, a, b, z, la, lb = toy()
    cos = task_cosine(z, la, lb)
    # d la / dz = 2 (a.z - 1) a, d lb / dz = 2 (b.z) b: the cosine is sign(r_a r_b) * cos(a, b)
    ra, rb = (z @ a - 1.0).detach(), (z @ b).detach()
    cab = float(a @ b / (a.norm() * b.norm()))
    assert torch.allclose(cos, torch.sign(ra * rb) * cab, atol=1e-6)
    lam, tau = 0.7, -0.2
    pen, shown = rlar_penalty(z, la, lb, lam, tau)
    hand = lam * torch.relu(torch.sign(ra * rb) * cab - tau).pow(2).mean()
    assert math.isclose(pen.item(), hand.item(), rel_tol=1e-6)
    assert torch.allclose(shown, cos.detach())


def test_penalty_gradient_matches_finite_differences():
    """A toy where the cosine depends on w: z -> tanh(z) before task b, so directions move with w."""
    torch.manual_seed(1)
    x = torch.randn(4, 3, dtype=torch.float64)
    w0 = torch.randn(2, 3, dtype=torch.float64)
    a, b = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([0.5, -1.0], dtype=torch.float64)

    def penalty(w):
        z = x @ w.T  # (B, 2)
        la = (torch.tanh(z) @ a - 0.3) ** 2
        lb = (torch.sin(z) @ b) ** 2
        return rlar_penalty(z, la, lb, lam=2.0, tau=-1.0)[0]  # tau=-1: every sample counts

    w = w0.clone().requires_grad_(True)
    grad, = torch.autograd.grad(penalty(w), w)  # through create_graph=True: second order
    num = torch.zeros_like(w0)
    h = 1e-6
    for i in range(2):
        for j in range(3):
            e = torch.zeros_like(w0)
            e[i, j] = h
            num[i, j] = (penalty((w0 + e).requires_grad_()) - penalty((w0 - e).requires_grad_())).detach() / (2 * h)
    assert grad.abs().max() > 1e-3  # not trivially zero
    assert torch.allclose(grad, num, atol=1e-6)


def test_penalty_off_masks_and_threshold():
    x, w, a, b, z, la, lb = toy()
    pen, cos = rlar_penalty(z, la, lb, 0.0, 0.0)
    assert pen.item() == 0.0 and torch.isfinite(cos).all()
    pen, _ = rlar_penalty(z, la, lb, 1.0, 1.0)  # tau = 1: nothing is penalised
    assert pen.item() == 0.0
    valid = torch.tensor([True, False, True])
    pen, cos = rlar_penalty(z, la, lb, 1.0, -1.0, valid)
    full = task_cosine(z, la, lb).detach()
    assert math.isclose(pen.item(), float(((full[valid] + 1) ** 2).mean()), rel_tol=1e-6)
    assert torch.isnan(cos[1]) and not torch.isnan(cos[0])


@pytest.mark.parametrize("lam,tau,match", [(-0.1, 0.0, "rlar_lambda"), (1.0, 1.5, "rlar_tau"),
                                           (1.0, -1.01, "rlar_tau"), (float("nan"), 0.0, "rlar_lambda")])
def test_bad_configs(lam, tau, match):
    with pytest.raises(ValueError, match=match):
        check_rlar(lam, tau)
    x, w, a, b, z, la, lb = toy()
    with pytest.raises(ValueError, match=match):
        rlar_penalty(z, la, lb, lam, tau)


def test_pcgrad_by_hand_on_two_toy_losses():
    # L1 = (p1 - 1)^2 + p2^2 at p = (0, 1): g1 = (-2, 2); L2 = 3 p1 - p2: g2 = (3, -1); g1.g2 = -8 < 0
    p = nn.Parameter(torch.tensor([0.0, 1.0]))
    l1 = (p[0] - 1) ** 2 + p[1] ** 2
    l2 = 3 * p[0] - p[1]
    g1, g2 = torch.tensor([-2.0, 2.0]), torch.tensor([3.0, -1.0])
    p1 = g1 - (-8.0 / 10.0) * g2  # (0.4, 1.2)
    p2 = g2 - (-8.0 / 8.0) * g1  # (1, 1)
    expected = p1 + p2
    assert torch.allclose(pcgrad([g1, g2]), expected)
    cos = pcgrad_backward([l1, l2], [p])
    assert torch.allclose(p.grad, expected)
    assert math.isclose(cos, -8.0 / (math.sqrt(8) * math.sqrt(10)), rel_tol=1e-6)
    # no conflict: the plain sum
    assert torch.allclose(pcgrad([g1, -g2 * 0 + torch.tensor([1.0, 1.0])]), g1 + torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match=">= 2"):
        pcgrad([g1])


def test_pcgrad_backward_leaves_task_heads_plain():
    shared = nn.Parameter(torch.tensor([1.0]))
    head = nn.Parameter(torch.tensor([2.0]))
    l1, l2 = (shared * head).sum(), (-shared).sum()
    pcgrad_backward([l1, l2], [shared])
    assert torch.allclose(head.grad, torch.tensor([1.0]))  # d l1 / d head = shared


def test_uncertainty_weighting():
    uw = UncertaintyWeighting(2)
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.5, -1.0]))
    out = uw([torch.tensor(2.0), torch.tensor(3.0)])
    assert math.isclose(out.item(), math.exp(-0.5) * 2 + 0.5 + math.exp(1.0) * 3 - 1.0, rel_tol=1e-6)
    with pytest.raises(ValueError, match="2 tasks"):
        uw([torch.tensor(1.0)])
