"""Scores of a TI-RADS classifier, each beside its trivial reference (the majority class).

Accuracy, macro-F1, one-vs-rest AUC and quadratic-weighted kappa (scikit-learn) of the TI-RADS
category that the RLAR paper's joint model predicts (Liu et al., *Representation-Level Adversarial
Regularization for Clinically Aligned Multitask Thyroid Ultrasound Assessment*, arXiv 2603.21095;
the abstract names no metric, these are our choice), and the nodule Dice/IoU of the same model with
the all-foreground / all-background references (:func:`evaluate_tirads`).
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ssmt_lib.metrics import ReferenceMeter, SegmentationMeter
from ssmt_lib.tirads_model import TiradsNet

TIRADS_KEYS = ("tirads_accuracy", "tirads_macro_f1", "tirads_auc", "tirads_kappa")  # the headline scores


def tirads_metrics(y_true: np.ndarray, prob: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Accuracy, macro-F1 (all K classes), one-vs-rest AUC and quadratic-weighted kappa (scikit-learn).

    Args:
        y_true: (N,) class indices 0..K-1.
        prob: (N, K) class probabilities.
        num_classes: K.

    Returns:
        ``tirads_accuracy``, ``tirads_macro_f1``, ``tirads_auc`` (macro over the classes present with
        both positives and negatives; NaN if none), ``tirads_kappa``, ``confusion_matrix``, ``n``.
    """
    y = np.asarray(y_true, int)
    p = np.asarray(prob, float)
    if y.ndim != 1 or p.shape != (y.size, num_classes) or y.size == 0:
        raise ValueError(f"tirads_metrics: need y (N,) and prob (N, {num_classes}), got {y.shape} and {p.shape}")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"tirads_metrics: labels must be in 0..{num_classes - 1}, got {sorted(set(y.tolist()))}")
    pred = p.argmax(1)
    ks = range(num_classes)
    aucs = [skm.roc_auc_score(y == k, p[:, k]) for k in ks if 0 < (y == k).sum() < y.size]
    with warnings.catch_warnings():  # one class in y and pred: undefined, reported as 0 below
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        kappa = skm.cohen_kappa_score(y, pred, labels=list(ks), weights="quadratic")
    return {"tirads_accuracy": float(skm.accuracy_score(y, pred)),
            "tirads_macro_f1": float(skm.f1_score(y, pred, labels=list(ks), average="macro", zero_division=0)),
            "tirads_auc": float(np.mean(aucs)) if aucs else float("nan"),
            "tirads_kappa": float(0.0 if math.isnan(kappa) else kappa),  # sklearn: NaN when one class only
            "confusion_matrix": skm.confusion_matrix(y, pred, labels=list(ks)).tolist(), "n": int(y.size)}


def majority_tirads(y_true: np.ndarray, train_labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """The majority-class predictor (most frequent training class, one constant score): its metrics."""
    train = np.asarray(train_labels)
    major = int(np.bincount(train[train >= 0], minlength=num_classes).argmax())
    prob = np.zeros((len(y_true), num_classes))
    prob[:, major] = 1.0  # constant: ranks nothing, so every one-vs-rest AUC is 0.5
    out = tirads_metrics(y_true, prob, num_classes)
    out["tirads_auc"] = 0.5 if not math.isnan(out["tirads_auc"]) else out["tirads_auc"]
    out["majority_class"] = major
    return out


@torch.no_grad()
def evaluate_tirads(model: TiradsNet, loader: DataLoader, device: torch.device | None = None,
                    train_labels: np.ndarray | None = None, progress: bool = False) -> dict[str, Any]:
    """TI-RADS metrics (labelled images) and nodule Dice/IoU (masked images), each with its trivial reference.

    Returns:
        ``tirads_*`` (:func:`tirads_metrics`), ``nodule`` (``SegmentationMeter.compute()``),
        ``references``: ``majority`` (:func:`majority_tirads`) and ``nodule`` (``ReferenceMeter``:
        all-foreground / all-background), ``beats_majority`` (macro-F1 above the majority's).
    """
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    k = model.config.num_classes
    seg, floors = SegmentationMeter(compute_hd95=False), ReferenceMeter()
    ys, ps = [], []
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
        out = model(batch["image"].to(device))
        valid = batch["has_nodule"].bool()
        seg.update(out["nodule_logits"].float().cpu(), batch["nodule_mask"], valid, ids=batch["id"])
        floors.update(batch["nodule_mask"], valid)
        lab = batch["label"] >= 0
        ys.append(batch["label"][lab].numpy())
        ps.append(out["tirads_logits"].float().softmax(-1).cpu()[lab].numpy())
    model.train(was)
    y, p = np.concatenate(ys), np.concatenate(ps)
    res = tirads_metrics(y, p, k)
    major = majority_tirads(y, y if train_labels is None else train_labels, k)
    nod = seg.compute()
    res.update(nodule={kk: v for kk, v in nod.items() if not isinstance(v, (list, dict))},
               references={"majority": major, "nodule": floors.compute()},
               beats_majority=bool(res["tirads_macro_f1"] > major["tirads_macro_f1"]))
    return res


def tirads_summary(test: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of :func:`evaluate_tirads` with their trivial references (for the CLI's JSON).

    Args:
        test: an :func:`evaluate_tirads` result; empty gives ``{}``.
    """
    if not test:
        return {}
    ref = test["references"]
    keep = ("dice_mean", "iou_mean")
    return {**{k: test[k] for k in TIRADS_KEYS}, "majority": {k: ref["majority"][k] for k in TIRADS_KEYS},
            "beats_majority": test["beats_majority"], "nodule": {k: test["nodule"][k] for k in keep},
            "nodule_references": {n: {k: ref["nodule"][n][k] for k in keep}
                                  for n in ("all_foreground", "all_background")}}
