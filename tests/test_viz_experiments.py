"""The experiment views build figures from their tables and refuse empty input."""
import io

import pandas as pd
import pytest
from matplotlib.figure import Figure

from ssmt_lib.stats import paired_differences
from ssmt_lib.viz.experiments import plot_gradient_norms, plot_paired_differences, plot_scores_with_references


def test_gradient_norm_bars_one_per_stage_and_term():
    fig = plot_gradient_norms({"init": {"nodule": 1.0, "size": 1e-4}, "trained": {"nodule": 0.1, "size": 1e-3}})
    fig.savefig(io.BytesIO(), format="png")
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and ax.get_yscale() == "log" and len(ax.patches) == 4
    with pytest.raises(ValueError):
        plot_gradient_norms({})


def test_forest_plot_marks_separating_intervals():
    runs = pd.DataFrame([{"v": v, "seed": s, "d": x} for v, xs in {"a": [0.5, 0.6, 0.7], "b": [0.6, 0.7, 0.8],
                                                                   "c": [0.55, 0.58, 0.71]}.items()
                         for s, x in enumerate(xs)])
    table = paired_differences(runs, "d", "v", "a")
    fig = plot_paired_differences(table)
    fig.savefig(io.BytesIO(), format="png")  # drawing is where bad colours or shapes fail
    ticks = {t.get_text(): t.get_position()[1] for t in fig.axes[0].get_yticklabels()}
    assert ticks["b (n=3)"] > ticks["c (n=3)"]  # the table's first row on top
    with pytest.raises(ValueError):
        plot_paired_differences(table.iloc[:0])


def test_scores_with_references_draws_the_floor():
    runs = pd.DataFrame({"g": ["x", "x", "y"], "s": [0.5, 0.6, 0.7], "fg": [0.2, 0.2, 0.2], "bg": [0.1] * 3})
    fig = plot_scores_with_references(runs, "g", "s", "fg", "bg", title="t")
    fig.savefig(io.BytesIO(), format="png")
    lines = [l.get_ydata()[0] for l in fig.axes[0].get_lines()]
    assert pytest.approx(0.2) in lines and pytest.approx(0.1) in lines


def test_metrics_table_with_references_adds_the_floor_rows():
    from ssmt_lib.viz.training import metrics_table

    nodule = {k: 0.5 for k in ("n", "dice_mean", "dice_std", "iou_mean", "iou_std", "hd95_mean", "hd95_count",
                               "dice_pooled")}
    nodule.update({f"{b}_{k}": 0.5 for b in ("empty", "small", "medium", "large") for k in ("n", "dice_mean")})
    refs = {"all_foreground": {"dice_mean": 0.2, "iou_mean": 0.1, "dice_pooled": 0.2},
            "all_background": {"dice_mean": 0.0, "iou_mean": 0.0, "dice_pooled": 0.0}, "mean_predictor_mae": 0.05}
    table = metrics_table({"run": {"nodule": nodule, "size_mae": 0.03, "references": {"nodule": refs}}},
                          with_references=True)
    assert list(table.index) == ["run", "all-foreground", "all-background"]
    assert table.loc["all-foreground", "dice_mean"] == 0.2 and table.loc["all-foreground", "size_mae"] == 0.05
    with pytest.raises(KeyError, match="references"):
        metrics_table({"run": {"nodule": nodule}}, with_references=True)
