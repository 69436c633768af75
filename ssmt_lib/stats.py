"""Comparisons over training seeds: paired differences with a confidence interval, and honest verdicts.

A difference between two variants means something only when it is large against how much a
result moves when only the training seed changes. Runs that share a seed share the phantom
patients, the labelled subset and the initial data order, so the right unit is the *paired*
difference per seed, ``d_s = score(B, s) - score(A, s)``; its mean over S seeds gets Student's t
interval ``mean(d) +- t_{S-1, 0.975} * sd(d) / sqrt(S)``. The interval is across seeds (what a
new training run would do), not across test images (which would only say how well one trained
model is measured). With S = 3 seeds t is 4.30, so only large, consistent effects separate: the
verdict text says so instead of ranking noise.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats


def paired_differences(runs: pd.DataFrame, metric: str, column: str, baseline: Any,
                       pair_on: str = "seed", confidence: float = 0.95) -> pd.DataFrame:
    """Per value of ``column``, the mean paired difference to ``baseline`` over seeds, with its interval.

    Args:
        runs: one row per run, with columns ``column``, ``pair_on`` and ``metric``.
        metric: the score to compare (higher is better, e.g. ``"test.nodule.dice_mean"``).
        column: what the runs differ in (e.g. ``"variant"``).
        baseline: the value of ``column`` every other value is compared with.
        pair_on: the column that pairs runs (the seed).
        confidence: coverage of the t interval.

    Returns:
        One row per other value of ``column`` (in order of appearance): ``n`` (paired seeds),
        ``mean`` (of ``metric``), ``baseline`` (its mean on the same seeds), ``diff``, ``low``,
        ``high`` (the interval of the mean difference; NaN with fewer than 2 seeds) and
        ``separates`` (the interval excludes 0).
    """
    for name in (metric, column, pair_on):
        if name not in runs.columns:
            raise KeyError(f"paired_differences: no column {name!r}; columns: {sorted(runs.columns)}")
    if not (runs[column] == baseline).any():
        raise ValueError(f"paired_differences: no run has {column} = {baseline!r}")
    if runs.duplicated([column, pair_on]).any():
        raise ValueError(f"paired_differences: several runs share one ({column}, {pair_on}); aggregate them first")
    wide = runs.pivot(index=pair_on, columns=column, values=metric)  # (seeds, values of column)
    rows = []
    for value in dict.fromkeys(runs[column]):
        if value == baseline:
            continue
        pair = wide[[baseline, value]].dropna()
        d = (pair[value] - pair[baseline]).to_numpy(dtype=float)
        n = len(d)
        mean = float(d.mean()) if n else math.nan
        half = math.nan
        if n >= 2:
            half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
        rows.append({column: value, "n": n, "mean": float(pair[value].mean()) if n else math.nan,
                     "baseline": float(pair[baseline].mean()) if n else math.nan, "diff": mean,
                     "low": mean - half, "high": mean + half,
                     "separates": bool(n >= 2 and (mean - half > 0 or mean + half < 0))})
    return pd.DataFrame(rows).set_index(column)


def verdict(row: pd.Series | dict[str, Any], name: str, baseline_name: str, digits: int = 3) -> str:
    """One sentence that claims no more than the interval supports."""
    diff, low, high, n = row["diff"], row["low"], row["high"], int(row["n"])
    interval = f"{diff:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}] over {n} seeds"
    if n < 2 or np.isnan(low):
        return f"{name} - {baseline_name}: {diff:+.{digits}f} from {n} seed(s); no interval, no verdict."
    if row["separates"]:
        better = "higher" if diff > 0 else "lower"
        return f"{name} - {baseline_name}: {interval}: the interval excludes 0, {name} scores {better}."
    return f"{name} - {baseline_name}: {interval}: the interval contains 0, these runs cannot separate them."


SCORE = "test.nodule.dice_mean"  # per-image test Dice of a run's best.pt (a column of experiments.collect)
FLOOR = "test.references.nodule"  # its trivial predictors' scores on the same images


def score_table(runs: pd.DataFrame, group: str, order: list | None = None, score: str = SCORE,
                floor: str = FLOOR, margin: float | None = None, digits: int = 3) -> pd.DataFrame:
    """Mean +- std over seeds of a score per group, with the trivial references of the same images.

    Args:
        runs: one row per run (``experiments.collect`` or a stored ``runs.csv``).
        group: the column that names the compared settings (e.g. ``"variant"``).
        order: groups in display order (default: order of appearance).
        score: the per-run score column (higher is better).
        floor: the prefix of the reference columns (``<floor>.all_foreground.dice_mean`` ...).
        margin: how far above the best reference a run must be (default ``metrics.REFERENCE_MARGIN``).
        digits: decimals in the formatted cells.

    Returns:
        One row per group: ``seeds``, ``score`` ("mean +- std"), ``all-foreground``,
        ``all-background`` (means over the same runs' test images) and ``runs near trivial``
        ("k of n": runs whose score does not clear the best reference by ``margin``).
    """
    from ssmt_lib.metrics import REFERENCE_MARGIN

    margin = REFERENCE_MARGIN if margin is None else margin
    metric = score.rsplit(".", 1)[-1]
    fg, bg = f"{floor}.all_foreground.{metric}", f"{floor}.all_background.{metric}"
    for name in (group, score, fg, bg):
        if name not in runs.columns:
            raise KeyError(f"score_table: no column {name!r}")
    order = order or list(dict.fromkeys(runs[group]))
    fmt = f"{{:.{digits}f}}"
    rows = []
    for g in order:
        sel = runs[runs[group] == g]
        values = sel[score].astype(float)
        near = int((values < sel[[fg, bg]].max(axis=1) + margin).sum())
        rows.append({group: g, "seeds": len(sel),
                     metric: f"{fmt.format(values.mean())} +- {fmt.format(values.std(ddof=1) if len(sel) > 1 else 0.0)}",
                     "all-foreground": fmt.format(sel[fg].mean()), "all-background": fmt.format(sel[bg].mean()),
                     "runs near trivial": f"{near} of {len(sel)}"})
    return pd.DataFrame(rows).set_index(group)
