"""Tests of ssmt_lib.losses: eq. 12-13, Mask2Former matching/loss, per-sample task masking."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssmt_lib.config import LossConfig, make_config
from ssmt_lib.losses import (
    bce_dice_loss,
    charbonnier_loss,
    dice_loss,
    mask_classification_loss,
    query_loss,
    size_loss,
    task_loss,
    total_loss,
)
from ssmt_lib.matching import match_queries
from ssmt_lib.outputs import ModelOutput, QueryPrediction, predictions_on_grid

H = W = 16


def _mask(B: int, seed: int, empty: tuple[int, ...] = ()) -> torch.Tensor:
    """(B, 1, H, W) random rectangles; samples listed in ``empty`` get an empty mask."""
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(B, 1, H, W)
    for b in range(B):
        if b in empty:
            continue
        y, x = torch.randint(0, H // 2, (2,), generator=g).tolist()
        h, w = torch.randint(2, H // 2, (2,), generator=g).tolist()
        m[b, 0, y:y + h, x:x + w] = 1
    return m


def _queries(B: int, N: int, T: int, seed: int) -> list[QueryPrediction]:
    g = torch.Generator().manual_seed(seed)
    return [
        QueryPrediction(torch.randn(B, N, 2, generator=g).requires_grad_(), (2 * torch.randn(B, N, H, W, generator=g)).requires_grad_())
        for _ in range(T + 1)
    ]


def _output(B: int = 4, N: int = 5, T: int = 2, seed: int = 0, queries: bool = True, gland: bool = True,
            recon: bool = True, size: bool = True) -> ModelOutput:
    g = torch.Generator().manual_seed(seed + 100)
    rnd = lambda *s: torch.randn(*s, generator=g).requires_grad_()  # noqa: E731
    return ModelOutput(
        nodule_logits=rnd(B, 1, H, W),
        gland_logits=rnd(B, 1, H, W) if gland else None,
        recon=rnd(B, 3, H, W) if recon else None,
        size=torch.rand(B, generator=g).requires_grad_() if size else None,
        nodule_aux_logits=rnd(B, 1, H, W),
        gland_aux_logits=rnd(B, 1, H, W) if gland else None,
        nodule_queries=_queries(B, N, T, seed + 1) if queries else None,
        gland_queries=_queries(B, N, T, seed + 2) if queries and gland else None,
    )


def _batch(B: int = 4, seed: int = 0, has_nodule=None, has_gland=None, empty: tuple[int, ...] = ()) -> dict:
    nodule = _mask(B, seed, empty)
    return {
        "image": torch.randn(B, 3, H, W, generator=torch.Generator().manual_seed(seed)),
        "nodule_mask": nodule,
        "gland_mask": _mask(B, seed + 7),
        "has_nodule": torch.tensor(has_nodule if has_nodule is not None else [True] * B),
        "has_gland": torch.tensor(has_gland if has_gland is not None else [True] * B),
        "size": nodule.flatten(1).mean(1),
        "id": [str(i) for i in range(B)],
        "patient": [f"p{i}" for i in range(B)],
    }


# ----------------------------------------------------------------------------- dense losses


def test_dice_and_bce_dice_match_numpy():
    logits, target = torch.randn(3, 1, H, W), _mask(3, 1)
    p, t = torch.sigmoid(logits).numpy().reshape(3, -1), target.numpy().reshape(3, -1)
    expected_dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    assert np.allclose(dice_loss(logits, target, reduction="none").numpy(), expected_dice, atol=1e-6)
    assert math.isclose(dice_loss(logits, target).item(), expected_dice.mean(), abs_tol=1e-6)
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(1)
    assert np.allclose(bce_dice_loss(logits, target, reduction="none").numpy(), bce + expected_dice, atol=1e-5)
    # a confident correct prediction costs ~0, also on an empty target (smoothing eps=1)
    perfect = (target * 2 - 1) * 30
    assert dice_loss(perfect, target).item() < 1e-6
    assert dice_loss(torch.full((1, 1, H, W), -30.0), torch.zeros(1, 1, H, W)).item() < 1e-6
    with pytest.raises(ValueError, match="reduction"):
        dice_loss(logits, target, reduction="sum")
    with pytest.raises(ValueError, match="shape"):
        dice_loss(logits, target[:, :, :8])


def test_charbonnier_known_values():
    pred, target = torch.tensor([0.0, 3.0, -4.0]), torch.zeros(3)
    assert math.isclose(charbonnier_loss(pred, target, eps=1.0).item(), (1 + math.sqrt(10) + math.sqrt(17)) / 3, rel_tol=1e-6)
    # eps -> 0 gives the L1 loss (eq. 13 with eps = 1e-6)
    assert math.isclose(charbonnier_loss(pred, target).item(), 7 / 3, rel_tol=1e-5)
    x = torch.randn(2, 3, 4, 4)
    assert math.isclose(charbonnier_loss(x, x, eps=1e-3).item(), 1e-3, rel_tol=1e-4)


def test_size_loss_is_mse():
    pred, target = torch.tensor([0.1, 0.5]), torch.tensor([0.3, 0.0])
    assert math.isclose(size_loss(pred, target).item(), (0.2**2 + 0.5**2) / 2, rel_tol=1e-6)


# ----------------------------------------------------------------------------- matching


def _reference_query_loss(pred: QueryPrediction, target: torch.Tensor, valid: torch.Tensor, cfg: LossConfig) -> float:
    """Loop/numpy Mask2Former loss for K=1 with brute-force matching (no scipy)."""
    cl = pred.class_logits.detach().double().numpy()
    ml = pred.mask_logits.detach().double().numpy()
    tg = target.double().numpy()[:, 0]
    B, N, _ = cl.shape
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    bce = lambda x, t: np.mean(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x))))  # noqa: E731
    dice = lambda x, t: 1 - (2 * (sig(x) * t).sum() + 1) / (sig(x).sum() + t.sum() + 1)  # noqa: E731
    ce_num = ce_den = 0.0
    mask_terms = []
    for b in range(B):
        if not valid[b]:
            continue
        matched = None
        if tg[b].sum() > 0:
            probs = np.exp(cl[b]) / np.exp(cl[b]).sum(-1, keepdims=True)
            costs = [-cfg.cost_class * probs[q, 0] + cfg.cost_bce * bce(ml[b, q], tg[b]) + cfg.cost_dice * dice(ml[b, q], tg[b])
                     for q in range(N)]
            matched = int(np.argmin(costs))
            mask_terms.append((bce(ml[b, matched], tg[b]), dice(ml[b, matched], tg[b])))
        for q in range(N):
            cls = 0 if q == matched else 1
            w = 1.0 if cls == 0 else cfg.no_object_weight
            logp = cl[b, q] - np.log(np.exp(cl[b, q]).sum())
            ce_num += -w * logp[cls]
            ce_den += w
    ce = ce_num / ce_den if ce_den else 0.0
    n = max(len(mask_terms), 1)
    return cfg.cost_class * ce + cfg.cost_bce * sum(m[0] for m in mask_terms) / n + cfg.cost_dice * sum(m[1] for m in mask_terms) / n


def test_mask_classification_loss_matches_reference():
    cfg = LossConfig()
    pred = _queries(B=5, N=4, T=0, seed=3)[0]
    target = _mask(5, 4, empty=(2,))
    valid = torch.tensor([True, True, True, False, True])
    got = mask_classification_loss(pred, target, valid, cfg).item()
    assert math.isclose(got, _reference_query_loss(pred, target, valid, cfg), rel_tol=1e-5)


def test_hungarian_finds_the_query_whose_mask_equals_the_target():
    B, N = 3, 6
    target = _mask(B, 5)
    pred = _queries(B, N, 0, seed=6)[0]
    right = [4, 0, 2]
    with torch.no_grad():
        for b, q in enumerate(right):
            pred.mask_logits[b, q] = (target[b, 0] * 2 - 1) * 8  # this query's mask equals the target
            # a distractor with the best class score but a wrong mask must lose
            pred.class_logits[b, (q + 1) % N] = torch.tensor([5.0, -5.0])
    present = torch.ones(B, 1, dtype=torch.bool)
    for stride in (1, 2):  # full resolution and a stride-2 grid
        on_grid = predictions_on_grid([pred], stride)[0]
        matches = match_queries(on_grid, target[..., ::stride, ::stride], present)
        assert [int(q[0]) for q, _ in matches] == right
        assert all(int(c[0]) == 0 for _, c in matches)
    # fixed assignment: query 0 <-> class 0 whatever the predictions
    fixed = match_queries(pred, target, present, matching="fixed")
    assert [int(q[0]) for q, _ in fixed] == [0, 0, 0]
    # absent targets give no match
    none = match_queries(pred, target, torch.zeros(B, 1, dtype=torch.bool))
    assert all(len(q) == 0 for q, _ in none)


def test_hungarian_loss_is_permutation_invariant_fixed_is_not():
    pred = _queries(B=4, N=5, T=0, seed=8)[0]
    target, valid = _mask(4, 9, empty=(1,)), torch.ones(4, dtype=torch.bool)
    perm = torch.tensor([3, 0, 4, 2, 1])
    permuted = QueryPrediction(pred.class_logits[:, perm], pred.mask_logits[:, perm])
    cfg = LossConfig()
    a, b = mask_classification_loss(pred, target, valid, cfg), mask_classification_loss(permuted, target, valid, cfg)
    assert torch.allclose(a, b, rtol=1e-5)
    fixed = dataclasses.replace(cfg, matching="fixed")
    fa, fb = mask_classification_loss(pred, target, valid, fixed), mask_classification_loss(permuted, target, valid, fixed)
    assert not torch.allclose(fa, fb)
    assert fa.item() >= a.item() - 1e-5  # Hungarian picks the cheapest assignment


def test_gradients_reach_class_and_mask_logits_of_every_prediction():
    preds = _queries(B=2, N=3, T=2, seed=10)
    target, valid = _mask(2, 11), torch.ones(2, dtype=torch.bool)
    query_loss(preds, target, valid, LossConfig()).backward()
    for p in preds:
        assert p.class_logits.grad.abs().sum() > 0 and p.mask_logits.grad.abs().sum() > 0
    last_only = _queries(B=2, N=3, T=2, seed=10)
    query_loss(last_only, target, valid, LossConfig(deep_supervision=False)).backward()
    assert last_only[0].class_logits.grad is None and last_only[-1].mask_logits.grad.abs().sum() > 0


def test_empty_targets_give_finite_loss_pushing_to_no_object():
    preds = _queries(B=3, N=4, T=1, seed=12)
    target = torch.zeros(3, 1, H, W)
    loss = query_loss(preds, target, torch.ones(3, dtype=torch.bool), LossConfig())
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    for p in preds:
        assert torch.isfinite(p.class_logits.grad).all()
        # gradient descent raises the no-object logit of every query
        assert (p.class_logits.grad[..., -1] < 0).all()
        assert p.mask_logits.grad.abs().sum() == 0  # nothing matched, no mask term


# ----------------------------------------------------------------------------- task masking / eq. 12


def _perturb_sample(out: ModelOutput, b: int) -> ModelOutput:
    """Copy of ``out`` with every per-sample prediction of sample ``b`` replaced by noise."""
    def noisy(t):
        t = t.detach().clone()
        t[b] = torch.randn_like(t[b]) * 5
        return t.requires_grad_()
    qs = lambda qs_: [QueryPrediction(noisy(q.class_logits), noisy(q.mask_logits)) for q in qs_] if qs_ else None  # noqa: E731
    return dataclasses.replace(
        out, nodule_logits=noisy(out.nodule_logits), gland_logits=noisy(out.gland_logits), recon=out.recon,
        size=noisy(out.size), nodule_aux_logits=noisy(out.nodule_aux_logits), gland_aux_logits=noisy(out.gland_aux_logits),
        nodule_queries=qs(out.nodule_queries), gland_queries=qs(out.gland_queries),
    )


@pytest.mark.parametrize("queries", [True, False])
def test_unlabeled_sample_does_not_change_the_loss(queries):
    cfg = LossConfig()
    out = _output(queries=queries)
    batch = _batch(has_nodule=[True, False, True, True], has_gland=[False, True, True, False])
    ref, ref_parts = total_loss(out, batch, cfg)
    # sample 1 has no nodule label: its nodule and size predictions are free; it has a gland label
    changed = _perturb_sample(out, 1)
    changed.gland_logits, changed.gland_aux_logits, changed.gland_queries = out.gland_logits, out.gland_aux_logits, out.gland_queries
    for task in ("nodule",):
        assert torch.equal(task_loss(out, batch, task, cfg), task_loss(changed, batch, task, cfg))
    _, parts = total_loss(changed, batch, cfg)
    assert parts["nodule"] == ref_parts["nodule"] and parts["size"] == ref_parts["size"]
    # sample 0 has no gland label
    assert torch.equal(task_loss(out, batch, "gland", cfg), task_loss(_perturb_sample(out, 0), batch, "gland", cfg))
    # a labeled sample does change it (the test could fail)
    assert not torch.equal(task_loss(out, batch, "nodule", cfg), task_loss(_perturb_sample(out, 2), batch, "nodule", cfg))


def test_all_unlabeled_batch_gives_exact_zero_and_backward_works():
    cfg = LossConfig()
    out = _output(B=3)
    batch = _batch(B=3, has_nodule=[False] * 3, has_gland=[False] * 3)
    for task in ("nodule", "gland"):
        loss = task_loss(out, batch, task, cfg)
        assert loss.item() == 0.0 and loss.requires_grad
    total, parts = total_loss(out, batch, cfg)
    assert parts["nodule"] == parts["gland"] == parts["size"] == 0.0
    total.backward()
    assert math.isclose(total.item(), cfg.eta * parts["rec"], rel_tol=1e-6)
    for q in out.nodule_queries:
        assert torch.isfinite(q.mask_logits.grad).all() and q.mask_logits.grad.abs().sum() == 0
    assert out.recon.grad.abs().sum() > 0


def test_total_loss_is_eq12_and_skips_missing_terms():
    cfg = LossConfig()
    out, batch = _output(), _batch(empty=(3,))
    total, parts = total_loss(out, batch, cfg)
    expected = cfg.alpha * parts["nodule"] + cfg.beta * parts["gland"] + cfg.gamma * parts["size"] + cfg.eta * parts["rec"]
    assert math.isclose(total.item(), expected, rel_tol=1e-5) and math.isclose(parts["loss"], total.item(), rel_tol=1e-6)
    assert math.isclose(parts["rec"], charbonnier_loss(out.recon, batch["image"]).item(), rel_tol=1e-6)
    # the empty-mask sample counts in the size term with target 0
    assert batch["size"][3] == 0
    assert math.isclose(parts["size"], size_loss(out.size, batch["size"]).item(), rel_tol=1e-6)
    # variant #1: no gland / rec / size -> only alpha * L_nodule, weight not renormalized
    v1 = _output(gland=False, recon=False, size=False)
    total1, parts1 = total_loss(v1, batch, cfg)
    assert parts1["gland"] == parts1["size"] == parts1["rec"] == 0.0
    assert math.isclose(total1.item(), cfg.alpha * parts1["nodule"], rel_tol=1e-6)
    # phase 1: unweighted reconstruction only
    total_p1, parts_p1 = total_loss(out, batch, cfg, phase=1)
    assert math.isclose(total_p1.item(), parts["rec"], rel_tol=1e-6) and parts_p1["nodule"] == 0.0
    with pytest.raises(ValueError, match="recon"):
        total_loss(v1, batch, cfg, phase=1)
    with pytest.raises(ValueError, match="phase"):
        total_loss(out, batch, cfg, phase=3)
    # a phase-1 style output (only recon run) still trains in phase 2 without the missing terms
    rec_only = ModelOutput(recon=out.recon)
    total_r, parts_r = total_loss(rec_only, batch, cfg)
    assert parts_r["nodule"] == 0.0 and math.isclose(total_r.item(), cfg.eta * parts["rec"], rel_tol=1e-6)
    with pytest.raises(ValueError, match="no segmentation"):
        total_loss(ModelOutput(), batch, cfg)


@pytest.mark.parametrize("mode", ["mask2former", "normalized", "dice"])
def test_baseline_without_queries_uses_reported_logits_and_aux_once(mode):
    cfg = LossConfig(aux_weight=0.5, seg_loss=mode)
    out, batch = _output(queries=False), _batch(has_nodule=[True, True, False, True])
    valid = batch["has_nodule"]
    loss_fn = dice_loss if mode == "dice" else bce_dice_loss
    scale = 0.5 if mode == "normalized" else 1.0  # BCE + Dice -> their mean
    dense = lambda x: scale * loss_fn(x[valid], batch["nodule_mask"][valid])  # noqa: E731
    total = dense(out.nodule_logits) + 0.5 * dense(out.nodule_aux_logits)
    expected = total if mode == "mask2former" else total / 1.5  # weighted mean 1 : aux_weight
    assert torch.allclose(task_loss(out, batch, "nodule", cfg), expected, rtol=1e-5)
    # CNN-only model whose reported map IS the aux head: supervised once, not twice
    same = dataclasses.replace(out, nodule_aux_logits=out.nodule_logits)
    assert torch.allclose(task_loss(same, batch, "nodule", cfg), dense(out.nodule_logits), rtol=1e-5)


def test_normalized_query_loss_is_the_mask2former_loss_over_its_weights():
    out, batch = _output(), _batch()
    raw = task_loss(out, batch, "nodule", LossConfig(seg_loss="mask2former", aux_weight=1.0))
    aux = bce_dice_loss(out.nodule_aux_logits, batch["nodule_mask"])
    torch.manual_seed(0)  # the grid offset of the query term is drawn from the global RNG
    query = query_loss(out.nodule_queries, batch["nodule_mask"], batch["has_nodule"], LossConfig())
    torch.manual_seed(0)
    norm = task_loss(out, batch, "nodule", LossConfig(seg_loss="normalized", aux_weight=1.0))
    torch.testing.assert_close(norm, (query / 12.0 + aux / 2.0) / 2.0)
    assert raw.item() > 3 * norm.item()  # the raw sum lives on another scale


@pytest.mark.parametrize("mode", ["normalized", "dice"])
def test_paper_scale_loss_is_about_0_when_perfect_and_about_1_when_all_wrong(mode):
    """L_nodule on the Dice scale: eq. 12's weights then weigh comparable numbers."""
    cfg = LossConfig(seg_loss=mode)
    batch = _batch(B=3)
    target = batch["nodule_mask"]  # (B, 1, H, W), every sample has a rectangle
    confident = lambda m: 30.0 * (2 * m - 1)  # noqa: E731  logits: +30 on m, -30 off it
    B, N = 3, 4

    def output(mask: torch.Tensor) -> ModelOutput:
        # query 0 predicts ``mask`` and says "nodule"; the other queries say "no object"
        cls = torch.full((B, N, 2), -30.0)
        cls[:, 0, 0], cls[:, 1:, 1] = 30.0, 30.0
        masks = confident(mask).expand(B, N, H, W).clone()
        preds = [QueryPrediction(cls, masks) for _ in range(3)]
        reported = confident(mask)
        return ModelOutput(nodule_logits=reported, nodule_aux_logits=reported.clone(), nodule_queries=preds)

    perfect = task_loss(output(target), batch, "nodule", cfg).item()
    wrong = task_loss(output(1 - target), batch, "nodule", cfg).item()
    assert perfect < 0.02, perfect
    if mode == "dice":
        assert 0.95 < wrong <= 1.0, wrong
    else:  # the Dice parts are ~1; the BCE parts of confident wrong logits grow with the logits
        torch.manual_seed(0)
        dice_part = dice_loss(confident(1 - target), target).item()
        assert 0.95 < dice_part <= 1.0 and wrong > 0.5, (dice_part, wrong)
    # the weighted log says what each term contributes
    total, parts = total_loss(output(1 - target), batch, cfg)
    assert math.isclose(parts["weighted_nodule"], cfg.alpha * parts["nodule"], rel_tol=1e-6)
    assert "weighted_gland" not in parts


def test_bad_inputs_raise_clear_errors():
    cfg = LossConfig()
    out, batch = _output(), _batch()
    with pytest.raises(KeyError, match="has_gland"):
        task_loss(out, {k: v for k, v in batch.items() if k != "has_gland"}, "gland", cfg)
    with pytest.raises(ValueError, match="task"):
        task_loss(out, batch, "thyroid", cfg)
    small = dict(batch, nodule_mask=batch["nodule_mask"][:, :, :8, :8])
    with pytest.raises(ValueError, match="does not fit"):
        task_loss(out, small, "nodule", cfg)


def test_query_loss_on_a_pixel_grid_equals_the_loss_on_the_sliced_masks():
    preds, target, valid = _queries(B=3, N=4, T=2, seed=12), _mask(3, 13), torch.ones(3, dtype=torch.bool)
    grid_cfg = LossConfig(points=64)  # 16x16 -> stride 2 (64 points)
    full_cfg = LossConfig(points=None)
    for offset in ((0, 0), (1, 1), (0, 1)):
        sliced = [QueryPrediction(p.class_logits, p.mask_logits[..., offset[0]::2, offset[1]::2]) for p in preds]
        expected = query_loss(sliced, target[..., offset[0]::2, offset[1]::2], valid, full_cfg)
        torch.testing.assert_close(query_loss(preds, target, valid, grid_cfg, offset=offset), expected)
    # the offset is drawn from torch's RNG: reproducible under a seed, and it moves
    torch.manual_seed(0)
    draws = [query_loss(preds, target, valid, grid_cfg).item() for _ in range(8)]
    torch.manual_seed(0)
    assert draws == [query_loss(preds, target, valid, grid_cfg).item() for _ in range(8)]
    assert len(set(draws)) > 1
    # every pixel counts: the mean BCE over all four offsets is the full-resolution BCE
    bce = lambda logits, t: F.binary_cross_entropy_with_logits(logits, t)  # noqa: E731
    logits = preds[0].mask_logits[:, :1].detach()
    quarter = [bce(logits[..., oy::2, ox::2], target[..., oy::2, ox::2]) for oy in (0, 1) for ox in (0, 1)]
    torch.testing.assert_close(torch.stack(quarter).mean(), bce(logits, target))
    with pytest.raises(ValueError, match="points"):
        make_config("tiny", points=0)
