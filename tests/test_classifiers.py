"""Classifiers and segmenters of the dual-stage paper, classification metrics, Grad-CAM, classifier training."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from ssmt_lib import build_model
from ssmt_lib.checkpoints import model_from_checkpoint
from ssmt_lib.classification_metrics import classification_metrics, majority_reference, with_reference
from ssmt_lib.classifiers import (
    CLASSIFIER_NAMES,
    Classifier,
    build_classifier,
    class_weights,
    load_local_weights,
    make_classifier_config,
)
from ssmt_lib.config import make_config
from ssmt_lib.outputs import ModelOutput
from ssmt_lib.segmenters import SEGMENTER_NAMES, Segmenter, build_segmenter
from ssmt_lib.train import fit
from ssmt_lib.viz.cam import grad_cam, occlusion_map

S = 64  # input side in these tests


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize("name", CLASSIFIER_NAMES)
def test_every_classifier_gives_two_logits(name):
    model = build_model(name, image_size=S).eval()
    assert isinstance(model, Classifier) and model.config.size == "tiny"
    with torch.no_grad():
        assert model(torch.randn(2, 3, S, S)).shape == (2, 2)
    assert model.cam_layer is not None


@pytest.mark.parametrize("name, reference", [("vgg16", torchvision.models.vgg16), ("vgg19", torchvision.models.vgg19),
                                             ("alexnet", torchvision.models.alexnet),
                                             ("resnet18", torchvision.models.resnet18),
                                             ("resnet34", torchvision.models.resnet34)])
def test_paper_size_is_torchvisions_network(name, reference):
    with torch.device("meta"):  # shapes only: no memory for 138M parameters
        ours = build_classifier(name, size="paper").net.state_dict()
        theirs = reference(weights=None, num_classes=2).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_zscore_input_makes_the_output_independent_of_gain_and_offset():
    model = build_classifier("resnet18", image_size=S).eval()
    x = torch.randn(2, 3, S, S)
    with torch.no_grad():
        assert torch.allclose(model(x), model(2.5 * x + 3.0), atol=1e-4)
    raw = build_classifier("resnet18", image_size=S, input_norm="none").eval()
    with torch.no_grad():
        assert not torch.allclose(raw(x), raw(2.5 * x + 3.0), atol=1e-3)


def test_hybrid_takes_other_sizes_by_resizing_positions():
    model = build_classifier("resnet18_transformer", image_size=S).eval()
    assert model.net.pos_embed.shape == (1, 1 + (S // 32) ** 2, 64)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 2 * S, S)).shape == (1, 2)


def test_classifier_config_is_validated():
    with pytest.raises(KeyError, match="unknown classifier 'vgg11'"):
        build_classifier("vgg11")
    with pytest.raises(ValueError, match="embed_dim=32 is not used by 'vgg16'"):
        build_classifier("vgg16", embed_dim=32)
    with pytest.raises(ValueError, match="image_size=100 must be a multiple of 32"):
        build_classifier("resnet18", image_size=100)
    with pytest.raises(ValueError, match="class_weight"):
        make_classifier_config("resnet18", class_weight="inverse")
    with pytest.raises(KeyError, match="unknown classifier override 'depthh'"):
        make_classifier_config("resnet18_transformer", depthh=3)
    with pytest.raises(FileNotFoundError, match="pretrained_file"):
        build_classifier("resnet18", pretrained_file="/nonexistent/resnet18.pth")


def test_pretrained_weights_load_from_a_local_file_without_the_head(tmp_path):
    source = build_classifier("resnet18", image_size=S, num_classes=5)  # another head, like ImageNet's
    path = tmp_path / "r18.pth"
    torch.save(source.net.state_dict(), path)
    model = build_classifier("resnet18", image_size=S, pretrained_file=str(path))
    assert torch.equal(model.net.conv1.weight, source.net.conv1.weight)
    assert model.net.fc.weight.shape == (2, 128)  # the new 2-class head stays random
    hybrid = build_classifier("resnet18_transformer", image_size=S, pretrained_file=str(path))
    assert torch.equal(hybrid.net.backbone.layer4[0].conv1.weight, source.net.layer4[0].conv1.weight)
    torch.save({k: v for k, v in source.net.state_dict().items() if not k.startswith("layer4")}, path)
    with pytest.raises(ValueError, match=rf"pretrained weights {path} do not fit .* missing"):
        build_classifier("resnet18", image_size=S, pretrained_file=str(path))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=rf"cannot read pretrained weights {path}"):
        load_local_weights(nn.Linear(2, 2), path)


def test_class_weights_are_balanced():
    w = class_weights([0, 0, 0, 1])
    assert torch.allclose(w, torch.tensor([4 / 6, 4 / 2]))
    assert torch.allclose(class_weights([0, 0]), torch.tensor([1.0, 1.0]))  # one class: nothing to balance
    assert torch.allclose(class_weights([0, 2, 2], num_classes=3), torch.tensor([1.0, 1.0, 0.5]))  # absent class: 1


@pytest.mark.parametrize("name", SEGMENTER_NAMES)
def test_every_segmenter_gives_a_nodule_map(name):
    model = build_model(name, image_size=S).eval()
    assert isinstance(model, Segmenter) and model.tasks == ("nodule",)
    with torch.no_grad():
        out = model(torch.randn(1, 3, S, S))
    assert isinstance(out, ModelOutput) and out.nodule_logits.shape == (1, 1, S, S)


def test_segmenter_config_is_validated():
    with pytest.raises(ValueError, match="channels=.* is not used by 'vgg16_unet'"):
        build_segmenter("vgg16_unet", channels=(4, 8, 16, 32, 64))
    with pytest.raises(ValueError, match="multiple of 32"):
        build_segmenter("vgg19_unet", image_size=48)
    with pytest.raises(ValueError, match="expects images of shape"):
        build_segmenter("deeplabv3plus", image_size=S)(torch.randn(1, 1, S, S))


# ----------------------------------------------------------------------------- metrics


def test_metrics_match_hand_counts():
    y = [1, 1, 1, 0, 0, 0, 0, 0]
    p = [0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.4, 0.05]  # TP 2, FN 1, FP 1, TN 4
    m = classification_metrics(y, p)
    assert m["confusion_matrix"] == [[4, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(6 / 8) and m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    pairs = [(a, b) for a in (0.9, 0.6, 0.2) for b in (0.7, 0.1, 0.3, 0.4, 0.05)]
    assert m["auc"] == pytest.approx(sum(a > b for a, b in pairs) / len(pairs))


def test_majority_reference_and_beats_flag():
    y = [0] * 9 + [1]
    ref = majority_reference(y)
    assert ref["majority_class"] == 0 and ref["accuracy"] == pytest.approx(0.9)
    assert ref["balanced_accuracy"] == 0.5 and ref["auc"] == 0.5 and ref["recall"] == 0.0
    assert majority_reference(y, train_labels=[1, 1, 0])["accuracy"] == pytest.approx(0.1)
    good = with_reference(y, [0.1] * 9 + [0.9])
    assert good["beats_majority"] and good["majority"]["accuracy"] == pytest.approx(0.9)
    constant = with_reference(y, [0.2] * 10)  # accuracy 0.9 like the reference, nothing learned
    assert constant["accuracy"] == pytest.approx(0.9) and not constant["beats_majority"]
    one_class = classification_metrics([0, 0], [0.2, 0.4])
    assert np.isnan(one_class["auc"]) and np.isnan(one_class["balanced_accuracy"])
    with pytest.raises(ValueError, match="labels must be 0"):
        classification_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="3 probabilities for 2 labels"):
        classification_metrics([0, 1], [0.1, 0.2, 0.3])


# ----------------------------------------------------------------------------- Grad-CAM and occlusion


class _TopLeft(nn.Module):
    """P(malignant) depends only on the top-left quadrant of the image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)  # 1x1: no pixel outside the quadrant reaches the score
        self.cam_layer = self.conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x).relu()  # (B, 2, H, W)
        h, w = a.shape[-2:]
        score = a[:, :, : h // 2, : w // 2].mean(dim=(1, 2, 3))  # (B,)
        return torch.stack([torch.zeros_like(score), score], dim=1)  # (B, 2)


def test_grad_cam_equals_the_hand_computation():
    torch.manual_seed(0)
    model, x = _TopLeft(), torch.rand(2, 3, 16, 16)
    acts = model.conv(x)
    acts.retain_grad()
    model_out = acts.relu()[:, :, :8, :8].mean(dim=(1, 2, 3)).sum()
    model_out.backward()
    cam = (acts.grad.mean(dim=(2, 3), keepdim=True) * acts).sum(1).relu().detach()  # (B, H, W) at full size
    cam = cam / cam.flatten(1).amax(1)[:, None, None]
    assert torch.allclose(grad_cam(model, x), cam, atol=1e-5)


def test_occlusion_sees_only_the_region_the_model_uses():
    torch.manual_seed(0)
    heat = occlusion_map(_TopLeft(), torch.rand(1, 3, 32, 32) + 0.5, patch=8, stride=8)
    assert heat.shape == (1, 32, 32) and heat[0, :16, :16].max() == 1.0
    assert heat[0, 16:, :].abs().max() == 0 and heat[0, :, 16:].abs().max() == 0


def test_grad_cam_on_a_library_classifier():
    maps = grad_cam(build_classifier("vgg16", image_size=S), torch.randn(2, 3, S, S))
    assert maps.shape == (2, S, S) and float(maps.min()) >= 0 and float(maps.max()) <= 1


# ----------------------------------------------------------------------------- training


def _cfg(epochs: int = 2):
    return make_config("tiny", model__image_size=S, train__epochs=epochs, train__batch_size=8)


def test_fit_classify_writes_a_run_and_rebuilds_the_classifier(tmp_path):
    run = fit(_cfg(), task="classify", model_name="resnet18", out_dir=tmp_path / "run", progress=False, phantom_n=24)
    assert [r["epoch"] for r in run.history] == [1, 2]
    assert {"loss", "val_auc", "val_balanced_accuracy", "val_score"} <= set(run.history[0])
    for key in ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "auc"):
        assert key in run.test and key in run.test["majority"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["model_name"] == "resnet18" and saved["test"]["n"] == run.test["n"]
    model, cfg, ckpt = model_from_checkpoint(tmp_path / "run" / "best.pt")
    assert isinstance(model, Classifier) and ckpt["task"] == "classify" and model.config.image_size == S


def test_killed_classifier_run_resumes_to_the_same_weights(tmp_path):
    full = fit(_cfg(3), task="classify", model_name="resnet18", out_dir=tmp_path / "a", progress=False,
               phantom_n=16, evaluate_test=False)

    def kill(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(_cfg(3), task="classify", model_name="resnet18", out_dir=tmp_path / "b", progress=False, phantom_n=16,
            evaluate_test=False, callbacks=(kill,))
    resumed = fit(_cfg(3), task="classify", model_name="resnet18", out_dir=tmp_path / "b", progress=False,
                  phantom_n=16, evaluate_test=False)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]


def test_fit_classify_rejects_wrong_models_and_folders(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="task='classify' needs a classifier model_name"):
        fit(_cfg(), task="classify", model_name="unet", progress=False, phantom_n=16)
    with pytest.raises(ValueError, match="needs task='classify'"):
        fit(_cfg(), model_name="resnet18", progress=False, phantom_n=16)
    with pytest.raises(ValueError, match="task must be 'segment' or 'classify'"):
        fit(_cfg(), task="detect", progress=False)
    fit(_cfg(1), task="classify", model_name="resnet18", out_dir=tmp_path / "cls", progress=False, phantom_n=8,
        evaluate_test=False)
    with pytest.raises(ValueError, match=r"model_name: 'resnet18' -> 'unet'"):  # refused by the resume checks
        fit(_cfg(1), model_name="unet", out_dir=tmp_path / "cls", progress=False, phantom_n=8)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="runs in one process"):
        fit(_cfg(), task="classify", model_name="resnet18", progress=False, phantom_n=8)


def test_fit_trains_a_table2_segmenter_with_the_dice_switch(tmp_path):
    cfg = make_config("tiny", model__image_size=S, train__epochs=1, train__batch_size=4, loss__seg_loss="dice")
    run = fit(cfg, model_name="deeplabv3plus", out_dir=tmp_path / "seg", progress=False, phantom_n=8)
    assert {"dice_mean", "iou_mean"} <= set(run.test["nodule"]) and run.history[-1]["loss"] > 0
    model, _, _ = model_from_checkpoint(tmp_path / "seg" / "best.pt")
    assert isinstance(model, Segmenter) and model.config.name == "deeplabv3plus"
