"""Training views for the two phases of SSMT-Net (paper Sec. 2.6): curves, reconstructions, predictions.

* :func:`plot_history` draws one panel per term of eq. 12
  (``L = alpha L_nodule + beta L_gland + gamma L_size + eta L_rec``) over the epochs of both phases,
  plus the validation Dice. In phase 1 only ``L_rec`` (eq. 13, Charbonnier) trains and the total
  *is* ``L_rec`` (unweighted), so phase-1 points are drawn for ``loss`` and ``rec`` only.
* :func:`show_reconstructions` puts the input next to the reconstructor's output of one or more
  models (e.g. random init, after phase 1, after phase 2), each titled with its eq. 13 loss.
* :func:`show_predictions` shows image, ground truth and thresholded prediction with the per-image
  Dice of :func:`ssmt_lib.metrics.dice_iou` (the same numbers the test table averages).
* :func:`compare_runs` overlays phase-2 curves of several runs (e.g. with and without phase 1);
  :func:`metrics_table` turns ``evaluate()`` results into one table.

Every plotting function is pure: it builds a new :class:`matplotlib.figure.Figure` without pyplot
and returns it. Images are the datasets' normalised (C, H, W) tensors; they are converted for
display with :func:`ssmt_lib.data.denormalize`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from torch import Tensor

from ssmt_lib.data import denormalize
from ssmt_lib.losses import charbonnier_loss
from ssmt_lib.metrics import SIZE_BUCKETS, dice_iou

__all__ = ["LOSS_TERMS", "history_frame", "plot_history", "show_reconstructions", "show_predictions",
           "compare_runs", "metrics_table"]

LOSS_TERMS = ("loss", "nodule", "gland", "size", "rec")  # the parts total_loss logs (eq. 12)
_TERM_TITLES = {"loss": "total L (eq. 12; phase 1: L_rec)", "nodule": "L_nodule", "gland": "L_gland",
                "size": "L_size", "rec": "L_rec (eq. 13)"}
_PHASE_COLORS = {1: "tab:purple", 2: "tab:blue"}
_PHASE1_TERMS = ("loss", "rec")  # the other parts are logged as 0.0 placeholders in phase 1
_GT_CMAP = ListedColormap(["none", "limegreen"])  # 0 transparent, 1 green
_PRED_CMAP = ListedColormap(["none", "red"])

History = Sequence[Mapping[str, Any]] | pd.DataFrame


def history_frame(history: History) -> pd.DataFrame:
    """Per-epoch records (``TrainResult.history`` or ``history.csv``) as a DataFrame with a run-wide ``step``.

    Args:
        history: list of epoch dicts with at least ``phase`` and ``epoch``, or such a DataFrame.

    Returns:
        A copy sorted in training order with ``step`` = 1, 2, ... over both phases.
    """
    frame = history.copy() if isinstance(history, pd.DataFrame) else pd.DataFrame(list(history))
    if frame.empty:
        raise ValueError("history is empty: no epoch was trained")
    missing = {"phase", "epoch"} - set(frame.columns)
    if missing:
        raise ValueError(f"history records need 'phase' and 'epoch'; missing {sorted(missing)}, "
                         f"columns: {list(frame.columns)}")
    frame = frame.sort_values(["phase", "epoch"], kind="stable").reset_index(drop=True)
    frame["step"] = np.arange(1, len(frame) + 1)
    return frame


def _grid(n_panels: int, ncols: int, panel: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    nrows = -(-n_panels // ncols)  # ceil
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes[:n_panels])


def plot_history(history: History, terms: Sequence[str] = LOSS_TERMS,
                 metrics: Sequence[str] = ("val_nodule_dice", "val_gland_dice"), ncols: int = 3,
                 title: str | None = None) -> Figure:
    """Training curves of both phases: one panel per loss term, one panel of validation metrics.

    A term whose logged value is 0.0 everywhere (a variant without that task) gets no panel; a
    dashed line marks the start of phase 2.

    Args:
        history: ``TrainResult.history`` (list of dicts) or ``history.csv`` as a DataFrame.
        terms: loss parts to draw (keys logged by :func:`ssmt_lib.losses.total_loss`).
        metrics: validation columns to draw together in the last panel (phase 2 only).
        ncols: panels per row.
        title: optional figure title.

    Returns:
        the figure.
    """
    frame = history_frame(history)
    shown = [t for t in terms if t in frame.columns and (frame[t].fillna(0.0) != 0.0).any()]
    found = [m for m in metrics if m in frame.columns and frame[m].notna().any()]
    if not shown and not found:
        raise ValueError(f"history has none of the columns {list(terms) + list(metrics)}; it has {list(frame.columns)}")
    fig, axes = _grid(len(shown) + bool(found), ncols, (3.4, 2.6))
    boundary = frame.loc[frame["phase"] == 2, "step"].min() if (frame["phase"] == 2).any() else None
    for ax, term in zip(axes, shown):
        for phase, part in frame.groupby("phase"):
            if phase == 1 and term not in _PHASE1_TERMS:
                continue
            ax.plot(part["step"], part[term], "o-", ms=3, color=_PHASE_COLORS.get(int(phase), "gray"),
                    label=f"phase {int(phase)}")
        ax.set_title(_TERM_TITLES.get(term, term), fontsize=9)
    if found:
        ax = axes[-1]
        for name in found:
            part = frame[frame[name].notna()]
            ax.plot(part["step"], part[name], "o-", ms=3, label=name.replace("val_", "val ").replace("_", " "))
        ax.set_ylim(0, 1)
        ax.set_title("validation (per-image mean)", fontsize=9)
    for ax in axes:
        if boundary is not None and frame["phase"].min() == 1:
            ax.axvline(boundary - 0.5, color="gray", ls="--", lw=0.8)
        ax.set_xlabel("epoch (both phases)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def _display(image: Tensor | np.ndarray, normalized: bool, grey: bool = False) -> np.ndarray:
    """(C, H, W) image -> display array in [0, 1]; ``grey`` averages the channels."""
    if normalized:
        arr = denormalize(image)  # (H, W) or (H, W, 3)
    else:
        arr = image.detach().float().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image, np.float32)
        arr = np.clip(arr, 0.0, 1.0)
        arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)  # (H, W) or (H, W, 3)
    return arr.mean(-1) if grey and arr.ndim == 3 else arr  # (H, W) when grey


def _batch(x: Tensor | np.ndarray, name: str, ndim: int = 4) -> Tensor:
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, Tensor) else x.detach().cpu()
    if t.dim() != ndim:
        raise ValueError(f"{name} must be a batch with {ndim} dims (B, C, H, W), got shape {tuple(t.shape)}")
    return t


def show_reconstructions(images: Tensor, recons: Tensor | Mapping[str, Tensor], n: int = 4,
                         normalized: bool = True, eps: float = 1e-6, grey: bool = True, panel: float = 1.8) -> Figure:
    """Inputs (top row) and the reconstructor's outputs (one row per model), titled with eq. 13.

    Ultrasound is grey replicated to 3 channels, but the reconstructor predicts each channel on its
    own; ``grey`` shows the channel mean so that small per-channel offsets do not tint the display
    (the titles' losses use the raw channels).

    Args:
        images: (B, C, H, W) input batch (normalised as the datasets return it when ``normalized``).
        recons: (B, C, H, W) reconstructions, or ``{row label: reconstructions}`` to compare models
            (e.g. ``{"random init": r0, "after phase 1": r1, "after phase 2": r2}``).
        n: images (columns) to show, at most B.
        normalized: undo the ImageNet normalisation for display.
        eps: Charbonnier epsilon (``LossConfig.charbonnier_eps``) for the per-image titles.
        grey: show the mean over channels.
        panel: side of one panel in inches.

    Returns:
        the figure.
    """
    images = _batch(images, "images")
    rows = {"reconstruction": recons} if isinstance(recons, (Tensor, np.ndarray)) else dict(recons)
    if not rows:
        raise ValueError("recons is empty")
    rows = {k: _batch(v, f"recons[{k!r}]") for k, v in rows.items()}
    for label, rec in rows.items():
        if rec.shape != images.shape:
            raise ValueError(f"recons[{label!r}] has shape {tuple(rec.shape)}, images {tuple(images.shape)}")
    n = min(n, images.shape[0])
    fig = Figure(figsize=(panel * n, (panel + 0.1) * (len(rows) + 1)), layout="constrained")
    axes = fig.subplots(len(rows) + 1, n, squeeze=False)
    for j in range(n):
        axes[0, j].imshow(_display(images[j], normalized, grey), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[0, j].set_title(f"input {j}", fontsize=8)
        for i, (label, rec) in enumerate(rows.items(), start=1):
            axes[i, j].imshow(_display(rec[j], normalized, grey), cmap="gray", vmin=0, vmax=1,
                              interpolation="nearest")
            err = charbonnier_loss(rec[j], images[j], eps).item()  # eq. 13 on this image alone
            axes[i, j].set_title(f"L_rec {err:.3f}", fontsize=8)
            if j == 0:
                axes[i, j].set_ylabel(label, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("input", fontsize=9)
    return fig


def show_predictions(images: Tensor, masks: Tensor, logits: Tensor, n: int | None = None, threshold: float = 0.5,
                     ids: Sequence[str] | None = None, normalized: bool = True, task: str = "nodule",
                     panel: float = 1.6) -> Figure:
    """Image, ground truth (green) and prediction (red, ground-truth outline in cyan), one column per image.

    The prediction is ``sigmoid(logits) > threshold``; the Dice in each title comes from
    :func:`ssmt_lib.metrics.dice_iou` (empty prediction and empty truth: Dice 1).

    Args:
        images: (B, C, H, W) input batch.
        masks: (B, 1, H, W) binary ground truth.
        logits: (B, 1, H, W) predicted logits (``ModelOutput.logits(task)``).
        n: images to show (default all, at most 8 is readable).
        threshold: probability threshold (paper: 0.5).
        ids: optional image ids for the column titles.
        normalized: undo the ImageNet normalisation for display.
        task: name used in the row labels.
        panel: side of one panel in inches.

    Returns:
        the figure.
    """
    images, masks, logits = _batch(images, "images"), _batch(masks, "masks"), _batch(logits, "logits")
    if masks.shape[1] != 1 or logits.shape != masks.shape or masks.shape[0] != images.shape[0] \
            or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"need masks and logits of shape (B, 1, H, W) matching images {tuple(images.shape)}; "
                         f"got masks {tuple(masks.shape)}, logits {tuple(logits.shape)}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    n = images.shape[0] if n is None else min(n, images.shape[0])
    pred = logits.float().sigmoid() > threshold  # (B, 1, H, W)
    gt = masks > 0.5  # (B, 1, H, W)
    dice, _ = dice_iou(pred[:, 0], gt[:, 0])  # (B,)
    fig = Figure(figsize=(panel * n, 3 * (panel + 0.1)), layout="constrained")
    axes = fig.subplots(3, n, squeeze=False)
    for j in range(n):
        img = _display(images[j], normalized)
        g, p = gt[j, 0].numpy().astype(float), pred[j, 0].numpy().astype(float)  # (H, W)
        axes[0, j].imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[0, j].set_title(str(ids[j]) if ids is not None else f"image {j}", fontsize=7)
        axes[1, j].imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[1, j].imshow(g, cmap=_GT_CMAP, vmin=0, vmax=1, alpha=0.45, interpolation="nearest")
        axes[1, j].set_title(f"truth: {g.mean():.1%} of image", fontsize=8)
        axes[2, j].imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[2, j].imshow(p, cmap=_PRED_CMAP, vmin=0, vmax=1, alpha=0.45, interpolation="nearest")
        if g.any():
            axes[2, j].contour(g, levels=[0.5], colors="cyan", linewidths=0.8)
        axes[2, j].set_title(f"Dice {float(dice[j]):.2f}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, label in zip(axes[:, 0], ("image", f"{task} truth", f"{task} prediction")):
        ax.set_ylabel(label, fontsize=9)
    return fig


def compare_runs(histories: Mapping[str, History], metrics: Sequence[str] = ("val_nodule_dice",),
                 terms: Sequence[str] = ("loss", "nodule"), ncols: int = 3) -> Figure:
    """Phase-2 curves of several runs on a shared phase-2 epoch axis (runs may differ in phase 1).

    Args:
        histories: ``{run label: history}``, e.g. ``{"phase 1 + 2": h1, "phase 2 only": h2}``.
        metrics: validation columns, one panel each.
        terms: phase-2 loss parts, one panel each.
        ncols: panels per row.

    Returns:
        the figure.
    """
    if not histories:
        raise ValueError("histories is empty")
    frames = {}
    for label, history in histories.items():
        frame = history_frame(history)
        frames[label] = frame[frame["phase"] == 2]
        if frames[label].empty:
            raise ValueError(f"run {label!r} has no phase-2 epochs to compare")
    columns = [c for c in (*metrics, *terms) if any(c in f.columns for f in frames.values())]
    if not columns:
        raise ValueError(f"no run has any of {list(metrics) + list(terms)}")
    fig, axes = _grid(len(columns), ncols, (3.4, 2.6))
    for ax, column in zip(axes, columns):
        for label, frame in frames.items():
            if column in frame.columns:
                ax.plot(frame["epoch"], frame[column], "o-", ms=3, label=label)
        if column in metrics:
            ax.set_ylim(0, 1)
        ax.set_title(_TERM_TITLES.get(column, column.replace("_", " ")), fontsize=9)
        ax.set_xlabel("phase-2 epoch", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def metrics_table(results: Mapping[str, Mapping[str, Any]], task: str = "nodule",
                  with_references: bool = False) -> pd.DataFrame:
    """One row per run from :func:`ssmt_lib.evaluation.evaluate` results (``TrainResult.test``).

    Args:
        results: ``{run label: evaluate() dict}``.
        task: "nodule" or "gland".
        with_references: also one row per trivial predictor of the first result's images
            ("all-foreground", "all-background": Dice / IoU / pooled Dice; the size column holds the
            mean predictor's MAE), so the table shows its own floor.

    Returns:
        Numeric DataFrame: ``n``, per-image Dice / IoU mean and std (the paper's numbers), HD95
        mean and how many images it covers, pooled Dice, per size bucket the count and mean Dice,
        and the size MAE.
    """
    rows = {}
    for label, result in results.items():
        if task not in result:
            raise KeyError(f"run {label!r} has no {task!r} metrics; keys: {sorted(result)}")
        m = result[task]
        row = {k: m[k] for k in ("n", "dice_mean", "dice_std", "iou_mean", "iou_std", "hd95_mean", "hd95_count",
                                 "dice_pooled")}
        for bucket in SIZE_BUCKETS:
            row[f"{bucket}_n"] = m[f"{bucket}_n"]
            row[f"{bucket}_dice"] = m[f"{bucket}_dice_mean"]
        row["size_mae"] = result.get("size_mae", float("nan"))
        rows[label] = row
    if with_references:
        first = next(iter(results.values()))
        if task not in first.get("references", {}):
            raise KeyError(f"with_references: the result has no references for {task!r} (evaluate(references=True))")
        refs = first["references"][task]
        for name in ("all_foreground", "all_background"):
            row = {k: refs[name][k] for k in ("dice_mean", "iou_mean", "dice_pooled")}
            # the size floor (always the mean area) sits in the first reference row
            row["size_mae"] = refs["mean_predictor_mae"] if name == "all_foreground" else float("nan")
            rows[name.replace("_", "-")] = row
    return pd.DataFrame.from_dict(rows, orient="index")
