"""Balancing two tasks on one shared representation: RLAR, PCGrad and uncertainty weighting.

**RLAR** (Liu et al., *Representation-Level Adversarial Regularization for Clinically Aligned
Multitask Thyroid Ultrasound Assessment*, arXiv 2603.21095). The abstract: RLAR "uses each task's
normalized adversarial direction in latent space as a geometric probe of task sensitivity and
penalizes excessive angular alignment between task-specific adversarial directions", instead of
parameter-level gradient surgery. Only the abstract is public; **the formula below is ours**:

    g_t(i) = d l_t(i) / d z(i)              per-sample gradient of task t's loss w.r.t. the shared latent
    d_t(i) = g_t(i) / ||g_t(i)||_2          its unit direction (the FGM adversarial direction)
    c(i)   = <d_seg(i), d_cls(i)>           cosine between the two tasks' directions
    R      = lambda * mean_i relu(c(i) - tau)^2

added to the loss; the gradients are built with ``create_graph=True`` so the optimiser sees
``dR/dtheta`` (a second-order backward). ``tau`` is the alignment tolerated for free (``tau = 1``
or ``lambda = 0`` switch RLAR off); only samples labelled for both tasks count. "Adversarial
direction" is read as the L2-normalised loss gradient (FGM, Miyato et al. 2017), not its sign.
Per-sample gradients come from one ``autograd.grad`` of the summed loss, exact when samples do
not interact after ``z``. In :class:`ssmt_lib.tirads_model.TiradsNet` the TI-RADS head has no batch
norm, but SSMT-Net's CNN decoder does: in training mode its batch statistics couple the samples, so
the segmentation direction carries small cross-sample terms (accepted here, ours; exact per-sample
gradients would need ``torch.func.vmap`` with the decoder's batch norm frozen).

**PCGrad** (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020, Alg. 1): each
task's gradient on the shared parameters loses its component along any other task's gradient it
conflicts with (negative dot product), in random task order; the projected gradients are summed.
A short implementation here rather than ``torchjd``'s aggregator: it is 15 lines, tested against a
hand computation, and it keeps each step visible in the notebook.

**Uncertainty weighting** (Kendall, Gal, Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
Losses for Scene Geometry and Semantics", CVPR 2018, eq. 7 with ``s = log sigma^2``):
``sum_t exp(-s_t) L_t + s_t`` with one learnt ``s_t`` per task (the common simplified form: the
1/2 factors of the regression case are dropped, as in most implementations; ours).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


def check_rlar(lam: float, tau: float) -> None:
    """Raise ``ValueError`` for ``lambda < 0`` or ``tau`` outside [-1, 1] (a cosine's range)."""
    if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not lam >= 0:
        raise ValueError(f"rlar_lambda must be a number >= 0 (0 = RLAR off), got {lam!r}")
    if not isinstance(tau, (int, float)) or isinstance(tau, bool) or not -1.0 <= tau <= 1.0:
        raise ValueError(f"rlar_tau must be in [-1, 1] (a cosine threshold), got {tau!r}")


def task_cosine(z: Tensor, loss_a: Tensor, loss_b: Tensor, create_graph: bool = True,
                eps: float = 1e-12) -> Tensor:
    """Per-sample cosine between the latent-space gradients of two per-sample losses.

    Args:
        z: shared latent (B, ...), part of the graph of both losses.
        loss_a, loss_b: per-sample losses (B,).
        create_graph: keep the graph of the gradients (needed to train through the cosine).
        eps: guards the norm of an all-zero gradient (its cosine is then 0).

    Returns:
        (B,) cosines in [-1, 1].
    """
    if loss_a.shape != (z.shape[0],) or loss_b.shape != (z.shape[0],):
        raise ValueError(f"task_cosine: per-sample losses must be ({z.shape[0]},), got {tuple(loss_a.shape)} "
                         f"and {tuple(loss_b.shape)}")
    g_a, = torch.autograd.grad(loss_a.sum(), z, create_graph=create_graph, retain_graph=True)
    g_b, = torch.autograd.grad(loss_b.sum(), z, create_graph=create_graph, retain_graph=True)
    g_a, g_b = g_a.flatten(1), g_b.flatten(1)  # (B, D)
    d_a = g_a / (g_a.norm(dim=1, keepdim=True) + eps)  # (B, D) unit directions
    d_b = g_b / (g_b.norm(dim=1, keepdim=True) + eps)
    return (d_a * d_b).sum(1)  # (B,)


def rlar_penalty(z: Tensor, loss_a: Tensor, loss_b: Tensor, lam: float, tau: float,
                 valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``lambda * mean(relu(cos - tau)^2)`` over the valid samples, and the cosines.

    Args:
        z: shared latent (B, ...).
        loss_a, loss_b: per-sample task losses (B,) (0 where a sample has no label for the task).
        lam: lambda >= 0; 0 returns a zero penalty (the cosines are still computed, detached).
        tau: tolerated alignment in [-1, 1].
        valid: (B,) bool, samples labelled for both tasks; None = all.

    Returns:
        (penalty scalar, cosines (B,) detached; NaN where not valid).
    """
    check_rlar(lam, tau)
    valid = torch.ones(z.shape[0], dtype=torch.bool, device=z.device) if valid is None else valid.bool()
    cos = task_cosine(z, loss_a, loss_b, create_graph=lam > 0)
    shown = torch.where(valid, cos.detach(), torch.full_like(cos.detach(), float("nan")))
    if lam == 0 or not valid.any():
        return z.new_zeros(()), shown
    return lam * torch.relu(cos[valid] - tau).pow(2).mean(), shown


def pcgrad(grads: Sequence[Tensor], generator: torch.Generator | None = None) -> Tensor:
    """PCGrad (Yu et al. 2020, Alg. 1) of flat task gradients: project out conflicts, then sum.

    Args:
        grads: one flat gradient (P,) per task, on the shared parameters.
        generator: order of the other tasks for each task (random in the paper); None = given order.

    Returns:
        (P,) the summed projected gradient.
    """
    if len(grads) < 2:
        raise ValueError(f"pcgrad needs >= 2 task gradients, got {len(grads)}")
    out = torch.zeros_like(grads[0])
    for i, g in enumerate(grads):
        g = g.clone()
        others = [j for j in range(len(grads)) if j != i]
        if generator is not None:
            others = [others[k] for k in torch.randperm(len(others), generator=generator).tolist()]
        for j in others:
            dot = torch.dot(g, grads[j])
            if dot < 0:  # conflict: remove the component along the other task's (original) gradient
                g = g - dot / grads[j].pow(2).sum().clamp_min(1e-20) * grads[j]
        out += g
    return out


def pcgrad_backward(losses: Sequence[Tensor], shared: Sequence[nn.Parameter],
                    generator: torch.Generator | None = None) -> float:
    """Fill ``.grad``: PCGrad on ``shared`` parameters, the plain sum on every other parameter.

    Args:
        losses: scalar task losses.
        shared: parameters every task reaches (the encoder); their grads are set, not added.
        generator: task order (see :func:`pcgrad`).

    Returns:
        the cosine between the first two tasks' shared-parameter gradients, before surgery (for logging).
    """
    shared = [p for p in shared if p.requires_grad]
    flat = []
    for loss in losses:
        gs = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        flat.append(torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(shared, gs)]))
    torch.stack(list(losses)).sum().backward()  # every parameter: the plain sum; shared ones replaced below
    merged = pcgrad(flat, generator)
    offset = 0
    for p in shared:
        n = p.numel()
        p.grad = merged[offset:offset + n].view_as(p).clone()  # (P_i,) -> p's shape
        offset += n
    cos = torch.dot(flat[0], flat[1]) / (flat[0].norm() * flat[1].norm()).clamp_min(1e-20)
    return float(cos)


class UncertaintyWeighting(nn.Module):
    """Kendall et al. (2018): ``sum_t exp(-s_t) L_t + s_t``, one learnt ``s_t = log sigma_t^2`` per task.

    Args:
        n_tasks: number of losses.
    """

    def __init__(self, n_tasks: int) -> None:
        super().__init__()
        if n_tasks < 1:
            raise ValueError(f"UncertaintyWeighting needs n_tasks >= 1, got {n_tasks}")
        self.log_vars = nn.Parameter(torch.zeros(n_tasks))  # s_t = 0: every weight starts at 1

    def forward(self, losses: Sequence[Tensor]) -> Tensor:
        """Weighted sum of the scalar task losses (in the order of ``log_vars``)."""
        if len(losses) != len(self.log_vars):
            raise ValueError(f"UncertaintyWeighting: {len(losses)} losses for {len(self.log_vars)} tasks")
        stacked = torch.stack(list(losses))  # (T,)
        return (torch.exp(-self.log_vars) * stacked + self.log_vars).sum()
