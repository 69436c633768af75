"""Tests of ssmt_lib.metrics against independent set / brute-force computations."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from ssmt_lib.metrics import SegmentationMeter, dice_iou, hd95, size_bucket


def _blobs(n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size) bool masks: a few random rectangles each, so boundaries are non-trivial."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for m in masks:
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 2, 2)
            h, w = rng.integers(1, size // 2, 2)
            m[y:y + h, x:x + w] = True
    return masks


def _set_dice_iou(p: np.ndarray, g: np.ndarray) -> tuple[float, float]:
    ps, gs = set(zip(*np.nonzero(p))), set(zip(*np.nonzero(g)))
    if not ps and not gs:
        return 1.0, 1.0
    return 2 * len(ps & gs) / (len(ps) + len(gs)), len(ps & gs) / len(ps | gs)


def _brute_hd95(p: np.ndarray, g: np.ndarray) -> float:
    """Boundary = a foreground pixel with a 4-neighbour outside the mask or the image; cdist for distances."""
    def boundary_points(m):
        pad = np.pad(m, 1)
        inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
        return np.argwhere(m & ~inner)
    bp, bg = boundary_points(p), boundary_points(g)
    d = cdist(bp, bg)
    return float(np.percentile(np.concatenate([d.min(1), d.min(0)]), 95))


def test_dice_iou_match_set_computation():
    pred, target = _blobs(12, 20, 0), _blobs(12, 20, 1)
    pred[3] = False  # one empty prediction
    dice, iou = dice_iou(torch.from_numpy(pred), torch.from_numpy(target))
    expected = np.array([_set_dice_iou(p, g) for p, g in zip(pred, target)])
    assert np.allclose(dice.numpy(), expected[:, 0]) and np.allclose(iou.numpy(), expected[:, 1])
    assert dice[3] == 0 and iou[3] == 0


def test_empty_mask_convention():
    empty, full = torch.zeros(1, 8, 8, dtype=torch.bool), torch.zeros(1, 8, 8, dtype=torch.bool)
    full[0, 2:5, 2:5] = True
    assert [float(x) for x in dice_iou(empty, empty)] == [1.0, 1.0]
    assert [float(x) for x in dice_iou(empty, full)] == [0.0, 0.0]
    assert [float(x) for x in dice_iou(full, empty)] == [0.0, 0.0]
    assert math.isnan(hd95(empty[0], full[0])) and math.isnan(hd95(full[0], empty[0])) and math.isnan(hd95(empty[0], empty[0]))
    assert hd95(full[0], full[0]) == 0.0


def test_hd95_matches_brute_force():
    preds, targets = _blobs(15, 24, 2), _blobs(15, 24, 3)
    for p, g in zip(preds, targets):
        assert math.isclose(hd95(p, g), _brute_hd95(p, g), rel_tol=1e-9, abs_tol=1e-9)
    # a shifted square: every boundary point is 3 px away at most
    a = np.zeros((20, 20), dtype=bool)
    a[5:10, 5:10] = True
    assert math.isclose(hd95(a, np.roll(a, 3, axis=1)), _brute_hd95(a, np.roll(a, 3, axis=1))) and hd95(a, np.roll(a, 3, axis=1)) <= 3


def test_size_buckets_and_thresholds():
    assert [size_bucket(s) for s in (0.0, 0.005, 0.01, 0.1, 0.2)] == ["empty", "small", "medium", "medium", "large"]
    assert size_bucket(0.03, thresholds=(0.05, 0.3)) == "small"
    with pytest.raises(ValueError, match="size_thresholds"):
        SegmentationMeter(size_thresholds=(0.2, 0.1))


def test_meter_aggregates_across_batches_and_masks_unlabeled():
    rng = np.random.default_rng(4)
    target = torch.from_numpy(_blobs(10, 20, 5)).float()[:, None]  # (10, 1, 20, 20)
    target[7] = 0  # an image without nodule
    logits = torch.from_numpy(rng.normal(size=(10, 1, 20, 20))).float() + (target * 2 - 1) * 1.5
    valid = torch.tensor([True] * 9 + [False])
    ids = [f"img{i}" for i in range(10)]

    one = SegmentationMeter(size_thresholds=(0.05, 0.15))
    one.update(logits, target, valid, ids=ids)
    two = SegmentationMeter(from_logits=False, size_thresholds=(0.05, 0.15))  # probabilities, two batches
    two.update(logits[:4].sigmoid(), target[:4], valid[:4], ids=ids[:4])
    two.update(logits[4:].sigmoid(), target[4:], valid[4:], ids=ids[4:])
    a, b = one.compute(), two.compute()
    assert a.keys() == b.keys()
    for k in a:
        assert (math.isnan(a[k]) and math.isnan(b[k])) or math.isclose(a[k], b[k], rel_tol=1e-12), k

    # independent recomputation on the 9 labeled images
    p, g = (logits[:9, 0] > 0).numpy(), target[:9, 0].numpy().astype(bool)
    per = np.array([_set_dice_iou(pi, gi) for pi, gi in zip(p, g)])
    assert a["n"] == 9 and [r["id"] for r in one.rows] == ids[:9]
    assert math.isclose(a["dice_mean"], per[:, 0].mean()) and math.isclose(a["dice_std"], per[:, 0].std())
    assert math.isclose(a["iou_mean"], per[:, 1].mean()) and math.isclose(a["iou_std"], per[:, 1].std())
    tp, fp, fn = (p & g).sum(), (p & ~g).sum(), (~p & g).sum()
    assert math.isclose(a["dice_pooled"], 2 * tp / (2 * tp + fp + fn)) and math.isclose(a["iou_pooled"], tp / (tp + fp + fn))
    assert math.isclose(a["precision"], tp / (tp + fp)) and math.isclose(a["recall"], tp / (tp + fn))
    hds = [_brute_hd95(pi, gi) for pi, gi in zip(p, g) if pi.any() and gi.any()]
    assert a["hd95_count"] == len(hds) and math.isclose(a["hd95_mean"], np.mean(hds))
    sizes = g.reshape(9, -1).mean(1)
    buckets = np.where(sizes == 0, "empty", np.where(sizes < 0.05, "small", np.where(sizes <= 0.15, "medium", "large")))
    for name in ("empty", "small", "medium", "large"):
        sel = buckets == name
        assert a[f"{name}_n"] == sel.sum()
        if sel.any():
            assert math.isclose(a[f"{name}_dice_mean"], per[sel, 0].mean())
        else:
            assert math.isnan(a[f"{name}_dice_mean"])
    assert a["empty_n"] == 1
    json.dumps(a)
    json.dumps(one.rows)
    one.reset()
    assert one.rows == [] and one.compute()["n"] == 0 and math.isnan(one.compute()["dice_mean"])


def test_meter_rejects_bad_input():
    meter = SegmentationMeter()
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="binary"):
        meter.update(x, torch.full((2, 1, 8, 8), 0.5))
    with pytest.raises(ValueError, match="shape"):
        meter.update(x, torch.zeros(2, 1, 8, 4))
    with pytest.raises(ValueError, match="valid_mask"):
        meter.update(x, torch.zeros(2, 1, 8, 8), valid_mask=[True])
    with pytest.raises(ValueError, match="ids"):
        meter.update(x, torch.zeros(2, 1, 8, 8), ids=["a"])
    with pytest.raises(ValueError, match="threshold"):
        SegmentationMeter(threshold=1.5)


def test_trivial_references_match_a_hand_computation():
    from ssmt_lib.metrics import ReferenceMeter, flag_trivial, trivial_references

    # three 4x4 masks: 4 foreground pixels, 8 pixels, and an empty one; the third is unlabeled in
    # the second batch layout, so it must not count there
    a = torch.zeros(1, 1, 4, 4)
    a[..., :2, :2] = 1
    b = torch.zeros(1, 1, 4, 4)
    b[..., :2, :] = 1
    empty = torch.zeros(1, 1, 4, 4)
    masks = torch.cat([a, b, empty])
    refs = trivial_references([{"nodule_mask": masks, "has_nodule": torch.tensor([True, True, True])}])
    fg = refs["all_foreground"]
    # Dice of "everything" vs G: 2|G| / (|G| + 16); the empty image gives 0 (one side empty)
    assert fg["dice_mean"] == pytest.approx((2 * 4 / 20 + 2 * 8 / 24 + 0.0) / 3)
    assert fg["iou_mean"] == pytest.approx((4 / 16 + 8 / 16 + 0.0) / 3)
    assert fg["dice_pooled"] == pytest.approx(2 * 12 / (12 + 48))
    bg = refs["all_background"]
    assert bg["dice_mean"] == pytest.approx(1 / 3) and bg["dice_pooled"] == 0.0  # only the empty image scores
    sizes = [4 / 16, 8 / 16, 0.0]
    assert refs["size_mean"] == pytest.approx(np.mean(sizes))
    assert refs["mean_predictor_mae"] == pytest.approx(np.mean(np.abs(np.array(sizes) - np.mean(sizes))))
    # unlabeled images are left out
    meter = ReferenceMeter()
    meter.update(masks, torch.tensor([True, True, False]))
    assert meter.compute()["all_background"]["dice_mean"] == 0.0
    # a score near the best reference is flagged; one clear of it is not
    assert "all_foreground" in flag_trivial(fg["dice_mean"] + 0.01, refs)
    assert flag_trivial(fg["dice_mean"] + 0.2, refs) == ""
    with pytest.raises(KeyError, match="has_nodule"):
        trivial_references([{"nodule_mask": masks}])


def test_hd95_matches_monai_surface_distances():
    """Cross-check against MONAI: same boundary pixels and distances; ours pools both directions
    (medpy's hd95), MONAI's compute_hausdorff_distance takes the larger directed percentile."""
    import warnings

    from monai.metrics import compute_hausdorff_distance
    from monai.metrics.utils import get_mask_edges, get_surface_distance
    from scipy import ndimage

    rng = np.random.default_rng(3)
    for _ in range(4):
        a = ndimage.binary_dilation(rng.random((48, 56)) > 0.993, iterations=4)
        b = ndimage.binary_dilation(rng.random((48, 56)) > 0.993, iterations=3)
        if not (a.any() and b.any()):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # MONAI deprecation notice of a default argument
            edges_a, edges_b = get_mask_edges(a, b, crop=False)
        d_ab = get_surface_distance(edges_a, edges_b, distance_metric="euclidean")
        d_ba = get_surface_distance(edges_b, edges_a, distance_metric="euclidean")
        assert hd95(a, b) == pytest.approx(float(np.percentile(np.concatenate([d_ab, d_ba]), 95)), abs=1e-5)
        theirs = compute_hausdorff_distance(torch.from_numpy(a)[None, None].float(),
                                            torch.from_numpy(b)[None, None].float(), percentile=95).item()
        assert theirs == pytest.approx(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)), abs=1e-4)
