"""Two-phase training: run folder, checkpoints, resume determinism, non-finite stop, CLI, training views.

Everything runs the tiny preset at 32 px on 16 phantom images (val/test: 8 each), 1-2 epochs.
"""
import json

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

import ssmt_lib.train as train_module
from ssmt_lib.__main__ import main
from ssmt_lib.config import make_config
from ssmt_lib.metrics import trivial_references
from ssmt_lib.checkpoints import load_checkpoint, model_from_checkpoint
from ssmt_lib.evaluation import evaluate
from ssmt_lib.loaders import build_data, make_loader
from ssmt_lib.train import NonFiniteLossError, fit
from ssmt_lib.viz.training import (
    compare_runs,
    history_frame,
    metrics_table,
    plot_history,
    show_predictions,
    show_reconstructions,
)

SIZE, N = 32, 16
LOSS_KEYS = ("loss", "nodule", "gland", "size", "rec", "lr")


def _cfg(**overrides):
    base = {"model__image_size": SIZE, "train__epochs_pretrain": 1, "train__epochs": 2, "train__batch_size": 8}
    return make_config("tiny", **{**base, **overrides})


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    """One uninterrupted run: 1 pretrain epoch + 2 supervised epochs."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("unbroken")
    return fit(_cfg(), out_dir=out, progress=False, phantom_n=N), out


def _losses(history):
    return [{k: r[k] for k in ("phase", "epoch", *LOSS_KEYS) if k in r} for r in history]


def test_fit_writes_run_folder(unbroken):
    result, out = unbroken
    assert {p.name for p in out.iterdir()} >= {"last.pt", "best.pt", "metrics.json", "history.csv"}
    assert [(r["phase"], r["epoch"]) for r in result.history] == [(1, 1), (2, 1), (2, 2)]
    # phase 1 trains only L_rec (eq. 13) and logs it unweighted as the total
    assert result.history[0]["loss"] == result.history[0]["rec"] and result.history[0]["nodule"] == 0.0
    assert all("val_nodule_dice" in r for r in result.history[1:]) and "val_nodule_dice" not in result.history[0]
    table = pd.read_csv(out / "history.csv")
    assert len(table) == 3 and {"phase", "epoch", "loss", "rec", "val_nodule_dice"} <= set(table.columns)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"config", "history", "best", "test"}
    assert metrics["config"]["model"]["image_size"] == SIZE
    assert metrics["best"] == result.best and 0 <= result.best["epoch"] < 2
    assert metrics["test"]["nodule"]["n"] == 8 == result.test["nodule"]["n"]
    assert metrics["test"]["nodule"]["dice_mean"] == pytest.approx(result.test["nodule"]["dice_mean"])


def test_checkpoints_load_with_weights_only(unbroken):
    result, out = unbroken
    last = torch.load(out / "last.pt", weights_only=True)
    best = torch.load(out / "best.pt", weights_only=True)
    assert {"model", "config", "history", "best", "rng", "optimizer", "scheduler"} <= set(last)
    assert (last["next_phase"], last["next_epoch"]) == (3, 0)  # finished
    assert len(best["history"]) == result.best["epoch"] + 2  # phase-1 record + phase-2 epochs up to the best
    model, cfg, _ = model_from_checkpoint(out / "last.pt")
    assert cfg.model.image_size == SIZE and not model.training
    final = result.model.state_dict()
    assert all(torch.equal(v, final[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kill_after", [1, 2])
def test_killed_run_resumes_to_unbroken_result(unbroken, tmp_path, kill_after):
    """Kill after epoch ``kill_after`` (1 = the phase boundary, 2 = inside phase 2), resume, compare."""
    result, _ = unbroken
    seen = []

    def kill(record):  # callbacks run after last.pt is written
        seen.append(record)
        if len(seen) == kill_after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(_cfg(), out_dir=tmp_path, progress=False, phantom_n=N, callbacks=(kill,))
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert len(ckpt["history"]) == kill_after
    assert (ckpt["next_phase"], ckpt["next_epoch"]) == ((2, 0) if kill_after == 1 else (2, 1))

    resumed = fit(_cfg(), out_dir=tmp_path, progress=False, phantom_n=N)
    expected, got = result.model.state_dict(), resumed.model.state_dict()
    assert expected.keys() == got.keys()
    unequal = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not unequal, f"weights differ after resume: {unequal[:5]}"
    assert _losses(resumed.history) == _losses(result.history)
    assert resumed.best == result.best
    assert resumed.test["nodule"]["dice_mean"] == result.test["nodule"]["dice_mean"]


def test_resuming_a_finished_run_trains_nothing(unbroken):
    result, out = unbroken
    calls = []
    again = fit(_cfg(), out_dir=out, progress=False, phantom_n=N, callbacks=(calls.append,))
    assert calls == []  # no epoch ran
    assert again.history == result.history and again.best == result.best
    assert again.test["nodule"]["dice_mean"] == result.test["nodule"]["dice_mean"]


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    real = train_module.total_loss

    def nan_in_phase_2(out, batch, cfg, phase=2):
        loss, parts = real(out, batch, cfg, phase=phase)
        return (loss * float("nan"), parts) if phase == 2 else (loss, parts)

    monkeypatch.setattr(train_module, "total_loss", nan_in_phase_2)
    saved = {}

    def remember(record):  # called after last.pt of the (good) phase-1 epoch is written
        saved["bytes"] = (tmp_path / "last.pt").read_bytes()

    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .* phase 2, epoch 1, step 0") as err:
        fit(_cfg(train__epochs=1), out_dir=tmp_path, progress=False, phantom_n=N, callbacks=(remember,))
    assert str(tmp_path / "last.pt") in str(err.value)
    assert (tmp_path / "last.pt").read_bytes() == saved["bytes"]
    assert load_checkpoint(tmp_path / "last.pt")["next_phase"] == 2
    assert not (tmp_path / "best.pt").exists() and not (tmp_path / "metrics.json").exists()


def test_huge_learning_rate_raises_non_finite(tmp_path):
    with pytest.raises(NonFiniteLossError, match="lower train.lr"):
        fit(_cfg(train__lr=1e30, train__epochs=1), out_dir=tmp_path / "run", progress=False, phantom_n=N)
    assert not (tmp_path / "run" / "last.pt").exists()  # it blew up inside the first epoch


def test_config_errors_stop_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="sum to 1"):
        make_config("tiny", loss__alpha=0.5)
    with pytest.raises(KeyError, match="epochz"):
        make_config("tiny", train__epochz=3)
    with pytest.raises(TypeError, match="train.epochs"):
        make_config("tiny", train__epochs="3")
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="alpha"):
        main(["train", "--set", "loss.alpha=0.5", "--out", str(out), "--no-progress"])
    with pytest.raises(ValueError, match="nope"):
        fit(_cfg(), data="nope", out_dir=out, progress=False)
    assert not out.exists()


def test_label_fraction_keeps_a_seeded_subset_of_masks():
    full = build_data("phantom", image_size=SIZE, phantom_n=N)
    part = build_data("phantom", image_size=SIZE, phantom_n=N, label_fraction=0.25)
    again = build_data("phantom", image_size=SIZE, phantom_n=N, label_fraction=0.25)
    assert len(full["train"]) == N and len(part["train"]) == 4
    assert len(part["unlabeled"]) == N  # phase 1 still sees every training image
    assert part["train"].indices == again["train"].indices and len(set(part["train"].indices)) == 4


def test_freeze_encoder_changes_only_decoders(unbroken, tmp_path):
    _, out = unbroken
    start = load_checkpoint(out / "last.pt")["model"]
    cfg = _cfg(train__freeze_encoder=True, train__epochs_pretrain=0, train__epochs=1, train__lr=1e-2)
    result = fit(cfg, out_dir=None, progress=False, phantom_n=N, init_checkpoint=out / "last.pt",
                 evaluate_test=False)
    after = result.model.state_dict()
    encoder = [k for k in after if k.startswith("encoder.")]
    assert encoder and all(torch.equal(after[k], start[k]) for k in encoder)
    changed = [k for k in after if not k.startswith("encoder.") and not torch.equal(after[k], start[k])]
    assert any(k.startswith("cnn_decoders.") for k in changed), changed[:5]


def test_evaluate_returns_metrics_per_task(unbroken):
    _, out = unbroken
    model, cfg, _ = model_from_checkpoint(out / "best.pt")
    data = build_data("phantom", image_size=SIZE, phantom_n=N, seed=cfg.train.seed)
    result = evaluate(model, make_loader(data["val"], 4, False, 0))
    assert set(result) == {"nodule", "gland", "size_mae", "rows", "references"}
    for task in ("nodule", "gland"):
        rows = result["rows"][task]
        assert result[task]["n"] == len(rows) == len(data["val"])
        assert result[task]["dice_mean"] == pytest.approx(sum(r["dice"] for r in rows) / len(rows))
        # the floors are the trivial predictors on the same images
        assert result["references"][task] == trivial_references(make_loader(data["val"], 4, False, 0), task)
    assert 0.0 <= result["size_mae"] <= 1.0
    # images without labels count for no task
    unlabeled = evaluate(model, make_loader(data["unlabeled"], 4, False, 0), compute_hd95=False)
    assert "nodule" not in unlabeled and "gland" not in unlabeled and unlabeled["size_mae"] != unlabeled["size_mae"]


def test_cli_train_then_evaluate(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["train", "--preset", "tiny", "--data", "phantom", "--phantom-n", "16", "--epochs-pretrain", "1",
                 "--epochs", "1", "--set", f"model.image_size={SIZE}", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == {"out", "best", "stopped_early", "test_nodule", "test_references"}
    assert summary["best"]["epoch"] == 0 and "all_foreground" in summary["test_references"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["train"]["epochs"] == 1 and len(metrics["history"]) == 2
    assert summary["test_nodule"]["dice_mean"] == pytest.approx(metrics["test"]["nodule"]["dice_mean"])

    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data", "phantom"]) == 0
    written = json.loads((out / "eval_phantom_test.json").read_text())
    assert {"nodule", "gland", "size_mae", "checkpoint", "data", "split"} <= set(written)
    assert written["split"] == "test" and written["nodule"]["n"] > 0 and "rows" not in written
    assert 0.0 <= written["nodule"]["dice_mean"] <= 1.0


# ----------------------------------------------------------------------------- training views


def _close(fig: Figure) -> None:
    assert isinstance(fig, Figure)
    fig.canvas.draw()  # renders without error


def test_plot_history_one_panel_per_trained_term(unbroken):
    result, _ = unbroken
    fig = plot_history(result.history)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert len(titles) == 6 and titles[-1].startswith("validation")  # loss, nodule, gland, size, rec + val
    rec_ax = next(ax for ax in fig.axes if ax.get_title().startswith("L_rec"))
    curves = {line.get_label(): len(line.get_xdata()) for line in rec_ax.get_lines() if line.get_marker() == "o"}
    assert curves == {"phase 1": 1, "phase 2": 2}
    nodule_ax = next(ax for ax in fig.axes if ax.get_title() == "L_nodule")
    curves = {line.get_label(): len(line.get_xdata()) for line in nodule_ax.get_lines() if line.get_marker() == "o"}
    assert curves == {"phase 2": 2}  # no phase-1 placeholder zeros
    _close(fig)
    frame = history_frame(list(reversed(result.history)))
    assert frame["step"].tolist() == [1, 2, 3] and frame["phase"].tolist() == [1, 2, 2]
    with pytest.raises(ValueError, match="empty"):
        plot_history([])


def test_compare_runs_aligns_phase_two(unbroken):
    result, _ = unbroken
    only_phase_2 = [dict(r, epoch=r["epoch"]) for r in result.history if r["phase"] == 2]
    fig = compare_runs({"with phase 1": result.history, "without": only_phase_2})
    first = fig.axes[0]
    assert [list(line.get_xdata()) for line in first.get_lines()] == [[1, 2], [1, 2]]
    _close(fig)


def test_show_predictions_titles_carry_dice():
    images = torch.zeros(2, 3, 16, 16)
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, 4:8, 4:8] = 1
    logits = torch.full((2, 1, 16, 16), -5.0)
    logits[0, :, 4:8, 4:8] = 5.0  # exact hit
    logits[1, :, 4:8, 4:6] = 5.0  # half of the nodule: Dice = 2*8 / (8+16)
    fig = show_predictions(images, masks, logits)
    titles = [ax.get_title() for ax in fig.axes]
    assert "Dice 1.00" in titles and f"Dice {2 * 8 / 24:.2f}" in titles
    _close(fig)
    with pytest.raises(ValueError, match="masks and logits"):
        show_predictions(images, masks, logits[:, :, :8])


def test_show_reconstructions_rows_and_errors():
    images = torch.randn(3, 3, 16, 16)
    fig = show_reconstructions(images, {"same": images.clone(), "zeros": torch.zeros_like(images)}, n=2)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 6 and titles.count("L_rec 0.000") == 2  # perfect reconstruction row
    _close(fig)
    with pytest.raises(ValueError, match="shape"):
        show_reconstructions(images, images[:, :1])


def test_metrics_table_matches_evaluate(unbroken):
    result, _ = unbroken
    table = metrics_table({"run": result.test})
    assert table.loc["run", "dice_mean"] == result.test["nodule"]["dice_mean"]
    assert table.loc["run", "n"] == sum(table.loc["run", f"{b}_n"] for b in ("empty", "small", "medium", "large"))
    with pytest.raises(KeyError, match="no 'gland'"):
        metrics_table({"run": {"nodule": result.test["nodule"]}}, task="gland")


def test_build_data_without_intensity_augmentation():
    """The paper's augmentations only (Sec. 3.1): brightness/contrast and gamma jitter switched off."""
    import albumentations as A

    def intensity_probs(ds) -> list[float]:
        return [t.p for t in ds.transform.transforms if isinstance(t, (A.RandomBrightnessContrast, A.RandomGamma))]

    on = build_data("phantom", image_size=32, phantom_n=8)
    off = build_data("phantom", image_size=32, phantom_n=8, intensity_aug=False)
    assert intensity_probs(on["train"].datasets[0]) == [0.5, 0.5]
    assert intensity_probs(off["train"].datasets[0]) == [0.0, 0.0]
    assert intensity_probs(off["unlabeled"].datasets[0]) == [0.0, 0.0]  # phase 1 too
