"""Losses of SSMT-Net (paper Sec. 2.6, eq. 12-13) and the Mask2Former mask-classification loss.

The total loss is eq. 12 of the paper::

    L = alpha * L_nodule + beta * L_gland + gamma * L_size + eta * L_rec

* ``L_nodule`` / ``L_gland`` ("based on the Dice loss", Sec. 2.6; kept on the Dice scale, see
  :func:`task_loss` and ``LossConfig.seg_loss``): for the Transformer query decoder
  (eq. 4-9) the mask-classification loss of Mask2Former (Cheng et al., 2022): every query gets a
  class (K foreground classes + "no object"); each ground-truth mask is matched to one query by the
  Hungarian algorithm on the cost ``2 * class + 5 * BCE + 5 * Dice`` (with ``LossConfig.targets=
  "instances"`` every connected component, i.e. every nodule, is its own target mask; both in
  :mod:`ssmt_lib.matching`); matched queries are trained on
  class and mask, the others on "no object". The CNN decoder's auxiliary head adds BCE + Dice.
  Like Mask2Former, which evaluates matching and mask losses on 12544 sampled points, the query
  terms use a pixel grid: every s-th pixel in both axes (s the smallest stride leaving at most
  ``LossConfig.points`` points) from a random offset drawn per step, so every pixel is
  supervised in expectation. ``points=None`` uses every pixel.
  Without a query decoder (baselines, CNN-only) BCE + Dice on the reported map is the task loss.
* ``L_size``: regression of the nodule area fraction (MSE, see :func:`size_loss`).
* ``L_rec`` (eq. 13): Charbonnier loss ``sqrt((x_hat - x)^2 + eps^2)`` between reconstruction and
  input, averaged over pixels.

Semi-supervision is per sample: an image contributes to a task only if it carries that task's
label (``batch["has_nodule"]``, ``batch["has_gland"]``); a batch with no label for a task gives an
exact, differentiable 0 for that term.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmt_lib.config import TASKS, LossConfig
from ssmt_lib.matching import instance_targets, match_queries
from ssmt_lib.outputs import ModelOutput, QueryPrediction, predictions_on_grid

_REDUCTIONS = ("mean", "none")

# ----------------------------------------------------------------------------- dense losses


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}; choose one of {_REDUCTIONS}")
    return per_sample.mean() if reduction == "mean" else per_sample


def _check_same_shape(pred: Tensor, target: Tensor, name: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{name}: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")


def dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0, reduction: str = "mean") -> Tensor:
    """Soft Dice loss ``1 - (2 sum(p t) + eps) / (sum p + sum t + eps)`` per sample.

    Args:
        logits: (B, ...) pre-sigmoid scores.
        target: (B, ...) same shape, values in [0, 1].
        eps: additive smoothing; with eps > 0 an empty prediction on an empty target costs 0.
        reduction: "mean" over samples or "none" for the (B,) vector.

    Returns:
        Scalar (or (B,)) loss in [0, 1].
    """
    _check_same_shape(logits, target, "dice_loss")
    prob = logits.float().sigmoid().flatten(1)  # (B, P)
    target = target.float().flatten(1)  # (B, P)
    inter = (prob * target).sum(1)
    dice = (2 * inter + eps) / (prob.sum(1) + target.sum(1) + eps)
    return _reduce(1 - dice, reduction)


def bce_dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0, reduction: str = "mean") -> Tensor:
    """Pixel-mean binary cross-entropy plus soft Dice, per sample (weights 1 : 1).

    BCE gives useful gradients from the first step, Dice counters the foreground/background
    imbalance of small nodules.

    Args:
        logits: (B, ...) pre-sigmoid scores.
        target: (B, ...) same shape, values in [0, 1].
        eps: Dice smoothing.
        reduction: "mean" or "none".

    Returns:
        Scalar (or (B,)) loss.
    """
    _check_same_shape(logits, target, "bce_dice_loss")
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").flatten(1).mean(1)  # (B,)
    return _reduce(bce + dice_loss(logits, target, eps, reduction="none"), reduction)


def charbonnier_loss(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """Charbonnier loss of paper eq. 13: ``mean(sqrt((pred - target)^2 + eps^2))``.

    A smooth L1: quadratic near 0 (differentiable at the optimum), linear for large errors
    (robust to speckle outliers in ultrasound).

    Args:
        pred: reconstruction, any shape.
        target: input image, same shape.
        eps: epsilon of eq. 13 (``LossConfig.charbonnier_eps``).

    Returns:
        Scalar loss.
    """
    _check_same_shape(pred, target, "charbonnier_loss")
    diff = pred.float() - target.float()
    return torch.sqrt(diff * diff + eps * eps).mean()


def size_loss(pred: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Squared error of the predicted nodule area fraction.

    MSE is chosen over smooth L1: both quantities lie in [0, 1], so every error is < 1 and
    smooth L1 (beta = 1) would equal 0.5 * MSE anyway; MSE is the plainer statement.

    Args:
        pred: (B,) predicted area fraction in [0, 1].
        target: (B,) ground-truth nodule area / image area (0 for an empty mask).
        reduction: "mean" or "none".

    Returns:
        Scalar (or (B,)) loss.
    """
    _check_same_shape(pred, target, "size_loss")
    return _reduce((pred.float() - target.float()) ** 2, reduction)


def _masked_mean(per_sample: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``per_sample`` over ``valid`` samples; exactly 0 (and differentiable) if none is valid.

    ``torch.where`` rather than multiplication, so that a non-finite value of an unlabeled sample
    cannot leak into the loss, and no host sync is needed.
    """
    kept = torch.where(valid, per_sample, per_sample.new_zeros(()))
    return kept.sum() / valid.sum().clamp(min=1)


def grid_stride(height: int, width: int, points: int | None) -> int:
    """Smallest stride s whose grid ``[::s, ::s]`` of an (height, width) map has at most ``points`` pixels."""
    if points is None:
        return 1
    if points < 1:
        raise ValueError(f"points={points}: need a positive point budget or None")
    stride = 1
    while math.ceil(height / stride) * math.ceil(width / stride) > points:
        stride += 1
    return stride


def mask_classification_loss(pred: QueryPrediction, targets: Tensor, valid: Tensor, cfg: LossConfig,
                             labels: Tensor | None = None) -> Tensor:
    """Mask2Former loss of one query prediction: ``cost_class*CE + cost_bce*BCE + cost_dice*Dice``.

    CE runs over K+1 classes for every query of every labeled sample; unmatched queries target
    "no object", whose class weight is ``cfg.no_object_weight`` (Mask2Former's ``eos_coef``); CE is
    the weighted mean (sum w*ce / sum w). BCE and Dice run on matched masks only and are averaged
    over the number of matched masks in the batch. Every pixel of the given masks is used
    (:func:`query_loss` hands in predictions and targets already on its pixel grid).

    Args:
        pred: ``class_logits`` (B, N, K+1), masks (B, N, H, W).
        targets: (B, K, H, W) binary class masks at the masks' resolution.
        valid: (B,) bool, samples labeled for this task.
        cfg: loss weights and the matching switch.

    Returns:
        Scalar loss (exactly 0 when no sample is valid).
    """
    class_logits = pred.class_logits.float()
    B, N, C = class_logits.shape
    K = C - 1
    mask_logits = pred.mask_logits  # (B, N, H, W)
    channels_ok = targets.shape[1] == K if labels is None else (
        labels.shape == targets.shape[:2] and (labels.numel() == 0 or int(labels.max()) < K))
    if not channels_ok or mask_logits.shape[0] != B or mask_logits.shape[-2:] != targets.shape[-2:]:
        raise ValueError(
            f"query prediction (class_logits {tuple(class_logits.shape)}, mask_logits {tuple(mask_logits.shape)}) "
            f"does not fit targets {tuple(targets.shape)}: need K+1 classes for K target channels (or labels "
            f"< K per instance target) and equal H, W"
        )
    valid = valid.to(class_logits.device)
    present = (targets.flatten(2).sum(-1) > 0) & valid[:, None]  # (B, M)
    matches = match_queries(pred, targets, present, cfg.matching, cfg.cost_class, cfg.cost_bce, cfg.cost_dice,
                            labels)
    b_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(matches)]).to(class_logits.device)  # (M,)
    q_idx = torch.cat([q for q, _ in matches]).to(class_logits.device)  # (M,)
    c_idx = torch.cat([c for _, c in matches]).to(class_logits.device)  # (M,)

    # Class term: every query of a labeled sample; unmatched -> no-object (index K).
    target_classes = torch.full((B, N), K, dtype=torch.long, device=class_logits.device)
    target_classes[b_idx, q_idx] = c_idx if labels is None else labels.to(c_idx.device)[b_idx, c_idx]
    class_weight = torch.ones(C, device=class_logits.device)
    class_weight[K] = cfg.no_object_weight
    ce = F.cross_entropy(class_logits.transpose(1, 2), target_classes, reduction="none")  # (B, N)
    w = class_weight[target_classes] * valid[:, None]  # (B, N), 0 for unlabeled samples
    ce = torch.where(w > 0, ce * w, ce.new_zeros(())).sum() / w.sum().clamp(min=1e-12)

    # Mask terms: matched pairs only, vectorized over the batch.
    matched_logits = mask_logits[b_idx, q_idx].float()  # (M, H, W)
    matched_targets = targets[b_idx, c_idx].float()  # (M, H, W)
    n_masks = max(len(b_idx), 1)
    bce = F.binary_cross_entropy_with_logits(matched_logits, matched_targets, reduction="none").flatten(1).mean(1)  # (M,)
    dice = dice_loss(matched_logits, matched_targets, reduction="none")  # (M,)
    return cfg.cost_class * ce + cfg.cost_bce * bce.sum() / n_masks + cfg.cost_dice * dice.sum() / n_masks


def query_loss(preds: list[QueryPrediction], targets: Tensor, valid: Tensor, cfg: LossConfig,
               offset: tuple[int, int] | None = None, labels: Tensor | None = None) -> Tensor:
    """Mask-classification loss with deep supervision (matching redone for every prediction).

    With ``cfg.deep_supervision`` the loss is the MEAN over all T+1 predictions (Mask2Former sums;
    the mean keeps the scale independent of T so that eq. 12's weights keep their meaning);
    otherwise only the last prediction is supervised. Matching and mask terms use the pixel grid
    of stride :func:`grid_stride` (``cfg.points``) from ``offset``.

    Args:
        preds: the T+1 predictions of one task's query decoder.
        targets: (B, K, H, W) binary class masks, or (B, M, H, W) instance masks with ``labels``.
        valid: (B,) bool, samples labeled for this task.
        cfg: loss configuration.
        offset: (oy, ox) of the pixel grid; None = drawn uniformly from torch's global RNG.
        labels: (B, M) class of each instance target (:func:`instance_targets`); None = per class.

    Returns:
        Scalar loss.
    """
    if not preds:
        raise ValueError("query_loss got an empty list of query predictions")
    used = preds if cfg.deep_supervision else preds[-1:]
    size = used[0].mask_size
    if size != tuple(targets.shape[-2:]):
        raise ValueError(f"query prediction with {size} masks does not fit targets {tuple(targets.shape)}: need equal H, W")
    stride = grid_stride(*size, cfg.points)
    if offset is None:
        offset = tuple(torch.randint(stride, (2,)).tolist()) if stride > 1 else (0, 0)
    on_grid = predictions_on_grid(used, stride, offset)
    targets = targets[..., offset[0]::stride, offset[1]::stride]  # (B, K, h', w')
    return torch.stack([mask_classification_loss(p, targets, valid, cfg, labels) for p in on_grid]).mean()


# ----------------------------------------------------------------------------- eq. 12


def _batch_flag(batch: dict, key: str, like: Tensor) -> Tensor:
    """``batch[key]`` as a (B,) bool tensor on ``like``'s device, with a clear error if missing."""
    if key not in batch:
        raise KeyError(f"batch has no {key!r} (per-sample task mask); keys: {sorted(batch)}")
    flag = torch.as_tensor(batch[key], device=like.device).bool().flatten()
    if flag.shape[0] != like.shape[0]:
        raise ValueError(f"batch[{key!r}] has {flag.shape[0]} entries for a batch of {like.shape[0]}")
    return flag


def task_loss(out: ModelOutput, batch: dict, task: str, cfg: LossConfig) -> Tensor:
    """``L_nodule`` or ``L_gland`` of eq. 12 over the samples labeled for ``task``.

    The paper (Sec. 2.6) says only that both are "based on the Dice loss"; ``cfg.seg_loss`` says
    how, and every mode but "mask2former" keeps the term on the Dice scale (~[0, 1]) so that eq.
    12's weights mean what the paper says (with the raw Mask2Former sum, ~5-10, alpha * L_nodule
    swamps gamma * L_size by four orders of magnitude):

    * "normalized" (both presets): the query mask-classification loss divided by its weights
      ``cost_class + cost_bce + cost_dice``, and the CNN auxiliary head's BCE + Dice divided by 2;
      the two are averaged with weights 1 : ``aux_weight``.
    * "dice": soft Dice of the reported map and of the CNN head, averaged the same way (no
      matching: the queries learn only through the semantic map).
    * "mask2former": query loss + ``aux_weight`` * (BCE + Dice), unnormalised (the old scale).

    Without a query decoder (baselines, CNN-only) the reported map is the CNN head; it is
    supervised once.

    Args:
        out: model output.
        batch: needs ``f"{task}_mask"`` (B, 1, H, W) and ``f"has_{task}"`` (B,).
        task: "nodule" or "gland".
        cfg: loss configuration.

    Returns:
        Scalar loss; exactly 0 (and differentiable) if no sample has the label.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r}; choose one of {TASKS}")
    logits, aux, queries = out.logits(task), out.aux_logits(task), out.queries(task)
    if logits is None and aux is None and not queries:
        raise ValueError(f"model output has nothing for task {task!r}")
    if f"{task}_mask" not in batch:
        raise KeyError(f"batch has no {task + '_mask'!r}; keys: {sorted(batch)}")
    target = batch[f"{task}_mask"].float()  # (B, 1, H, W)
    valid = _batch_flag(batch, f"has_{task}", target)
    mode = cfg.seg_loss
    dense = dice_loss if mode == "dice" else bce_dice_loss
    dense_scale = 1.0 if mode in ("dice", "mask2former") else 0.5  # BCE + Dice -> mean of the two

    def dense_term(x: Tensor, name: str) -> Tensor:
        _check_same_shape(x, target, f"{name} vs batch[{task + '_mask'!r}]")
        return dense_scale * _masked_mean(dense(x, target, reduction="none"), valid)

    terms, weights, supervised = [], [], None
    if queries and mode != "dice":
        query_scale = 1.0 if mode == "mask2former" else 1.0 / (cfg.cost_class + cfg.cost_bce + cfg.cost_dice)
        q_target, labels = target, None
        if cfg.targets == "instances":  # one target per nodule (connected component), one query each
            q_target, labels = instance_targets(target, queries[0].class_logits.shape[1])
        terms.append(query_scale * query_loss(queries, q_target, valid, cfg, labels=labels))
        weights.append(1.0)
    elif logits is not None:
        terms.append(dense_term(logits, f"{task}_logits"))
        weights.append(1.0)
        supervised = logits
    if aux is not None and aux is not supervised:  # the CNN head, unless it is the map just supervised
        terms.append(dense_term(aux, f"{task}_aux_logits"))
        weights.append(cfg.aux_weight)
    w = torch.tensor(weights, device=target.device)
    if mode == "mask2former":
        return (torch.stack(terms) * w).sum()
    return (torch.stack(terms) * w).sum() / w.sum().clamp(min=1e-12)


def loss_terms(out: ModelOutput, batch: dict, cfg: LossConfig, phase: int = 2) -> dict[str, Tensor]:
    """The unweighted terms of eq. 12 this output can be trained on: ``{"nodule", "gland", "size", "rec"}``.

    Phase 1 has only ``rec``. See :func:`total_loss` for what each term uses.
    """
    if phase not in (1, 2):
        raise ValueError(f"phase={phase!r}; choose 1 (reconstruction) or 2 (all tasks)")
    parts: dict[str, Tensor] = {}
    if out.recon is not None:
        if "image" not in batch:
            raise KeyError(f"batch has no 'image'; keys: {sorted(batch)}")
        parts["rec"] = charbonnier_loss(out.recon, batch["image"], cfg.charbonnier_eps)
    if phase == 1:
        if "rec" not in parts:
            raise ValueError("phase 1 trains the reconstructor, but the model output has no recon (model.reconstruction=False?)")
        return parts
    for task in TASKS:
        if out.logits(task) is not None or out.aux_logits(task) is not None or out.queries(task):
            parts[task] = task_loss(out, batch, task, cfg)
    if out.size is not None:
        if "size" not in batch:
            raise KeyError(f"batch has no 'size' (nodule area fraction); keys: {sorted(batch)}")
        pred = out.size.flatten()  # (B,)
        valid = _batch_flag(batch, "has_nodule", pred)
        target = torch.as_tensor(batch["size"], device=pred.device).float().flatten()  # (B,)
        parts["size"] = _masked_mean(size_loss(pred, target, reduction="none"), valid)
    if not parts:
        raise ValueError("phase 2: the model output has no segmentation, size or recon term to train")
    return parts


# eq. 12's weight of each term
LOSS_WEIGHTS = {"nodule": lambda c: c.alpha, "gland": lambda c: c.beta, "size": lambda c: c.gamma,
                "rec": lambda c: c.eta}


def total_loss(out: ModelOutput, batch: dict, cfg: LossConfig, phase: int = 2) -> tuple[Tensor, dict[str, float]]:
    """Eq. 12: ``L = alpha L_nodule + beta L_gland + gamma L_size + eta L_rec``.

    * Terms whose model output is None (a variant without gland decoder, reconstructor or size
      head) are skipped; the remaining weights are NOT renormalized, so a variant trains its
      nodule task with the same alpha as the full model (Table 2 compares like with like).
    * ``L_size`` uses samples with ``has_nodule`` only; an empty nodule mask has size 0 and counts.
    * ``L_rec`` = Charbonnier(recon, image) on every sample (reconstruction needs no label).
    * ``phase=1`` (unsupervised pretraining): ``L = L_rec`` unweighted, so pretraining is not
      scaled down by eta.

    Args:
        out: model output.
        batch: dict with ``image``, ``nodule_mask``, ``gland_mask``, ``has_nodule``, ``has_gland``,
            ``size`` (see the data module).
        cfg: loss weights (already validated by ``config.validate``).
        phase: 1 (reconstruction only) or 2 (all enabled tasks).

    Returns:
        The loss tensor and the detached parts ``{"loss", "nodule", "gland", "size", "rec"}`` as
        floats (0.0 for a skipped term), plus ``weighted_<term>`` = weight x value (what the term
        contributes to L; in phase 1 the rec term is unweighted) for every term computed.
    """
    if phase == 2 and cfg.objective != "eq12":
        return baseline_loss(out, batch, cfg)  # a baseline's own loss (section at the end of this file)
    parts = loss_terms(out, batch, cfg, phase)
    if phase == 1:
        total = parts["rec"]
    else:
        total = torch.stack([LOSS_WEIGHTS[k](cfg) * v for k, v in parts.items()]).sum()
    names = ["loss", *parts]
    values = torch.stack([total.detach(), *[v.detach() for v in parts.values()]]).tolist()  # one host sync
    logged = {"loss": 0.0, "nodule": 0.0, "gland": 0.0, "size": 0.0, "rec": 0.0}
    logged.update(zip(names, values))
    # What each term contributes to L (weight x value): the raw values hide that a term is negligible.
    factor = {k: (1.0 if phase == 1 else LOSS_WEIGHTS[k](cfg)) for k in parts}
    logged.update({f"weighted_{k}": factor[k] * logged[k] for k in ("nodule", "gland", "size", "rec") if k in parts})
    return total, logged


# ----------------------------------------------------------------------------- the baselines' own losses
# ``LossConfig.objective`` other than "eq12" (config.BASELINE_SETTINGS sets it for each baseline), so
# that a Table 1-style comparison trains every baseline as its paper does, not with SSMT-Net's eq. 12.


def baseline_loss(out: ModelOutput, batch: dict, cfg: LossConfig) -> tuple[Tensor, dict[str, float]]:
    """A baseline's training loss, chosen by ``cfg.objective``, on the tasks the model outputs.

    * "trfe": TRFE-Net's eq. 4 (Gong et al., "Multi-task learning for thyroid nodule segmentation
      with thyroid region prior", ISBI 2021), used there for U-Net, MT-Net and TRFE-Net alike:
      ``sum_i Dice_i(nodule) + TRFE_GLAND_WEIGHT * sum_j Dice_j(gland)``, a SUM of per-image soft
      Dice losses over the batch's nodule-labelled images i and gland-labelled images j (each
      image feeds only the task it is labelled for; with half-nodule, half-gland batches of 8 both
      sums have 4 terms). The reference code's soft Dice smooths with 1 like :func:`dice_loss`.
    * "bce_dice": the dual-stage paper's eq. 21, ``L_BCE + L_Dice`` on the nodule map (and on the
      gland map of a two-task model), each averaged over the images labelled for it.

    Args:
        out: model output (``nodule_logits``, optionally ``gland_logits``).
        batch: needs ``{task}_mask`` and ``has_{task}`` for the tasks the model outputs.
        cfg: ``objective`` picks the loss; the eq. 12 weights are not used.

    Returns:
        The loss and the detached parts ``{"loss", "nodule", "gland", "size", "rec"}`` (the last two
        0.0: baselines have neither), plus ``weighted_<task>`` = the task's weight x value.
    """
    from ssmt_lib.trfe import TRFE_GLAND_WEIGHT

    if cfg.objective not in ("trfe", "bce_dice"):
        raise ValueError(f"baseline_loss: loss.objective={cfg.objective!r}; choose 'trfe' or 'bce_dice'")
    weights = {"nodule": 1.0, "gland": TRFE_GLAND_WEIGHT if cfg.objective == "trfe" else 1.0}
    parts: dict[str, Tensor] = {}
    for task in TASKS:
        logits = out.logits(task)
        if logits is None:
            continue
        if f"{task}_mask" not in batch:
            raise KeyError(f"batch has no {task + '_mask'!r}; keys: {sorted(batch)}")
        target = batch[f"{task}_mask"].float()  # (B, 1, H, W)
        _check_same_shape(logits, target, f"{task}_logits vs batch[{task + '_mask'!r}]")
        valid = _batch_flag(batch, f"has_{task}", target)
        if cfg.objective == "trfe":
            per_image = dice_loss(logits, target, reduction="none")  # (B,)
            parts[task] = torch.where(valid, per_image, per_image.new_zeros(())).sum()
        else:
            parts[task] = _masked_mean(bce_dice_loss(logits, target, reduction="none"), valid)
    if not parts:
        raise ValueError(f"loss.objective={cfg.objective!r}: the model output has no nodule or gland logits")
    total = torch.stack([weights[k] * v for k, v in parts.items()]).sum()
    values = torch.stack([total.detach(), *[v.detach() for v in parts.values()]]).tolist()  # one host sync
    logged = {"loss": 0.0, "nodule": 0.0, "gland": 0.0, "size": 0.0, "rec": 0.0}
    logged.update(zip(["loss", *parts], values))
    logged.update({f"weighted_{k}": weights[k] * logged[k] for k in parts})
    return total, logged
