"""Which query answers which target: Mask2Former's bipartite matching for the query decoder (eq. 4-9).

The query decoder predicts N masks with classes, in no particular order; its loss
(:func:`ssmt_lib.losses.mask_classification_loss`) first assigns each ground-truth mask to one
query. Mask2Former (Cheng et al., 2022) does this with the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``) on the cost ``2 * (-p(class)) + 5 * BCE + 5 * Dice``
(:func:`matching_cost`, :func:`match_queries`); ``LossConfig.matching="fixed"`` pairs query m with
target m instead (an ablation switch). The paper represents "each nodule and gland" by a query
(Sec. 2.3), so with ``LossConfig.targets="instances"`` every connected component of a mask is its
own target (:func:`instance_targets`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ssmt_lib.outputs import QueryPrediction


def matching_cost(
    pred: QueryPrediction, targets: Tensor, cost_class: float = 2.0, cost_bce: float = 5.0, cost_dice: float = 5.0,
    labels: Tensor | None = None,
) -> Tensor:
    """Mask2Former matching cost between every query and every target mask, for a whole batch.

    Args:
        pred: one query prediction, ``class_logits`` (B, N, K+1) and ``mask_logits`` (B, N, H, W).
        targets: (B, M, H, W) binary masks: one per class (M = K, channel k = class k) or, with
            ``labels``, one per instance (:func:`instance_targets`).
        cost_class, cost_bce, cost_dice: weights of ``-p(class)``, pixel-mean BCE and Dice cost.
        labels: (B, M) class index of each target; None = the channel index.

    Returns:
        (B, N, M) cost; lower is a better match.
    """
    logits = pred.mask_logits.float().flatten(2)  # (B, N, P)
    tgt = targets.float().flatten(2)  # (B, K, P)
    n_pix = logits.shape[-1]
    # fp32 even under bf16 autocast: the einsums sum thousands of pixels and only rank queries.
    with torch.autocast(device_type=logits.device.type, enabled=False):
        prob_class = pred.class_logits.float().softmax(-1)[..., :-1]  # (B, N, K), no-object dropped
        if labels is not None:  # each target's own class
            prob_class = prob_class.gather(2, labels.to(prob_class.device)[:, None, :].expand(-1, logits.shape[1], -1))  # (B, N, M)
        # BCE(x, t) = softplus(x) - x t, so the pixel mean splits into a per-query and a cross term.
        bce = F.softplus(logits).mean(-1, keepdim=True) - torch.einsum("bnp,bkp->bnk", logits, tgt) / n_pix  # (B, N, K)
        prob = logits.sigmoid()  # (B, N, P)
        inter = torch.einsum("bnp,bkp->bnk", prob, tgt)  # (B, N, K)
        dice = 1 - (2 * inter + 1) / (prob.sum(-1)[:, :, None] + tgt.sum(-1)[:, None, :] + 1)  # (B, N, K)
    return cost_class * -prob_class + cost_bce * bce + cost_dice * dice


@torch.no_grad()
def match_queries(
    pred: QueryPrediction,
    targets: Tensor,
    present: Tensor,
    matching: str = "hungarian",
    cost_class: float = 2.0,
    cost_bce: float = 5.0,
    cost_dice: float = 5.0,
    labels: Tensor | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """Assign one query to each present target mask (a class, or one nodule), per sample.

    Args:
        pred: query prediction with ``class_logits`` (B, N, K+1), ``mask_logits`` (B, N, H, W).
        targets: (B, M, H, W) binary target masks (per class, or per instance with ``labels``).
        present: (B, M) bool, which target masks exist (non-empty and labeled).
        matching: "hungarian" (``scipy.optimize.linear_sum_assignment`` on :func:`matching_cost`)
            or "fixed" (query m <-> target m, the ablation switch).
        cost_class, cost_bce, cost_dice: cost weights (Mask2Former: 2, 5, 5).
        labels: (B, M) class of each target; None = the channel index (one target per class).

    Returns:
        Per sample ``(query_idx, target_idx)``, two int64 CPU tensors of equal length.
    """
    n_queries = pred.class_logits.shape[1]
    present = present.cpu()
    most = int(present.sum(1).max()) if present.numel() else 0
    if most > n_queries:
        raise ValueError(f"a sample has {most} target masks but the decoder has only {n_queries} queries")
    if matching == "fixed":
        out = []
        for row in present:
            cls = torch.nonzero(row).flatten()  # (M,)
            out.append((cls.clone(), cls))
        return out
    if matching != "hungarian":
        raise ValueError(f"matching={matching!r}; choose 'hungarian' or 'fixed'")
    # A NaN cost would make scipy raise; a huge cost lets the (then non-finite) loss reach the
    # trainer's non-finite check instead, which stops training with a clear message.
    cost = matching_cost(pred, targets, cost_class, cost_bce, cost_dice, labels)
    cost = torch.nan_to_num(cost, nan=1e8, posinf=1e8, neginf=-1e8).cpu().numpy()  # (B, N, M)
    out = []
    for b, row in enumerate(present):
        cls = torch.nonzero(row).flatten()  # (M,) present classes
        if len(cls) == 0:
            out.append((torch.zeros(0, dtype=torch.long), cls))
            continue
        q, j = linear_sum_assignment(cost[b][:, cls.numpy()])  # rows = queries, cols = present classes
        out.append((torch.as_tensor(q, dtype=torch.long), cls[torch.as_tensor(j, dtype=torch.long)]))
    return out


def instance_targets(targets: Tensor, max_instances: int) -> tuple[Tensor, Tensor]:
    """One target per connected component of each class mask: each nodule gets its own query.

    The paper represents "each nodule and gland" by a learnable query (Sec. 2.3), so an image with
    three nodules has three targets, each matched to its own query by the Hungarian matching,
    instead of one merged nodule mask. Components are 8-connected (``scipy.ndimage.label``),
    ordered largest first. A sample with more components than ``max_instances`` (the number of
    queries; noisy masks) has its smallest components merged into the smallest remaining one of
    their class until it fits, so no labelled pixel is dropped.

    Args:
        targets: (B, K, H, W) binary class masks.
        max_instances: the most targets one sample may have (the decoder's N queries).

    Returns:
        (B, M, H, W) float instance masks (M = the most components of a sample, at least 1;
        unused channels empty) and (B, M) int64 class of each (0 where unused).
    """
    arr = (targets.detach() > 0.5).cpu().numpy()  # (B, K, H, W)
    B, K = arr.shape[:2]
    structure = np.ones((3, 3), dtype=bool)  # 8-connectivity
    samples: list[list[tuple[int, np.ndarray]]] = []
    for b in range(B):
        comps: list[tuple[int, np.ndarray]] = []
        for k in range(K):
            lab, n = ndimage.label(arr[b, k], structure=structure)
            comps += [(k, lab == i) for i in range(1, n + 1)]
        comps.sort(key=lambda c: -int(c[1].sum()))
        while len(comps) > max_instances:  # merge the smallest into the smallest other of its class
            k, small = comps.pop()
            same = [i for i, (kk, _) in enumerate(comps) if kk == k]
            if not same:
                raise ValueError(f"a sample has more classes than the decoder's {max_instances} queries")
            comps[same[-1]] = (k, comps[same[-1]][1] | small)
        samples.append(comps)
    m = max(1, max(len(c) for c in samples))
    masks = np.zeros((B, m, *arr.shape[2:]), dtype=np.float32)  # (B, M, H, W)
    labels = np.zeros((B, m), dtype=np.int64)  # (B, M)
    for b, comps in enumerate(samples):
        for j, (k, mask) in enumerate(comps):
            masks[b, j], labels[b, j] = mask, k
    return torch.from_numpy(masks).to(targets.device), torch.from_numpy(labels).to(targets.device)
