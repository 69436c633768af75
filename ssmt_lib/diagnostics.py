"""Diagnostics that say what a run learnt: which task drives the shared encoder, and probes that
only the phantom can answer because it knows what real data does not.

* :func:`task_gradient_norms`: for each term of eq. 12 (SSMT-Net, Sec. 2.6), the norm of the
  gradient of its *weighted* contribution ``w_t L_t`` with respect to the shared encoder's
  parameters. With the raw Mask2Former loss (~5-10) the nodule term dwarfed the size term by four
  orders of magnitude; on the Dice scale (``loss.seg_loss="normalized"``) the ratios say how much
  each auxiliary task can shape the shared features at the paper's weights.
* :func:`vessel_false_positives`: the paper motivates the gland decoder with anatomy
  ("awareness of the gland"); on the phantom the carotid and jugular are anechoic nodule
  look-alikes OUTSIDE the gland, with a known mask, so "how much nodule does the model paint on
  the vessels" is measurable.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from ssmt_lib.config import LossConfig
from ssmt_lib.losses import LOSS_WEIGHTS, loss_terms


def shared_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The encoder's trainable parameters (``model.encoder``), which every task's gradient reaches."""
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise ValueError(f"{type(model).__name__} has no .encoder; pass the shared parameters explicitly")
    return [p for p in encoder.parameters() if p.requires_grad]


def task_gradient_norms(model: nn.Module, batch: dict[str, Any], cfg: LossConfig,
                        params: Iterable[nn.Parameter] | None = None) -> dict[str, float]:
    """L2 norm of ``d(w_t L_t) / d(shared parameters)`` for every eq. 12 term of one batch.

    Args:
        model: a model returning ``ModelOutput`` (in train mode, as during training).
        batch: a training batch (images, masks, task flags, sizes).
        cfg: the loss configuration (weights and the seg_loss scale).
        params: the shared parameters; default :func:`shared_parameters`.

    Returns:
        ``{term: norm}`` for the terms the model has (``nodule``, ``gland``, ``size``, ``rec``); a
        term whose batch has no label gives 0.
    """
    params = list(params) if params is not None else shared_parameters(model)
    out = model(batch["image"])
    terms = loss_terms(out, batch, cfg, phase=2)
    norms = {}
    for name, value in terms.items():
        grads = torch.autograd.grad(LOSS_WEIGHTS[name](cfg) * value, params, retain_graph=True, allow_unused=True)
        squares = [(g.float() ** 2).sum() for g in grads if g is not None]
        norms[name] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    return norms


@torch.no_grad()
def vessel_false_positives(model: nn.Module, dataset: Any, batch_size: int = 16,
                           threshold: float = 0.5) -> dict[str, float]:
    """How much nodule a model predicts on the carotid/jugular of phantom images.

    Args:
        model: a segmentation model (``ModelOutput.nodule_logits``).
        dataset: a ``PhantomDataset`` without augmentation (its vessel masks are re-rendered
            from the generator, at the dataset's image size, so they align pixel for pixel).
        batch_size: images per forward pass.
        threshold: probability above which a pixel is called nodule.

    Returns:
        ``{"vessel_fp_rate": share of vessel pixels predicted as nodule, "images_with_vessel_fp":
        share of images with any such pixel, "n": images with a visible vessel}``.
    """
    from ssmt_lib.data import phantom

    if not hasattr(dataset, "indices") or getattr(dataset, "augment", False):
        raise ValueError("vessel_false_positives needs an un-augmented PhantomDataset (it knows the vessels)")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hit, total, images_hit, n = 0, 0, 0, 0
    for start in range(0, len(dataset), batch_size):
        idx = range(start, min(start + batch_size, len(dataset)))
        images = torch.stack([dataset[i]["image"] for i in idx]).to(device)  # (B, C, H, W)
        vessels = np.stack([phantom.sample(dataset.indices[i], seed=dataset.seed, config=dataset.config,
                                           return_aux=True)["aux"]["vessel_mask"] for i in idx]).astype(bool)  # (B, H, W)
        pred = (model(images).nodule_logits.float().sigmoid()[:, 0] > threshold).cpu().numpy()  # (B, H, W)
        if pred.shape != vessels.shape:
            raise ValueError(f"prediction {pred.shape} and vessel masks {vessels.shape} differ in size")
        for p, v in zip(pred, vessels):
            if v.any():
                n += 1
                overlap = int((p & v).sum())
                hit, total, images_hit = hit + overlap, total + int(v.sum()), images_hit + (overlap > 0)
    model.train(was_training)
    return {"vessel_fp_rate": hit / total if total else float("nan"),
            "images_with_vessel_fp": images_hit / n if n else float("nan"), "n": n}
