"""Views of experiments: which task drives the encoder, paired differences over seeds, scores
with their trivial floors.

* :func:`plot_gradient_norms`: the per-task gradient norms of eq. 12's weighted terms on the
  shared encoder (:func:`ssmt_lib.diagnostics.task_gradient_norms`), one group of bars per
  stage of training, on a log axis (they differ by orders of magnitude).
* :func:`plot_paired_differences`: a forest plot of :func:`ssmt_lib.stats.paired_differences`:
  one row per comparison, the mean paired difference over seeds with its interval, and 0 drawn, so
  a reader sees at once which intervals exclude it.
* :func:`plot_scores_with_references`: per-run scores (dots) and their mean per group, with the
  all-foreground and all-background references of the same test images as lines.

Every function is pure: it builds and returns a new :class:`matplotlib.figure.Figure`.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["plot_gradient_norms", "plot_paired_differences", "plot_scores_with_references"]

_TERM_COLORS = {"nodule": "tab:red", "gland": "tab:green", "size": "tab:orange", "rec": "tab:purple"}


def plot_gradient_norms(norms: Mapping[str, Mapping[str, float]], title: str = "") -> Figure:
    """Grouped bars of ``{stage: {term: norm}}`` on a log axis.

    Args:
        norms: e.g. ``{"random init": {...}, "after training": {...}}`` from ``task_gradient_norms``.
        title: figure title.
    """
    stages = list(norms)
    terms = [t for t in _TERM_COLORS if any(t in norms[s] for s in stages)]
    if not stages or not terms:
        raise ValueError("plot_gradient_norms needs at least one stage with one term")
    fig = Figure(figsize=(1.6 + 1.4 * len(stages), 3.0))
    ax = fig.add_subplot()
    width = 0.8 / len(terms)
    x = np.arange(len(stages))
    for i, term in enumerate(terms):
        values = [norms[s].get(term, np.nan) for s in stages]
        bars = ax.bar(x + (i - (len(terms) - 1) / 2) * width, values, width, color=_TERM_COLORS[term], label=term)
        ax.bar_label(bars, fmt="%.1e", fontsize=6, padding=1, rotation=90)
    ax.set_yscale("log")
    ax.set_xticks(x, stages)
    ax.set_ylabel("||d(w_t L_t) / d encoder||")
    ax.legend(fontsize=7, ncols=len(terms), loc="lower left")
    ax.set_title(title or "which task drives the shared encoder (eq. 12 weighted terms)", fontsize=9)
    ax.margins(y=0.25)
    return fig


def plot_paired_differences(table: pd.DataFrame, title: str = "", xlabel: str = "paired difference") -> Figure:
    """Forest plot of a :func:`~ssmt_lib.stats.paired_differences` table (or several concatenated).

    Args:
        table: rows indexed by comparison name with ``diff``, ``low``, ``high``, ``n``, ``separates``.
        title: figure title.
        xlabel: axis label (what was subtracted from what).
    """
    if table.empty:
        raise ValueError("plot_paired_differences got an empty table")
    fig = Figure(figsize=(6.2, 0.5 + 0.42 * len(table)))
    ax = fig.add_subplot()
    y = np.arange(len(table))[::-1]
    colors = ["tab:blue" if s else "tab:gray" for s in table["separates"]]
    for yi, color, (_, row) in zip(y, colors, table.iterrows()):
        err = np.nan_to_num([[row["diff"] - row["low"]], [row["high"] - row["diff"]]])  # (2, 1): no interval = 0
        ax.errorbar(row["diff"], yi, xerr=err, fmt="o", color=color, capsize=3)
    ax.axvline(0.0, color="k", lw=0.8)
    labels = [f"{name} (n={int(n)})" for name, n in zip(table.index.astype(str), table["n"])]
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title or "mean paired difference over seeds, 95% interval (blue: excludes 0)", fontsize=9)
    return fig


def plot_scores_with_references(runs: pd.DataFrame, group: str, score: str, foreground: str,
                                background: str | None = None, title: str = "",
                                order: list | None = None) -> Figure:
    """Per-run scores by group, the group means, and the trivial references as horizontal lines.

    Args:
        runs: one row per run.
        group: the column to group by (e.g. ``"variant"``).
        score: the column with the run's score (e.g. ``"test.nodule.dice_mean"``).
        foreground: the column with the all-foreground reference of the same test images.
        background: the column with the all-background reference (optional).
        title: figure title.
        order: the groups in display order (default: order of appearance).
    """
    order = order or list(dict.fromkeys(runs[group]))
    fig = Figure(figsize=(1.5 + 1.1 * len(order), 3.2))
    ax = fig.add_subplot()
    for i, g in enumerate(order):
        values = runs.loc[runs[group] == g, score].to_numpy(dtype=float)
        ax.scatter(np.full(len(values), i) + np.linspace(-0.12, 0.12, len(values)), values, s=14, color="k", zorder=3)
        ax.hlines(values.mean(), i - 0.3, i + 0.3, color="tab:blue", lw=2)
        ax.annotate(f"{values.mean():.3f}", (i, values.mean()), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=7, color="tab:blue")
    ax.axhline(runs[foreground].mean(), color="tab:red", ls="--", lw=1, label="all-foreground (same images)")
    if background is not None:
        ax.axhline(runs[background].mean(), color="tab:gray", ls=":", lw=1, label="all-background")
    ax.set_xticks(range(len(order)), [str(g) for g in order], fontsize=8)
    ax.set_ylabel(score.split(".")[-1])
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    return fig
