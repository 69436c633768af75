"""Joint nodule mask + TI-RADS model: metrics by hand, bad configs, every method, checkpoint + CLI."""
import json

import numpy as np
import pytest
import torch

from ssmt_lib.__main__ import main
from ssmt_lib.checkpoints import model_from_checkpoint
from ssmt_lib.config import make_config
from ssmt_lib.tirads_data import tirads_data
from ssmt_lib.tirads_metrics import majority_tirads, tirads_metrics
from ssmt_lib.tirads_model import METHODS, TiradsNet, tirads_config
from ssmt_lib.train import fit

CFG = make_config("tiny", model__image_size=32, train__epochs=1, train__batch_size=8)


@pytest.fixture(scope="module")
def data():
    return tirads_data("phantom", image_size=32, seed=0, phantom_n=48)


def test_metrics_by_hand():
    y = np.array([0, 0, 1, 2, 2, 2])
    p = np.eye(3)[[0, 1, 1, 2, 2, 0]]  # predictions 0 1 1 2 2 0: 4 of 6 right
    m = tirads_metrics(y, p, 3)
    assert m["tirads_accuracy"] == pytest.approx(4 / 6)
    # per-class F1: class 0 (tp 1, fp 1, fn 1) 0.5; class 1 (tp 1, fp 1) 2/3; class 2 (tp 2, fn 1) 0.8
    assert m["tirads_macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert tirads_metrics(y, np.eye(3)[y], 3)["tirads_kappa"] == pytest.approx(1.0)
    ref = majority_tirads(y, np.array([2, 2, 1]), 3)
    assert ref["majority_class"] == 2 and ref["tirads_accuracy"] == pytest.approx(0.5)
    assert ref["tirads_auc"] == 0.5 and ref["tirads_kappa"] == 0.0
    assert ref["tirads_macro_f1"] == pytest.approx((2 * 0.5 / 1.5) / 3)
    with pytest.raises(ValueError, match="labels must be in"):
        tirads_metrics(np.array([3]), np.ones((1, 3)) / 3, 3)


@pytest.mark.parametrize("options,match", [({"rlar_tau": 1.5}, "rlar_tau"), ({"rlar_lambda": -1.0}, "rlar_lambda"),
                                           ({"method": "gradnorm"}, "method"), ({"encoder": "vit"}, "encoder"),
                                           ({"colour": 1}, "unknown TI-RADS model option")])
def test_bad_config_raises_before_any_work(options, match, monkeypatch):
    import ssmt_lib.train_tirads as TT

    monkeypatch.setattr(TT, "tirads_data", lambda *a, **k: pytest.fail("data was built before the config check"))
    with pytest.raises(ValueError, match=match):
        fit(CFG, task="tirads", data="phantom", model_options=options, progress=False)


def test_data_without_tirads_labels_raises_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="needs TI-RADS labels, and data 'tn3k' has none"):
        fit(CFG, task="tirads", data="tn3k", data_root=tmp_path / "missing", progress=False)
    with pytest.raises(ValueError, match="does not fit data 'phantom'"):
        fit(CFG, task="tirads", data="phantom", model_options={"labels": "ddti"}, progress=False)
    with pytest.raises(ValueError, match="model_options"):
        fit(CFG, task="tirads", data="phantom", model_name="unet", progress=False)


def test_dataset_items_and_radiomics_target(data):
    item = data["train"][0]
    assert item["image"].shape == (3, 32, 32) and item["nodule_mask"].shape == (1, 32, 32)
    t = data["train"].targets[np.isfinite(data["train"].targets).all(1)]
    assert len(t) >= 2 and np.allclose(t.mean(0), 0, atol=1e-5)  # standardised on the training rows
    labels = data["train"].labels
    assert set(np.unique(labels)) <= {-1, 0, 1, 2, 3, 4} and (labels >= 0).any()
    assert np.isnan(data["val"].raw_radiomics).all()  # evaluation splits carry no target


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains(method, data):
    torch.manual_seed(0)
    r = fit(CFG, task="tirads", datasets=data, model_options={"method": method}, progress=False)
    assert len(r.history) == 1 and r.steps and all(np.isfinite(s["loss_seg"]) for s in r.steps)
    if method in ("single_seg", "single_cls"):
        assert all(np.isnan(s["cos"]) for s in r.steps)
    else:
        assert all(-1 <= s["cos"] <= 1 for s in r.steps)  # the task cosine, logged every step
    for key in ("tirads_accuracy", "tirads_macro_f1", "tirads_auc", "tirads_kappa"):
        assert key in r.test and key in r.test["references"]["majority"]
    assert {"all_foreground", "all_background"} <= set(r.test["references"]["nodule"])
    assert 0 <= r.test["nodule"]["dice_mean"] <= 1


def test_rlar_changes_the_update(data):
    """Same seed and data: RLAR with a large lambda and tau = -1 gives other weights than equal weighting."""
    weights = {}
    for name, opts in {"equal": {"method": "equal"},
                       "rlar": {"method": "rlar", "rlar_lambda": 50.0, "rlar_tau": -1.0}}.items():
        torch.manual_seed(0)
        r = fit(CFG, task="tirads", datasets=data, model_options={**opts, "dropout": 0.0}, progress=False,
                evaluate_test=False)
        weights[name] = torch.cat([p.detach().flatten() for p in r.model.parameters()])
        if name == "rlar":
            assert all(s["rlar_penalty"] > 0 for s in r.steps)
    assert not torch.allclose(weights["equal"], weights["rlar"])


def test_ordinal_term_by_hand():
    from ssmt_lib.train_tirads import tirads_losses

    cfg = tirads_config(ordinal_weight=2.0, radiomics_weight=0.0, class_weight="none")
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25, 1e-9, 1e-9]]))  # P = (.5, .25, .25, 0, 0)
    out = {"tirads_logits": logits, "nodule_logits": torch.zeros(1, 1, 4, 4), "radiomics": torch.zeros(1, 16)}
    batch = {"has_nodule": torch.tensor([False]), "label": torch.tensor([2]), "has_radiomics": torch.tensor([False]),
             "nodule_mask": torch.zeros(1, 1, 4, 4), "radiomics": torch.zeros(1, 16)}
    # CDF (.5, .75, 1, 1, 1) vs (0, 0, 1, 1, 1): squared EMD .25 + .5625; CE -log .25
    expected = -np.log(0.25) + 2.0 * (0.25 + 0.5625)
    assert tirads_losses(out, batch, cfg, None)["cls"].item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="ordinal_weight"):
        tirads_config(ordinal_weight=-1.0)


def test_cnn_encoder_shapes():
    net = TiradsNet(tirads_config(encoder="cnn"), image_size=32)
    out = net(torch.randn(2, 3, 32, 32))
    assert out["nodule_logits"].shape == (2, 1, 32, 32) and out["tirads_logits"].shape == (2, 5)
    assert out["z"].shape[0] == 2 and out["radiomics"].shape == (2, 16)


def test_cli_train_resume_and_evaluate(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--task", "tirads", "--data", "phantom", "--phantom-n", "48", "--set", "model.image_size=32",
            "--epochs", "1", "--batch-size", "8", "--model-option", "method=pcgrad", "--out", str(run), "--no-progress"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert "tirads_macro_f1" in printed["test"] and "majority" in printed["test"]
    model, _, ckpt = model_from_checkpoint(run / "best.pt")
    assert ckpt["task"] == "tirads" and ckpt["model_config"]["method"] == "pcgrad"
    assert main(args[:-3] + ["--epochs", "2", "--out", str(run), "--no-progress"]) == 0  # resumes, one more epoch
    capsys.readouterr()
    hist = (run / "history.csv").read_text().strip().splitlines()
    assert len(hist) == 3  # header + 2 epochs
    assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--split", "test"]) == 0
    ev = json.loads(capsys.readouterr().out)
    for key in ("tirads_accuracy", "tirads_macro_f1", "tirads_auc", "tirads_kappa"):
        assert key in ev and key in ev["majority"]
    assert "dice_mean" in ev["nodule"] and "all_foreground" in ev["nodule_references"]
    with pytest.raises(ValueError, match="another TI-RADS model configuration"):
        main(args[:-4] + ["method=rlar", "--out", str(run), "--no-progress"])


@pytest.mark.parametrize("labels,k", [("ddti", 6), ("ddti_grouped", 4)])
def test_ddti_tirads_release_trains(tmp_path, labels, k):
    """The phantom exported as DDTI's XML release: six categories, or four ordered groups."""
    from ssmt_lib.data import phantom

    root = phantom.export_ddti_tirads(tmp_path / "ddti", 48, seed=1, config=phantom.PhantomConfig(image_size=64))
    r = fit(CFG, task="tirads", data="ddti_tirads", data_root=root, model_options={"labels": labels}, progress=False)
    assert r.model.config.num_classes == k and len(r.test["confusion_matrix"]) == k
    assert r.test["n"] >= 1 and "tirads_macro_f1" in r.test["references"]["majority"]
    with pytest.raises(ValueError, match="does not fit data 'ddti_tirads'"):
        fit(CFG, task="tirads", data="ddti_tirads", data_root=root, progress=False)  # default labels "acr"
