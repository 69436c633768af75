"""Paired differences over seeds and the verdicts built on them."""
import math

import pandas as pd
import pytest
from scipy import stats

from ssmt_lib.stats import paired_differences, verdict


def _runs(scores: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"variant": v, "seed": s, "dice": x} for v, xs in scores.items() for s, x in enumerate(xs)])


def test_paired_difference_matches_a_hand_computed_t_interval():
    runs = _runs({"base": [0.50, 0.60, 0.55], "new": [0.56, 0.65, 0.62]})
    row = paired_differences(runs, "dice", "variant", "base").loc["new"]
    d = [0.06, 0.05, 0.07]
    half = stats.t.ppf(0.975, 2) * pd.Series(d).std() / math.sqrt(3)
    assert row["n"] == 3 and row["diff"] == pytest.approx(0.06)
    assert row["low"] == pytest.approx(0.06 - half) and row["high"] == pytest.approx(0.06 + half)
    assert row["separates"] and "excludes 0" in verdict(row, "new", "base")
    assert row["baseline"] == pytest.approx(0.55) and row["mean"] == pytest.approx(0.61)


def test_pairing_removes_seed_to_seed_spread_and_noise_does_not_separate():
    # the seeds differ a lot, the variants by a constant: pairing sees the constant
    consistent = _runs({"a": [0.2, 0.5, 0.8], "b": [0.21, 0.51, 0.81]})
    assert paired_differences(consistent, "dice", "variant", "a").loc["b", "separates"]
    noisy = _runs({"a": [0.5, 0.6, 0.55], "b": [0.58, 0.52, 0.57]})
    row = paired_differences(noisy, "dice", "variant", "a").loc["b"]
    assert not row["separates"] and "cannot separate" in verdict(row, "b", "a")


def test_paired_differences_bad_input():
    runs = _runs({"a": [0.5], "b": [0.6]})
    one = paired_differences(runs, "dice", "variant", "a").loc["b"]
    assert one["n"] == 1 and math.isnan(one["low"]) and "no verdict" in verdict(one, "b", "a")
    with pytest.raises(ValueError, match="no run"):
        paired_differences(runs, "dice", "variant", "zzz")
    with pytest.raises(KeyError, match="iou"):
        paired_differences(runs, "iou", "variant", "a")
    with pytest.raises(ValueError, match="share one"):
        paired_differences(pd.concat([runs, runs]), "dice", "variant", "a")


def test_score_table_shows_the_floor_and_counts_runs_near_it():
    from ssmt_lib.stats import score_table

    runs = pd.DataFrame({
        "variant": ["a", "a", "b", "b"], "dice": [0.22, 0.60, 0.70, 0.80],
        "ref.all_foreground.dice": [0.2] * 4, "ref.all_background.dice": [0.05] * 4})
    table = score_table(runs, "variant", score="dice", floor="ref")
    assert table.loc["a", "dice"] == f"{0.41:.3f} +- {pd.Series([0.22, 0.6]).std():.3f}"
    assert table.loc["a", "runs near trivial"] == "1 of 2" and table.loc["b", "runs near trivial"] == "0 of 2"
    assert table.loc["b", "all-foreground"] == "0.200"
    with pytest.raises(KeyError, match="iou"):
        score_table(runs, "variant", score="iou", floor="ref")
