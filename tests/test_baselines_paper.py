"""Baselines as their papers train them: paper widths from fit / the CLI, their own losses and
settings as config values (config.BASELINE_SETTINGS), TRFE-Net's half-nodule / half-gland batches."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ssmt_lib import build_model
from ssmt_lib.__main__ import main
from ssmt_lib.baselines import build_baseline, count_parameters
from ssmt_lib.checkpoints import load_checkpoint, model_from_checkpoint
from ssmt_lib.config import BASELINE_SETTINGS, LossConfig, make_config
from ssmt_lib.data import MultiTaskDataset, SegmentationDataset, TaskPairSampler
from ssmt_lib.losses import baseline_loss, dice_loss, total_loss
from ssmt_lib.outputs import ModelOutput
from ssmt_lib.trfe import TRFE_GLAND_WEIGHT


@pytest.mark.parametrize("name", ["unet", "mtnet", "trfe", "trfe_c", "resnet50_unet"])
def test_build_model_preset_paper_is_the_paper_width(name):
    paper = build_model(name, preset="paper")
    assert paper.config == build_baseline(name, "paper").config
    assert count_parameters(paper) > 10 * count_parameters(build_model(name))  # tiny is the default
    if name != "resnet50_unet":
        assert paper.encoder.widths == [64, 128, 256, 512, 1024]  # U-Net / MT-Net / TRFE-Net: 64 .. 1024
    with pytest.raises(ValueError, match="disagree"):
        build_model(name, preset="paper", size="tiny")


def test_trfe_protocol_is_values_applied_by_make_config():
    cfg = make_config("paper", baseline="trfe")
    t = cfg.train
    assert (t.optimizer, t.lr, t.min_lr, t.momentum, t.weight_decay) == ("sgd", 1e-3, 1e-3, 0.9, 0.0)
    assert (t.epochs, t.batch_size, t.task_pairs, t.grad_clip) == (60, 8, True, None)
    assert cfg.loss.objective == "trfe" and cfg.model.baseline_size == "paper"
    assert make_config("paper", baseline="trfe", epochs=5).train.epochs == 5  # the caller still wins
    tiny = make_config("tiny", baseline="trfe_b")  # tiny: the paper's loss and batches, the CPU schedule
    assert tiny.loss.objective == "trfe" and tiny.train.task_pairs and tiny.train.optimizer == "adamw"
    assert tiny.model.baseline_size == "tiny"
    assert make_config("paper", baseline="resnet50_unet").loss.objective == "bce_dice"
    assert make_config("paper").loss.objective == "eq12"  # SSMT-Net itself is untouched
    assert set(BASELINE_SETTINGS) == {"paper", "tiny"}
    with pytest.raises(ValueError, match="unknown baseline"):
        make_config("paper", baseline="segformer")
    with pytest.raises(ValueError, match="even"):
        make_config("paper", baseline="trfe", batch_size=7)


def test_trfe_loss_is_nodule_dice_plus_half_gland_dice_summed_over_images():
    torch.manual_seed(0)
    B, H, W = 6, 8, 8
    nodule, gland = torch.randn(B, 1, H, W), torch.randn(B, 1, H, W)
    masks = (torch.rand(2, B, 1, H, W) > 0.6).float()
    has_n = torch.tensor([True, False, True, False, True, False])
    batch = {"nodule_mask": masks[0], "gland_mask": masks[1], "has_nodule": has_n, "has_gland": ~has_n}
    out = ModelOutput(nodule_logits=nodule, gland_logits=gland)
    cfg = LossConfig(objective="trfe")
    loss, parts = total_loss(out, batch, cfg)  # eq. 12's entry point dispatches on loss.objective
    dn = dice_loss(nodule, masks[0], reduction="none")
    dg = dice_loss(gland, masks[1], reduction="none")
    expected = dn[has_n].sum() + TRFE_GLAND_WEIGHT * dg[~has_n].sum()
    torch.testing.assert_close(loss, expected)
    assert parts["nodule"] == pytest.approx(dn[has_n].sum().item(), rel=1e-6)
    assert parts["weighted_gland"] == pytest.approx(0.5 * dg[~has_n].sum().item(), rel=1e-6)
    # not eq. 12: alpha/beta play no part
    assert not torch.allclose(loss, total_loss(out, batch, LossConfig())[0])
    # U-Net (nodule only) under the same protocol: the nodule sum alone
    loss_n, _ = baseline_loss(ModelOutput(nodule_logits=nodule), batch, cfg)
    torch.testing.assert_close(loss_n, dn[has_n].sum())


class _Labels(SegmentationDataset):
    """A dataset that only knows its size and label kinds (the sampler never loads images)."""

    def __init__(self, n: int, nodule: bool, gland: bool) -> None:
        super().__init__("fake", "train", 32, False, 3, 0.0, nodule, gland, False)
        self.n = n

    def __len__(self) -> int:
        return self.n


def test_task_pair_sampler_gives_half_nodule_half_gland_batches():
    ds = MultiTaskDataset([_Labels(7, True, False), _Labels(3, False, True)])
    tasks = ds.sample_tasks()
    order = list(TaskPairSampler(ds, seed=1))
    assert len(order) == 14  # every nodule image once, each with a gland image
    assert tasks[order[0::2], 0].all() and tasks[order[1::2], 1].all()
    assert sorted(order[0::2]) == list(range(7))
    for start in range(0, 14 - 7, 8):  # every batch of 8 is 4 + 4
        batch = order[start:start + 8]
        assert tasks[batch, 0].sum() == 4 and tasks[batch, 1].sum() == 4
    assert list(TaskPairSampler(ds, seed=1)) == order and list(TaskPairSampler(ds, seed=2)) != order
    shards = [list(TaskPairSampler(ds, seed=1, rank=r, world=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 8  # 7 pairs padded to 8: equal steps on every rank
    assert set(shards[0][0::2]) | set(shards[1][0::2]) == set(range(7))
    with pytest.raises(ValueError, match="gland"):
        TaskPairSampler(MultiTaskDataset([_Labels(4, True, False)]), seed=0)


def test_cli_preset_paper_model_trfe_trains_the_paper_network(tmp_path, capsys):
    out = tmp_path / "trfe"
    main(["train", "--preset", "paper", "--model", "trfe", "--data", "phantom", "--phantom-n", "8",
          "--batch-size", "2", "--epochs", "1", "--set", "model.image_size=32", "--set", "train.steps=1",
          "--set", "train.num_workers=0", "--set", "train.channels_last=false", "--no-progress", "--out", str(out)])
    assert json.loads(capsys.readouterr().out)["out"] == str(out)
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["model_name"] == "trfe"
    cfg = ckpt["config"]
    assert cfg["model"]["baseline_size"] == "paper" and cfg["loss"]["objective"] == "trfe"
    assert (cfg["train"]["optimizer"], cfg["train"]["lr"], cfg["train"]["task_pairs"]) == ("sgd", 1e-3, True)
    assert cfg["train"]["batch_size"] == 2  # the command line overrides the paper's 8
    model, _, _ = model_from_checkpoint(out / "last.pt")
    assert count_parameters(model) == count_parameters(build_baseline("trfe", "paper"))
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert np.isfinite(history[-1]["loss"]) and history[-1]["lr"] == pytest.approx(1e-3)  # constant rate
