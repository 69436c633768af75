"""Benign/malignant classification metrics (dual-stage paper, Sec. 3.4.6, eq. 10-13) with their floor.

The paper reports accuracy (eq. 10), precision (eq. 11), recall (eq. 12), F1 (eq. 13) and ROC-AUC;
the design brief adds balanced accuracy and the confusion matrix. All come from scikit-learn, with
"malignant" (1) as the positive class. Beside them stands the trivial reference every table must
show: the **majority-class predictor**, which gives every image the most frequent class of the
training labels (or, without them, of the evaluated ones) and one constant score. Its accuracy is
the majority share, its balanced accuracy 0.5 and its AUC 0.5; on imbalanced data (the phantom has
about 11 % malignant images) accuracy alone flatters any model, so runs are judged on balanced
accuracy and AUC against it (``beats_majority``).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from sklearn import metrics as skm

METRIC_KEYS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "auc")


def _check(y_true: Sequence[int], name: str) -> np.ndarray:
    y = np.asarray(y_true).astype(int).ravel()
    if y.size == 0:
        raise ValueError(f"{name}: no samples")
    bad = sorted(set(np.unique(y).tolist()) - {0, 1})
    if bad:
        raise ValueError(f"{name}: labels must be 0 (benign) or 1 (malignant), got {bad}")
    return y


def classification_metrics(y_true: Sequence[int], prob: Sequence[float], threshold: float = 0.5) -> dict[str, Any]:
    """Metrics of malignancy probabilities against 0/1 labels.

    Args:
        y_true: labels, 1 = malignant.
        prob: predicted P(malignant) per sample (the softmax of eq. 8, class 1).
        threshold: predicted class = prob >= threshold (0.5 is the arg max of eq. 4 for two classes).

    Returns:
        ``accuracy``, ``balanced_accuracy``, ``precision``, ``recall``, ``f1``, ``auc`` (NaN when
        only one class is present), ``confusion_matrix`` [[TN, FP], [FN, TP]], ``n``, ``positives``.
    """
    y = _check(y_true, "classification_metrics")
    p = np.asarray(prob, dtype=float).ravel()
    if p.shape != y.shape:
        raise ValueError(f"classification_metrics: {p.size} probabilities for {y.size} labels")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ValueError("classification_metrics: probabilities must be finite and in [0, 1]")
    pred = (p >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)) if both else float("nan"),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "auc": float(skm.roc_auc_score(y, p)) if both else float("nan"),
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=[0, 1]).tolist(),
        "n": int(y.size),
        "positives": int(y.sum()),
    }


def majority_reference(y_true: Sequence[int], train_labels: Sequence[int] | None = None) -> dict[str, Any]:
    """The majority-class predictor's metrics on ``y_true``.

    Args:
        y_true: evaluated labels.
        train_labels: labels the majority is taken from (the training split); None = ``y_true``.
            Ties go to benign.

    Returns:
        The :func:`classification_metrics` of a constant prediction, plus ``majority_class``.
    """
    y = _check(y_true, "majority_reference")
    source = y if train_labels is None else _check(train_labels, "majority_reference(train_labels)")
    majority = int(source.mean() > 0.5)
    out = classification_metrics(y, np.full(y.shape, float(majority)))
    if len(np.unique(y)) == 2:  # a constant score ranks nothing: AUC 0.5 by definition
        out["auc"] = 0.5
    out["majority_class"] = majority
    return out


def with_reference(y_true: Sequence[int], prob: Sequence[float], train_labels: Sequence[int] | None = None,
                   threshold: float = 0.5) -> dict[str, Any]:
    """:func:`classification_metrics` plus ``majority`` (its reference) and ``beats_majority``.

    ``beats_majority`` is True when both balanced accuracy and AUC are above the reference's
    (False when either is undefined).
    """
    out = classification_metrics(y_true, prob, threshold)
    ref = majority_reference(y_true, train_labels)
    out["majority"] = ref
    out["beats_majority"] = bool(all(not math.isnan(out[k]) and out[k] > ref[k] for k in ("balanced_accuracy", "auc")))
    return out


def roc_curve(y_true: Sequence[int], prob: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` from scikit-learn, malignant = positive."""
    return skm.roc_curve(_check(y_true, "roc_curve"), np.asarray(prob, dtype=float))
