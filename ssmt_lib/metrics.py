"""Segmentation metrics as reported by the SSMT-Net paper (Tables 1-3) plus diagnostics.

The paper reports mean +- std over test images of the per-image Dice coefficient
``2|P & G| / (|P| + |G|)`` and IoU ``|P & G| / |P | G|`` of the binarized prediction P (probability
> 0.5) and the ground truth G. This module adds dataset-level (pooled) Dice / IoU / precision /
recall, the 95th-percentile Hausdorff distance HD95, and a breakdown by nodule size.

Conventions (tested in tests/test_metrics.py):

* Empty masks, per image: P and G both empty -> Dice = IoU = 1 (a correct "no nodule" answer);
  exactly one empty -> Dice = IoU = 0.
* Pooled Dice / IoU use the same convention on the summed counts; pooled precision (recall) is
  NaN when nothing is predicted (nothing is in the ground truth) over the whole set.
* HD95 (in pixels) is NaN for an image where P or G is empty; the mean skips those images and
  ``hd95_count`` says how many entered it. Standard deviations are population std (``np.std``).
* Size buckets by the ground-truth area fraction s with thresholds (t1, t2), default
  (0.01, 0.10): "empty" s = 0, "small" 0 < s < t1, "medium" t1 <= s <= t2, "large" s > t2.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

SIZE_BUCKETS = ("empty", "small", "medium", "large")


def _as_bhw(x: Tensor, name: str) -> Tensor:
    """(B, 1, H, W) or (B, H, W) -> (B, H, W)."""
    if x.dim() == 4 and x.shape[1] == 1:
        return x[:, 0]  # (B, H, W)
    if x.dim() == 3:
        return x
    raise ValueError(f"{name} must have shape (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}")


def confusion_counts(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image true positives, false positives and false negatives of binary masks.

    Args:
        pred: (B, ...) bool prediction.
        target: (B, ...) bool ground truth, same shape.

    Returns:
        ``(tp, fp, fn)``, each a (B,) int64 tensor.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    pred, target = pred.bool().flatten(1), target.bool().flatten(1)  # (B, P)
    tp = (pred & target).sum(1)
    fp = (pred & ~target).sum(1)
    fn = (~pred & target).sum(1)
    return tp, fp, fn


def dice_iou(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image Dice and IoU of binary masks (empty/empty = 1, one empty = 0).

    Args:
        pred: (B, ...) bool prediction.
        target: (B, ...) bool ground truth.

    Returns:
        ``(dice, iou)``, each a (B,) float64 tensor.
    """
    tp, fp, fn = (c.double() for c in confusion_counts(pred, target))
    union = tp + fp + fn
    both_empty = union == 0
    dice = torch.where(both_empty, 1.0, 2 * tp / (2 * tp + fp + fn).clamp(min=1))
    iou = torch.where(both_empty, 1.0, tp / union.clamp(min=1))
    return dice, iou


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the image border counts as outside)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def hd95(pred: np.ndarray | Tensor, target: np.ndarray | Tensor) -> float:
    """95th-percentile symmetric Hausdorff distance between mask boundaries, in pixels.

    The distances from every boundary pixel of P to the nearest boundary pixel of G and from G to
    P are pooled and their 95th percentile is returned (the medpy ``hd95`` definition). Distances
    come from ``scipy.ndimage.distance_transform_edt``. tests/test_metrics.py checks them against
    MONAI's ``get_mask_edges`` / ``get_surface_distance``; MONAI's own ``compute_hausdorff_distance``
    reports the larger of the two directed 95th percentiles instead (another number).

    Args:
        pred: (H, W) binary prediction.
        target: (H, W) binary ground truth.

    Returns:
        HD95 in pixels; NaN if either mask is empty.
    """
    pred, target = (np.asarray(x.cpu() if isinstance(x, Tensor) else x).astype(bool) for x in (pred, target))
    if pred.shape != target.shape:
        raise ValueError(f"hd95: prediction shape {pred.shape} != target shape {target.shape}")
    if not pred.any() or not target.any():
        return math.nan
    bp, bt = _boundary(pred), _boundary(target)
    d_pt = ndimage.distance_transform_edt(~bt)[bp]  # each P-boundary pixel -> nearest G-boundary pixel
    d_tp = ndimage.distance_transform_edt(~bp)[bt]
    return float(np.percentile(np.concatenate([d_pt, d_tp]), 95))


def size_bucket(fraction: float, thresholds: Sequence[float] = (0.01, 0.10)) -> str:
    """Size bucket of a ground-truth nodule area fraction (see the module docstring).

    Args:
        fraction: nodule area / image area, in [0, 1].
        thresholds: (small/medium, medium/large) boundaries.

    Returns:
        One of ``SIZE_BUCKETS``.
    """
    small, large = thresholds
    if fraction <= 0:
        return "empty"
    if fraction < small:
        return "small"
    return "medium" if fraction <= large else "large"


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


def _ratio(num: float, den: float, empty: float) -> float:
    return float(num / den) if den > 0 else empty


class SegmentationMeter:
    """Accumulates per-image segmentation metrics over batches.

    Example::

        meter = SegmentationMeter()
        for batch in loader:
            out = model(batch["image"])
            meter.update(out.nodule_logits, batch["nodule_mask"], batch["has_nodule"], ids=batch["id"])
        print(meter.compute()["dice_mean"])
        pandas.DataFrame(meter.rows)  # one row per image
    """

    def __init__(
        self,
        from_logits: bool = True,
        threshold: float = 0.5,
        size_thresholds: Sequence[float] = (0.01, 0.10),
        compute_hd95: bool = True,
    ) -> None:
        """
        Args:
            from_logits: True if ``update`` receives logits (sigmoid is applied), False for
                probabilities. Explicit because a range check cannot tell the two apart.
            threshold: probability above which a pixel is foreground (paper: 0.5).
            size_thresholds: (small/medium, medium/large) area-fraction boundaries.
            compute_hd95: False skips HD95 (its distance transforms dominate the cost).
        """
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        small, large = size_thresholds
        if not 0.0 < small < large < 1.0:
            raise ValueError(f"size_thresholds must satisfy 0 < small < large < 1, got {tuple(size_thresholds)}")
        self.from_logits = from_logits
        self.threshold = threshold
        self.size_thresholds = (float(small), float(large))
        self.compute_hd95 = compute_hd95
        self.rows: list[dict[str, Any]] = []

    def reset(self) -> None:
        """Forget all accumulated images."""
        self.rows = []

    @torch.no_grad()
    def update(
        self,
        logits_or_probs: Tensor,
        target: Tensor,
        valid_mask: Tensor | Sequence[bool] | None = None,
        ids: Sequence[str] | None = None,
    ) -> None:
        """Add one batch.

        Args:
            logits_or_probs: (B, 1, H, W) or (B, H, W) scores (see ``from_logits``).
            target: same shape, binary ground truth (values 0 or 1).
            valid_mask: (B,) bool, images labeled for this task (``batch["has_nodule"]``);
                None = all. Unlabeled images are not counted at all.
            ids: optional (B,) image ids for ``rows``; default: a running index.
        """
        scores = _as_bhw(logits_or_probs.detach(), "logits_or_probs").float()
        target = _as_bhw(target.detach(), "target")
        if scores.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(scores.shape)} != target shape {tuple(target.shape)}")
        if not ((target == 0) | (target == 1)).all():
            raise ValueError("target must be binary (values 0 or 1); binarize masks before the meter")
        B = scores.shape[0]
        probs = scores.sigmoid() if self.from_logits else scores
        pred = probs > self.threshold  # (B, H, W)
        gt = target.bool()  # (B, H, W)
        valid = torch.ones(B, dtype=torch.bool) if valid_mask is None else torch.as_tensor(valid_mask).bool().cpu().flatten()
        if valid.shape[0] != B:
            raise ValueError(f"valid_mask has {valid.shape[0]} entries for a batch of {B}")
        if ids is not None and len(ids) != B:
            raise ValueError(f"ids has {len(ids)} entries for a batch of {B}")
        tp, fp, fn = (c.cpu() for c in confusion_counts(pred, gt))
        dice, iou = dice_iou(pred, gt)
        dice, iou = dice.cpu(), iou.cpu()
        sizes = gt.flatten(1).double().mean(1).cpu()  # (B,) ground-truth area fraction
        pred_np, gt_np = (pred.cpu().numpy(), gt.cpu().numpy()) if self.compute_hd95 else (None, None)
        for b in range(B):
            if not valid[b]:
                continue
            size = float(sizes[b])
            self.rows.append({
                "id": str(ids[b]) if ids is not None else str(len(self.rows)),
                "dice": float(dice[b]),
                "iou": float(iou[b]),
                "hd95": hd95(pred_np[b], gt_np[b]) if self.compute_hd95 else math.nan,
                "size": size,
                "bucket": size_bucket(size, self.size_thresholds),
                "tp": int(tp[b]),
                "fp": int(fp[b]),
                "fn": int(fn[b]),
            })

    def compute(self) -> dict[str, float | int]:
        """Summary over all images seen since the last ``reset``.

        Returns:
            Plain Python floats (NaN where undefined, e.g. with no images; ``json.dumps`` writes
            NaN) and int counts: ``n``, ``dice_mean``,
            ``dice_std``, ``iou_mean``, ``iou_std``, ``dice_pooled``, ``iou_pooled``, ``precision``,
            ``recall``, ``hd95_mean``, ``hd95_std``, ``hd95_count``, and per size bucket
            ``{bucket}_n``, ``{bucket}_dice_mean``, ``{bucket}_iou_mean`` for ``SIZE_BUCKETS``.
        """
        rows = self.rows
        dice_mean, dice_std = _mean_std([r["dice"] for r in rows])
        iou_mean, iou_std = _mean_std([r["iou"] for r in rows])
        hds = [r["hd95"] for r in rows if not math.isnan(r["hd95"])]
        hd_mean, hd_std = _mean_std(hds)
        tp, fp, fn = (float(sum(r[k] for r in rows)) for k in ("tp", "fp", "fn"))
        out: dict[str, float | int] = {
            "n": len(rows),
            "dice_mean": dice_mean,
            "dice_std": dice_std,
            "iou_mean": iou_mean,
            "iou_std": iou_std,
            "dice_pooled": _ratio(2 * tp, 2 * tp + fp + fn, 1.0) if rows else math.nan,
            "iou_pooled": _ratio(tp, tp + fp + fn, 1.0) if rows else math.nan,
            "precision": _ratio(tp, tp + fp, math.nan),
            "recall": _ratio(tp, tp + fn, math.nan),
            "hd95_mean": hd_mean,
            "hd95_std": hd_std,
            "hd95_count": len(hds),
        }
        for bucket in SIZE_BUCKETS:
            sel = [r for r in rows if r["bucket"] == bucket]
            out[f"{bucket}_n"] = len(sel)
            out[f"{bucket}_dice_mean"] = _mean_std([r["dice"] for r in sel])[0]
            out[f"{bucket}_iou_mean"] = _mean_std([r["iou"] for r in sel])[0]
        return out


# ----------------------------------------------------------------------------- trivial references

REFERENCE_PREDICTORS = ("all_foreground", "all_background")
REFERENCE_MARGIN = 0.05  # a score less than this above the best trivial reference is flagged


class ReferenceMeter:
    """Scores of the trivial predictors on an evaluation set, accumulated batch by batch.

    * ``all_foreground``: every pixel is nodule (or gland). Its Dice is ``2|G| / (|G| + HW)``,
      about the mean foreground share for small masks: a network that only learns "say yes"
      scores exactly this.
    * ``all_background``: nothing is predicted: Dice 1 on an image without a mask, 0 elsewhere.
    * for the size head, ``mean_predictor_mae``: the MAE of always answering the set's mean area
      fraction (the mean of this very set, so the reference is if anything too easy to lose to).

    Any result table shows these next to the model's scores; a model within
    ``REFERENCE_MARGIN`` of the best of them has learnt nothing beyond it (see
    :func:`flag_trivial`).
    """

    def __init__(self) -> None:
        self.meters = {name: SegmentationMeter(from_logits=False, compute_hd95=False) for name in REFERENCE_PREDICTORS}
        self.sizes: list[float] = []

    @torch.no_grad()
    def update(self, target: Tensor, valid_mask: Tensor | Sequence[bool] | None = None) -> None:
        """Add a batch of binary ground-truth masks (B, 1, H, W) or (B, H, W) and its labeled flags."""
        target = _as_bhw(target.detach(), "target").float()
        self.meters["all_foreground"].update(torch.ones_like(target), target, valid_mask)
        self.meters["all_background"].update(torch.zeros_like(target), target, valid_mask)
        valid = torch.ones(target.shape[0], dtype=torch.bool) if valid_mask is None else \
            torch.as_tensor(valid_mask).bool().cpu().flatten()
        self.sizes += target.flatten(1).mean(1).cpu()[valid].tolist()

    def compute(self) -> dict[str, Any]:
        """``{"all_foreground": {dice_mean, iou_mean, dice_pooled, iou_pooled}, "all_background": {...},
        "size_mean": float, "mean_predictor_mae": float}`` (NaN without images)."""
        keys = ("dice_mean", "iou_mean", "dice_pooled", "iou_pooled")
        out: dict[str, Any] = {name: {k: m.compute()[k] for k in keys} for name, m in self.meters.items()}
        sizes = np.asarray(self.sizes, dtype=np.float64)
        mean = float(sizes.mean()) if sizes.size else math.nan
        out["size_mean"] = mean
        out["mean_predictor_mae"] = float(np.abs(sizes - mean).mean()) if sizes.size else math.nan
        return out


def trivial_references(loader: Any, task: str = "nodule") -> dict[str, Any]:
    """:class:`ReferenceMeter` scores of ``task`` over a loader (or any iterable of batch dicts).

    Args:
        loader: yields dicts with ``f"{task}_mask"`` (B, 1, H, W) and ``f"has_{task}"`` (B,).
        task: "nodule" or "gland".

    Returns:
        See :meth:`ReferenceMeter.compute`.
    """
    meter = ReferenceMeter()
    for batch in loader:
        for key in (f"{task}_mask", f"has_{task}"):
            if key not in batch:
                raise KeyError(f"trivial_references: batch has no {key!r}; keys: {sorted(batch)}")
        meter.update(batch[f"{task}_mask"], batch[f"has_{task}"])
    return meter.compute()


def best_reference(references: dict[str, Any], metric: str = "dice_mean") -> tuple[str, float]:
    """The trivial predictor with the highest ``metric`` and its score."""
    scores = {name: references[name][metric] for name in REFERENCE_PREDICTORS if name in references}
    name = max(scores, key=lambda n: -math.inf if math.isnan(scores[n]) else scores[n])
    return name, scores[name]


def flag_trivial(score: float, references: dict[str, Any], metric: str = "dice_mean",
                 margin: float = REFERENCE_MARGIN) -> str:
    """"" when ``score`` clears every trivial reference by ``margin``, else a short warning text.

    Args:
        score: the model's value of ``metric`` (higher is better).
        references: :meth:`ReferenceMeter.compute` output for the same images.
        metric: a key of the reference dicts ("dice_mean", "dice_pooled", "iou_mean", ...).
        margin: how far above the best reference a score must be.
    """
    name, ref = best_reference(references, metric)
    if math.isnan(score):
        return "no score"
    if score < ref + margin:
        return f"within {margin:.2f} of {name} ({ref:.3f})"
    return ""
