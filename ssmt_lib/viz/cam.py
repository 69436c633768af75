"""What a classifier looks at: Grad-CAM and occlusion maps (notebook 07, dual-stage paper's classifiers).

* Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
  Localization", ICCV 2017): with A^k the feature maps of a convolutional layer and y^c the logit of
  class c, the weights are a_k = mean over positions of dy^c / dA^k and the map is
  ReLU(sum_k a_k A^k), upsampled to the image. Hooks on ``model.cam_layer`` (the last
  convolutional block of every :mod:`ssmt_lib.classifiers` model) through
  :func:`ssmt_lib.recording.record_activation_and_gradient`; the model is not changed.
* Occlusion (Zeiler & Fergus, ECCV 2014): how much P(class) drops when a patch of the image is
  blanked, patch by patch. Slower, but needs no gradient and no layer choice: a check on Grad-CAM.

The maps are (B, H, W) in [0, 1] (each divided by its maximum); ``show_cam`` overlays them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor, nn

from ssmt_lib.data import denormalize
from ssmt_lib.recording import record_activation_and_gradient


def grad_cam(model: nn.Module, images: Tensor, target: int = 1, layer: nn.Module | None = None) -> Tensor:
    """Grad-CAM maps of class ``target`` (1 = malignant).

    Args:
        model: a classifier returning logits (B, K).
        images: (B, 3, H, W), as the model takes them.
        target: class whose logit is explained.
        layer: the convolutional layer to explain; default ``model.cam_layer``.

    Returns:
        (B, H, W) maps in [0, 1] (all zero where no position raises the class score).
    """
    layer = layer if layer is not None else getattr(model, "cam_layer", None)
    if layer is None:
        raise ValueError("grad_cam needs a layer: the model has no cam_layer; pass layer=")
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), record_activation_and_gradient(layer) as kept:
            logits = model(images)  # (B, K)
            model.zero_grad(set_to_none=True)
            logits[:, target].sum().backward()
    finally:
        model.train(was_training)
    acts, grads = kept["activation"].detach(), kept["gradient"].detach()  # (B, C, h, w) each
    weights = grads.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    cam = F.relu((weights * acts).sum(dim=1, keepdim=True))  # (B, 1, h, w)
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]  # (B, H, W)
    return cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]


@torch.no_grad()
def occlusion_map(model: nn.Module, images: Tensor, target: int = 1, patch: int = 16, stride: int = 8) -> Tensor:
    """Drop of P(``target``) when a ``patch`` x ``patch`` square is set to the image mean, per position.

    Args:
        model: a classifier returning logits (B, K).
        images: (B, 3, H, W).
        target: class whose probability is watched.
        patch, stride: occluder side and step in pixels.

    Returns:
        (B, H, W) in [0, 1]: each pixel gets the mean drop of the occluders covering it (negative
        drops clipped), divided by the image's maximum.
    """
    was_training = model.training
    model.eval()
    b, _, h, w = images.shape
    base = model(images).softmax(-1)[:, target]  # (B,)
    fill = images.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    heat = torch.zeros(b, h, w)
    count = torch.zeros(h, w)
    for y in range(0, max(h - patch, 0) + 1, stride):
        for x in range(0, max(w - patch, 0) + 1, stride):
            occluded = images.clone()
            occluded[:, :, y:y + patch, x:x + patch] = fill
            drop = (base - model(occluded).softmax(-1)[:, target]).clamp_min(0).cpu()  # (B,)
            heat[:, y:y + patch, x:x + patch] += drop[:, None, None]
            count[y:y + patch, x:x + patch] += 1
    model.train(was_training)
    heat = heat / count.clamp_min(1)
    return heat / heat.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]


def show_cam(images: Tensor | np.ndarray, maps: Sequence[Tensor | np.ndarray] | Tensor, titles: Sequence[str] | None = None,
             rows: Sequence[str] | None = None, masks: Tensor | np.ndarray | None = None, alpha: float = 0.45,
             panel: float = 2.0) -> Figure:
    """Images (top row) and one row of overlays per map kind.

    Args:
        images: (B, 3, H, W) normalised (as the datasets give them) or (B, H, W) in [0, 1].
        maps: one (B, H, W) map array, or several (one row each).
        titles: per-image column titles.
        rows: per-map row labels (e.g. ["Grad-CAM", "occlusion"]).
        masks: optional (B, [1,] H, W) nodule masks, outlined on every panel.
        alpha: overlay opacity.
        panel: inches per panel.
    """
    imgs = np.asarray(images.cpu() if torch.is_tensor(images) else images, dtype=np.float32)
    if imgs.ndim == 4:
        imgs = np.stack([np.atleast_3d(denormalize(im))[..., 0] for im in imgs])  # (B, H, W) grey
    maps = [maps] if (torch.is_tensor(maps) or isinstance(maps, np.ndarray)) and np.ndim(maps) == 3 else list(maps)
    maps = [np.asarray(m.cpu() if torch.is_tensor(m) else m) for m in maps]
    outline = None if masks is None else np.asarray(masks.cpu() if torch.is_tensor(masks) else masks).reshape(imgs.shape)
    n, k = len(imgs), len(maps)
    fig = Figure(figsize=(panel * n, panel * (k + 1)))
    axes = fig.subplots(k + 1, n, squeeze=False)
    for j in range(n):
        for i in range(k + 1):
            ax = axes[i, j]
            ax.imshow(imgs[j], cmap="gray", vmin=0, vmax=1)
            if i:
                ax.imshow(maps[i - 1][j], cmap="jet", alpha=alpha, vmin=0, vmax=1)
            if outline is not None and outline[j].any():
                ax.contour(outline[j], levels=[0.5], colors="lime", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0 and titles is not None:
                ax.set_title(titles[j], fontsize=8)
            if j == 0 and i and rows is not None:
                ax.set_ylabel(rows[i - 1], fontsize=8)
    fig.tight_layout()
    return fig
