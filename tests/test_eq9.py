"""Eq. 9 inference and one query per nodule (SSMT-Net, Sec. 2.3: "each nodule and gland is
represented by a learnable query"; eq. 8-9: the class of a query is the argmax of its scores)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmt_lib import build_model
from ssmt_lib.config import LossConfig, make_config
from ssmt_lib.data import PhantomDataset, phantom
from ssmt_lib.query_decoder import argmax_probabilities, semantic_probabilities
from ssmt_lib.losses import task_loss
from ssmt_lib.matching import instance_targets, match_queries
from ssmt_lib.outputs import ModelOutput, QueryPrediction

S = 64


DATA = PhantomDataset("all", n=400, image_size=S, seed=0)  # unaugmented: item i is phantom sample i


def _multi_nodule_samples(k: int = 4) -> list[tuple[int, dict]]:
    """(index, phantom sample) of the first ``k`` images with at least two visible nodules."""
    found = []
    for i in range(len(DATA)):
        s = phantom.sample(DATA.indices[i], seed=0, config=DATA.config)
        if len(s["nodules"]) >= 2:
            found.append((i, s))
        if len(found) == k:
            return found
    raise AssertionError("the phantom should draw multi-nodule images")


def test_instance_targets_are_the_phantom_nodules():
    for _, s in _multi_nodule_samples():
        masks, labels = instance_targets(torch.from_numpy(s["nodule_mask"]).float()[None, None], max_instances=6)
        present = masks.flatten(2).sum(-1)[0] > 0  # (M,)
        assert int(present.sum()) == len(s["nodules"]) and (labels == 0).all()
        areas = sorted((masks[0, present].flatten(1).mean(1)).tolist())  # area fraction of each target
        truth = sorted(n["area"] for n in s["nodules"])  # the phantom's own count of each nodule's pixels
        np.testing.assert_allclose(areas, truth, atol=1.5 / S**2)
        union = masks[0].amax(0).numpy()
        np.testing.assert_array_equal(union, s["nodule_mask"])  # nothing dropped, nothing added


def test_instance_targets_merge_beyond_the_query_count_and_keep_every_pixel():
    mask = torch.zeros(1, 1, 12, 12)
    for r in range(0, 12, 4):  # 9 separate 2x2 blobs
        for c in range(0, 12, 4):
            mask[0, 0, r:r + 2, c:c + 2] = 1
    masks, _ = instance_targets(mask, max_instances=4)
    assert masks.shape[1] == 4 and torch.equal(masks[0].amax(0), mask[0, 0])
    assert (masks[0].flatten(1).sum(1) > 0).all()


def test_multi_nodule_images_get_one_query_per_nodule():
    found = _multi_nodule_samples()
    samples = [s for _, s in found]
    items = [DATA[i] for i, _ in found]
    images = torch.stack([item["image"] for item in items])  # (B, 3, S, S)
    target = torch.stack([item["nodule_mask"] for item in items])  # (B, 1, S, S)
    assert torch.equal(target[:, 0], torch.from_numpy(np.stack([s["nodule_mask"] for s in samples])).float())
    torch.manual_seed(0)
    model = build_model("tiny", image_size=S).eval()
    with torch.no_grad():
        pred = model(images).nodule_queries[-1]
    masks, labels = instance_targets(target, pred.class_logits.shape[1])
    present = masks.flatten(2).sum(-1) > 0
    matches = match_queries(pred, masks, present, labels=labels)
    for s, (q, j) in zip(samples, matches):
        assert len(q) == len(s["nodules"]) == len(set(q.tolist()))  # a query of its own for each nodule
    semantic = match_queries(pred, target, target.flatten(2).sum(-1) > 0)
    assert all(len(q) == 1 for q, _ in semantic)  # the merged target: one query for all nodules

    # task_loss uses the per-nodule targets by default; for these images that is another loss
    batch = {"nodule_mask": target, "has_nodule": torch.ones(len(samples), dtype=torch.bool)}
    out = model(images)
    torch.manual_seed(1)
    inst = task_loss(out, batch, "nodule", LossConfig(points=None))
    torch.manual_seed(1)
    sem = task_loss(out, batch, "nodule", LossConfig(points=None, targets="semantic"))
    assert not torch.allclose(inst, sem)
    one = {"nodule_mask": torch.zeros_like(target), "has_nodule": batch["has_nodule"]}
    one["nodule_mask"][:, :, 20:36, 24:40] = 1  # a single nodule: per-nodule and merged targets agree
    assert torch.allclose(task_loss(out, one, "nodule", LossConfig(points=None)),
                          task_loss(out, one, "nodule", LossConfig(points=None, targets="semantic")))


def _hand_prediction() -> QueryPrediction:
    """3 queries on a 4x4 image: q0 'nodule' on the left half, q1 'no object' everywhere, q2 'nodule'
    in the top-right corner."""
    cls = torch.tensor([[[2.0, -1.0], [-1.0, 2.0], [1.0, 0.0]]])  # (1, 3, K+1 = 2)
    masks = torch.full((1, 3, 4, 4), -6.0)
    masks[0, 0, :, :2] = 6.0
    masks[0, 1] = 6.0
    masks[0, 2, 0, 3] = 6.0
    return QueryPrediction(cls, masks)


def test_eq9_argmax_inference_unites_the_foreground_queries():
    pred = _hand_prediction()
    hard = argmax_probabilities(pred)[0, 0] > 0.5  # (4, 4)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:, :2] = True
    expected[0, 3] = True
    assert torch.equal(hard, expected)  # q1 says "no object": left out, though its mask covers everything
    soft = semantic_probabilities(pred)[0, 0]
    assert (soft[1:, 2:] > 0.04).all() and not hard[1:, 2:].any()  # the soft sum lets q1 leak in
    empty = QueryPrediction(torch.tensor([[[-1.0, 2.0]]]), torch.full((1, 1, 4, 4), 6.0))
    assert argmax_probabilities(empty).max() == 0  # only "no object": nothing predicted


def test_model_inference_switch():
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    model = build_model("tiny", image_size=32, inference="argmax").eval()
    with torch.no_grad():
        out = model(x)
    pred = out.nodule_queries[-1]
    fg = pred.class_logits.argmax(-1) == 0  # (B, N)
    union = ((pred.mask_logits > 0) & fg[..., None, None]).any(1)  # (B, H, W)
    assert torch.equal(out.nodule_logits[:, 0] > 0, union)
    assert make_config("tiny").model.inference == "soft" and make_config("tiny").loss.targets == "instances"
    with pytest.raises(ValueError, match="inference"):
        make_config("tiny", inference="max")
    with pytest.raises(ValueError, match="targets"):
        make_config("tiny", targets="boxes")
    assert isinstance(out, ModelOutput)
