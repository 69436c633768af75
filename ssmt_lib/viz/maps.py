"""Attention maps of a trained SSMT-Net over its input images (paper eq. 2-6; notebook 05).

The recorders of :mod:`ssmt_lib.recording` give raw weights; this module puts them where a
reader can judge them, on the image:

* ViT self-attention (eq. 2, ``z' = MSA(LN(z)) + z``) of the class token and of one patch, head by
  head, and attention rollout (Abnar & Zuidema, 2020) through the layers;
* the query decoder's masked cross-attention (eq. 5) per query and per layer, each level map
  (1/8, 1/4, 1/2 of the image) upsampled to the image, with the eq. 6 region it was allowed;
* failure cases: predictions on the vessel look-alikes and missed small nodules.

``collect_attention`` runs the model once (hooks only, the model is not edited) and keeps
everything the plots need in an :class:`AttentionRecording`. The ``show_*`` functions are pure:
they take a recording (or arrays) and return a new :class:`matplotlib.figure.Figure`, so
``ipywidgets.interact`` can call them directly. Layers are numbered from 1 as in the paper
(``layer=1`` is ``blocks.0`` / ``layers.0``); ``head=-1`` means the mean over heads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scipy import ndimage
from torch import Tensor, nn

from ssmt_lib.data import denormalize
from ssmt_lib.query_decoder import attention_mask_from_logits
from ssmt_lib.recording import record_attention_masks
from ssmt_lib.viz.attention import attention_rollout, query_attention, vit_attention
from ssmt_lib.viz.common import (
    ArrayLike,
    as_grid,
    display_image,
    level_grid,
    outline_mask,
    overlay_map,
    panel_grid,
    to_numpy,
)

__all__ = [
    "AttentionRecording", "collect_attention", "upsample_map", "attention_mass",
    "find_failure_cases", "show_vit_attention", "show_cross_attention", "show_attention_explorer",
    "show_failure_cases",
]


# ----------------------------------------------------------------------------- recording


@dataclass
class AttentionRecording:
    """One forward pass of a batch, with every map the plots of this module need (CPU tensors)."""

    images: Tensor  # (B, H, W) or (B, H, W, 3) display images in [0, 1]
    truth: Tensor | None  # (B, H, W) ground-truth nodule masks in {0, 1}, or None
    vit: list[Tensor]  # L x (B, heads, 1 + h*w, 1 + h*w) ViT self-attention, class token first
    grid: tuple[int, int]  # (h, w) ViT token grid
    cross: list[Tensor]  # T x (B, heads, N, h_t*w_t) query-decoder cross-attention (eq. 5)
    allowed: list[Tensor | None]  # T x (B, heads, N, h_t*w_t) bool eq. 6 masks as used (None = unmasked)
    mask_logits: list[Tensor]  # T + 1 x (B, N, H, W): raw queries, then after each layer
    class_logits: list[Tensor]  # T + 1 x (B, N, K + 1), last column = no object
    logits: Tensor  # (B, 1, H, W) the model's reported map for the task
    ids: list[str] | None = None  # image ids for titles

    def __post_init__(self) -> None:
        b = self.images.shape[0]
        if len(self.mask_logits) != len(self.cross) + 1 or len(self.allowed) != len(self.cross):
            raise ValueError(f"need T+1 mask predictions and T eq. 6 masks for T={len(self.cross)} layers, got "
                             f"{len(self.mask_logits)} and {len(self.allowed)}")
        for name, t in [("logits", self.logits), *[(f"vit[{i}]", v) for i, v in enumerate(self.vit)],
                        *[(f"cross[{i}]", c) for i, c in enumerate(self.cross)]]:
            if t.shape[0] != b:
                raise ValueError(f"AttentionRecording.{name} has batch {t.shape[0]}, images have {b}")

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.images.shape[1:3])

    @property
    def level_sizes(self) -> list[tuple[int, int]]:
        """(h_t, w_t) of the level each decoder layer attends to."""
        return [level_grid(c.shape[-1], self.image_shape) for c in self.cross]

    def p_object(self, index: int, layer: int | None = None) -> Tensor:
        """(N,) probability of each query being an object, 1 - p(no object) (eq. 8-9); last layer by default."""
        logits = self.class_logits[-1 if layer is None else layer][index]  # (N, K+1)
        return 1.0 - logits.float().softmax(-1)[:, -1]


@torch.no_grad()
def collect_attention(model: nn.Module, images: Tensor, task: str = "nodule", truth: Tensor | None = None,
                      ids: Sequence[str] | None = None) -> AttentionRecording:
    """Run ``model(images, return_attention=True)`` once and keep the maps of ``task``.

    Args:
        model: an SSMT-Net with a query decoder for ``task`` (eval mode is the caller's choice).
        images: (B, C, H, W) normalized input batch, as the datasets return it.
        task: "nodule" or "gland".
        truth: optional (B, 1, H, W) or (B, H, W) ground-truth masks, outlined in the plots.
        ids: optional image ids.

    Returns:
        :class:`AttentionRecording` on the CPU.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if task not in getattr(model, "query_decoders", {}):
        raise ValueError(f"{type(model).__name__} has no query decoder for task {task!r} "
                         f"(model.use_query_decoder off, or the task is not enabled)")
    with record_attention_masks(model) as masks:
        out = model(images, return_attention=True)
    preds = out.queries(task)
    cpu = [t.detach().float().cpu() for t in vit_attention(out.attentions)]
    display = torch.stack([torch.from_numpy(denormalize(x)) for x in images.cpu()])  # (B, H, W[, 3])
    if truth is not None:
        truth = truth.detach().cpu().reshape(images.shape[0], *images.shape[-2:]).float()  # (B, H, W)
    return AttentionRecording(
        images=display, truth=truth, vit=cpu, grid=level_grid(cpu[0].shape[-1] - 1, tuple(images.shape[-2:])),
        cross=[c.detach().float().cpu() for c in query_attention(out.attentions, task)],
        allowed=[None if a is None else a.cpu() for a in query_attention(masks, task)],
        mask_logits=[p.mask_logits.detach().float().cpu() for p in preds],
        class_logits=[p.class_logits.detach().float().cpu() for p in preds],
        logits=out.logits(task).detach().float().cpu(), ids=list(ids) if ids is not None else None)


# ----------------------------------------------------------------------------- small tensor helpers


def upsample_map(values: ArrayLike, image_shape: tuple[int, int], grid: tuple[int, int] | None = None,
                 mode: str = "bilinear") -> np.ndarray:
    """A coarse map (one value per key of a feature level) resized to the image for an overlay.

    Args:
        values: (h, w) map, or flat (h*w,) with ``grid`` (None = the image's aspect).
        image_shape: (H, W).
        grid: (h, w) of a flat map.
        mode: "bilinear" (smooth) or "nearest" (one block per key).

    Returns:
        (H, W) float32 array.
    """
    arr = to_numpy(values)
    if arr.ndim == 1:
        arr = as_grid(arr, grid, image_shape, "values")  # (h, w)
    if arr.ndim != 2:
        raise ValueError(f"values must be (h, w) or (h*w,), got shape {arr.shape}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode={mode!r}; choose 'bilinear' or 'nearest'")
    kw = {"align_corners": False} if mode == "bilinear" else {}
    up = F.interpolate(torch.from_numpy(arr)[None, None], size=tuple(image_shape), mode=mode, **kw)  # (1, 1, H, W)
    return up[0, 0].numpy()


def attention_mass(weights: Tensor, region: ArrayLike, grid: tuple[int, int] | None = None) -> Tensor:
    """Share of attention that falls inside an image region (e.g. the true nodule, the vessels).

    Each key stands for one cell of its level; a cell counts with the fraction of its pixels in
    the region (area downsampling), so the result is exact for cell-aligned regions.

    Args:
        weights: (..., h*w) attention rows (each sums to 1).
        region: (H, W) binary mask at image resolution.
        grid: (h, w) of the keys; None = the region's aspect.

    Returns:
        (...) tensor in [0, 1].
    """
    reg = torch.as_tensor(to_numpy(region)).float()
    if reg.dim() != 2:
        raise ValueError(f"region must be an (H, W) mask, got shape {tuple(reg.shape)}")
    h, w = grid or level_grid(weights.shape[-1], tuple(reg.shape))
    if h * w != weights.shape[-1]:
        raise ValueError(f"weights have {weights.shape[-1]} keys, not grid {(h, w)}")
    share = F.interpolate(reg[None, None], size=(h, w), mode="area").flatten()  # (h*w,) region share per cell
    return (weights.float() * share.to(weights.device)).sum(-1)


def find_failure_cases(predicted: ArrayLike, truth: ArrayLike, vessels: ArrayLike, ids: Sequence[str] | None = None,
                       small: float = 0.01, min_fp_pixels: int = 3, min_recall: float = 0.1) -> pd.DataFrame:
    """Two failure modes per image: prediction on a vessel look-alike, and small nodules missed.

    A *vessel false positive* is a predicted pixel inside the vessel mask and outside the nodule
    truth; an image is flagged when it has at least ``min_fp_pixels`` of them. A *small nodule* is
    one connected component of the truth with area < ``small`` of the image (8-connectivity); it
    is *missed* when less than ``min_recall`` of its pixels are predicted.

    Args:
        predicted: (B, H, W) binary prediction.
        truth: (B, H, W) binary nodule truth.
        vessels: (B, H, W) binary vessel masks (``phantom.sample(..., return_aux=True)``).
        ids: optional image ids (the frame's index).
        small: area fraction below which a nodule counts as small (paper's size buckets: 1 %).
        min_fp_pixels: vessel false-positive pixels that flag an image.
        min_recall: share of a small nodule's pixels that must be predicted for it to count as found.

    Returns:
        DataFrame, one row per image: nodule_area, predicted_area, vessel_area, vessel_fp_pixels,
        vessel_fp (bool), small_nodules, missed_small.
    """
    pred, gt, ves = (to_numpy(a) > 0.5 for a in (predicted, truth, vessels))
    if not pred.shape == gt.shape == ves.shape or pred.ndim != 3:
        raise ValueError(f"predicted, truth and vessels must be (B, H, W) of one shape, got "
                         f"{pred.shape}, {gt.shape}, {ves.shape}")
    if ids is not None and len(ids) != pred.shape[0]:
        raise ValueError(f"ids has {len(ids)} entries for {pred.shape[0]} images")
    n_pix = pred.shape[1] * pred.shape[2]
    rows = []
    for p, g, v in zip(pred, gt, ves):
        labels, n = ndimage.label(g, structure=np.ones((3, 3)))
        areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]  # (n,) pixels per nodule
        hits = np.bincount(labels[p].ravel(), minlength=n + 1)[1:]  # (n,) predicted pixels per nodule
        is_small = areas < small * n_pix
        fp = int((p & v & ~g).sum())
        rows.append({"nodule_area": g.mean(), "predicted_area": p.mean(), "vessel_area": v.mean(),
                     "vessel_fp_pixels": fp, "vessel_fp": fp >= min_fp_pixels, "small_nodules": int(is_small.sum()),
                     "missed_small": int((is_small & (hits < min_recall * areas)).sum())})
    return pd.DataFrame(rows, index=list(ids) if ids is not None else None)


# ----------------------------------------------------------------------------- plotting


def _check_index(rec: AttentionRecording, index: int) -> None:
    if not 0 <= index < rec.images.shape[0]:
        raise ValueError(f"index {index} out of range for a recording of {rec.images.shape[0]} images")


def _check_layer(layer: int, n: int, what: str) -> int:
    if not 1 <= layer <= n:
        raise ValueError(f"layer {layer} out of range: the {what} has layers 1..{n}")
    return layer - 1


def _heads(weights: Tensor, head: int) -> Tensor:
    """One head (head >= 0) or the mean over heads (head == -1) of (heads, ...) weights."""
    if not -1 <= head < weights.shape[0]:
        raise ValueError(f"head {head} out of range: {weights.shape[0]} heads (-1 = mean)")
    return weights.mean(0) if head == -1 else weights[head]


def _truth(rec: AttentionRecording, index: int) -> np.ndarray | None:
    return None if rec.truth is None else to_numpy(rec.truth[index])


def show_vit_attention(rec: AttentionRecording, index: int = 0, layer: int = 1, token: int = 0) -> Figure:
    """ViT self-attention (eq. 2) of the class token and of one patch, per head, over the image.

    Rows: the class token's attention over the patches, then patch ``token``'s. Columns: every
    head of ``layer``, the mean over heads, and the attention rollout through layers 1..``layer``
    (heads averaged, identity added for the residual, rows renormalized, multiplied through). Each
    token covers one cell of the token grid; the attended patch is outlined in cyan-blue, the true
    nodule in cyan. The class token's own column (key 0) is left out of the map; titles give the
    largest patch weight and the weight on the class token. Heads and their mean share one colour
    scale from 0, so a uniform head looks flat (compare its maximum with the uniform 1/(1 + h*w)).

    Args:
        rec: a recording (``collect_attention``).
        index: image of the recording.
        layer: ViT layer, 1..L.
        token: patch whose attention the second row shows, row-major in the token grid.

    Returns:
        the figure.
    """
    _check_index(rec, index)
    li = _check_layer(layer, len(rec.vit), "ViT")
    h, w = rec.grid
    if not 0 <= token < h * w:
        raise ValueError(f"token {token} out of range for a {h}x{w} token grid")
    img, gt = display_image(rec.images[index]), _truth(rec, index)
    H, W = img.shape[:2]
    attn = rec.vit[li][index]  # (heads, 1+h*w, 1+h*w)
    heads = attn.shape[0]
    roll = attention_rollout([m[index] for m in rec.vit[: li + 1]])  # (1+h*w, 1+h*w)
    fig, axes = panel_grid(2, heads + 2, panel=2.0)
    for r, (row, name) in enumerate(((0, "class token"), (1 + token, f"patch {token} ({token // w},{token % w})"))):
        panels = [attn[k, row] for k in range(heads)] + [attn[:, row].mean(0), roll[row]]  # (1+h*w,) each
        titles = [f"head {k}" for k in range(heads)] + ["mean of heads", f"rollout, layers 1-{layer}"]
        vmax = max(float(p[1:].max()) for p in panels[:-1])  # one scale from 0 for the heads and their mean
        for c, (p, t) in enumerate(zip(panels, titles)):
            ax = axes[r, c]
            im = overlay_map(ax, img, to_numpy(p[1:]).reshape(h, w), vmax=vmax if c <= heads else None, contour=gt)
            ax.set_title(f"{t}\nmax {float(p[1:].max()):.3f}, cls {float(p[0]):.3f}", fontsize=8)
            if r == 1:
                sy, sx = H / h, W / w
                ax.add_patch(Rectangle(((token % w) * sx - 0.5, (token // w) * sy - 0.5), sx, sy,
                                       fill=False, ec="deepskyblue", lw=1.5))
        axes[r, 0].text(-0.08, 0.5, name, rotation=90, ha="right", va="center", fontsize=9,
                        transform=axes[r, 0].transAxes)
        fig.colorbar(axes[r, 0].images[-1], ax=list(axes[r, : heads + 1]), shrink=0.8, pad=0.01)
        fig.colorbar(im, ax=axes[r, heads + 1], shrink=0.8, pad=0.01)  # the rollout's own scale
    fig.suptitle(f"ViT layer {layer} of {len(rec.vit)}, {h}x{w} tokens (uniform weight 1/{attn.shape[-1]} = "
                 f"{1 / attn.shape[-1]:.3f})" + _id(rec, index), fontsize=10)
    return fig


def _id(rec: AttentionRecording, index: int) -> str:
    return f" · {rec.ids[index]}" if rec.ids else f" · image {index}"


def show_cross_attention(rec: AttentionRecording, index: int = 0, queries: Sequence[int] = (0,), head: int = -1,
                         smooth: bool = True) -> Figure:
    """Decoder cross-attention (eq. 5) of some queries, one row per query, one column per layer.

    Each level map (1/8, 1/4, 1/2 of the image, coarse to fine) is upsampled to the image
    (bilinear when ``smooth``); the eq. 6 region the layer allowed is outlined in dashed white
    (no outline: the whole level was allowed), the true nodule in cyan. The last column is the
    query's final mask sigmoid(Z_T); row titles give p(object) (eq. 8-9).

    Args:
        rec: a recording (``collect_attention``).
        index: image of the recording.
        queries: query indices, one row each (e.g. the winning and a losing query).
        head: head to show, -1 = mean over heads.
        smooth: bilinear upsampling (False: one block per key).

    Returns:
        the figure.
    """
    _check_index(rec, index)
    n_q = rec.mask_logits[0].shape[1]
    if not queries or any(not 0 <= q < n_q for q in queries):
        raise ValueError(f"queries {list(queries)} must be a non-empty list of indices in 0..{n_q - 1}")
    img, gt = display_image(rec.images[index]), _truth(rec, index)
    shape = img.shape[:2]
    T = len(rec.cross)
    p_obj = rec.p_object(index)
    fig, axes = panel_grid(len(queries), T + 1, panel=2.2)
    for r, q in enumerate(queries):
        for t in range(T):
            grid = rec.level_sizes[t]
            row = _heads(rec.cross[t][index], head)[q]  # (h*w,)
            ax = axes[r, t]
            overlay_map(ax, img, upsample_map(row, shape, grid, "bilinear" if smooth else "nearest"), contour=gt)
            if rec.allowed[t] is not None:
                allowed = rec.allowed[t][index, 0, q].float()  # (h*w,): heads share the mask
                outline_mask(ax, upsample_map(allowed, shape, grid, "nearest"), "white", "dashed")
            mass = "" if gt is None else f", on nodule {float(attention_mass(row, gt, grid)):.2f}"
            ax.set_title(f"layer {t + 1} ({grid[0]}x{grid[1]}){mass}", fontsize=8)
        final = rec.mask_logits[-1][index, q].sigmoid()  # (H, W)
        overlay_map(axes[r, T], img, to_numpy(final), vmax=1.0, cmap="viridis", contour=gt)
        axes[r, T].set_title("final mask sigmoid(Z_T)", fontsize=8)
        axes[r, 0].text(-0.08, 0.5, f"query {q}\np(object) {float(p_obj[q]):.2f}", rotation=90, ha="right",
                        va="center", fontsize=9, transform=axes[r, 0].transAxes)
    which = "mean of heads" if head == -1 else f"head {head}"
    fig.suptitle(f"cross-attention per layer ({which}), coarse to fine" + _id(rec, index), fontsize=10)
    return fig


def show_attention_explorer(rec: AttentionRecording, index: int = 0, layer: int = 1, head: int = -1,
                            query: int = 0, threshold: float = 0.5) -> Figure:
    """One query at one decoder layer: what it had, what it was allowed, where it looked, what it made.

    Panels: the image with the true nodule (cyan) and the model's reported prediction at
    ``threshold`` (red); the query's input mask sigmoid(Z_{t-1}); the eq. 6 region recomputed at
    ``threshold`` (the model itself uses 0.5; light = may attend); the cross-attention of the chosen
    head (-1 = mean), upsampled, with the region the model really used outlined dashed; the query's
    mask after the layer, sigmoid(Z_t), outlined at ``threshold``.

    Args:
        rec: a recording (``collect_attention``).
        index: image of the recording.
        layer: decoder layer t, 1..T.
        head: head, -1 = mean over heads.
        query: query index.
        threshold: probability threshold for the outlines and the recomputed eq. 6 region.

    Returns:
        the figure.
    """
    _check_index(rec, index)
    ti = _check_layer(layer, len(rec.cross), "query decoder")
    n_q = rec.mask_logits[0].shape[1]
    if not 0 <= query < n_q:
        raise ValueError(f"query {query} out of range for {n_q} queries")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    img, gt = display_image(rec.images[index]), _truth(rec, index)
    shape, grid = img.shape[:2], rec.level_sizes[ti]
    before = to_numpy(rec.mask_logits[ti][index, query].sigmoid())  # (H, W) sigmoid(Z_{t-1})
    after = to_numpy(rec.mask_logits[ti + 1][index, query].sigmoid())  # (H, W) sigmoid(Z_t)
    z_prev = rec.mask_logits[ti][index, query][None, None]  # (1, 1, H, W)
    region = attention_mask_from_logits(z_prev, grid, threshold=threshold)[0, 0, 0].float()  # (h*w,) eq. 6
    row = _heads(rec.cross[ti][index], head)[query]  # (h*w,)
    pred = to_numpy(rec.logits[index, 0].sigmoid()) >= threshold  # (H, W)
    fig, axes = panel_grid(1, 5, panel=2.3)
    overlay_map(axes[0, 0], img, np.zeros(shape, np.float32), alpha=0.0, contour=gt)
    outline_mask(axes[0, 0], pred.astype(np.float32), "red")
    axes[0, 0].set_title(f"prediction >= {threshold:.2f}: {pred.mean():.1%}", fontsize=8)
    overlay_map(axes[0, 1], img, before, vmax=1.0, cmap="viridis", contour=gt)
    outline_mask(axes[0, 1], (before >= threshold).astype(np.float32), "white", "dashed")
    axes[0, 1].set_title(f"input mask sigmoid(Z_{ti})", fontsize=8)
    overlay_map(axes[0, 2], img, region.reshape(grid).numpy(), vmax=1.0, cmap="gray", alpha=0.55, contour=gt)
    axes[0, 2].set_title(f"eq. 6 at {threshold:.2f}: {int(region.sum())}/{region.numel()} keys", fontsize=8)
    overlay_map(axes[0, 3], img, upsample_map(row, shape, grid), contour=gt)
    if rec.allowed[ti] is not None:
        outline_mask(axes[0, 3], upsample_map(rec.allowed[ti][index, 0, query].float(), shape, grid, "nearest"),
                 "white", "dashed")
    axes[0, 3].set_title(f"cross-attention ({'mean' if head == -1 else f'head {head}'})", fontsize=8)
    overlay_map(axes[0, 4], img, after, vmax=1.0, cmap="viridis", contour=gt)
    outline_mask(axes[0, 4], (after >= threshold).astype(np.float32), "white", "dashed")
    axes[0, 4].set_title(f"output mask sigmoid(Z_{ti + 1})", fontsize=8)
    p = float(rec.p_object(index)[query])
    fig.suptitle(f"layer {layer} ({grid[0]}x{grid[1]}), query {query} (p(object) {p:.2f})" + _id(rec, index),
                 fontsize=10)
    return fig


def show_failure_cases(images: ArrayLike | Sequence[ArrayLike], truth: ArrayLike, predicted: ArrayLike,
                       vessels: ArrayLike | None = None, attention: ArrayLike | Sequence[ArrayLike] | None = None,
                       titles: Sequence[str] | None = None) -> Figure:
    """Failure cases side by side: outlines on top, optionally an attention map below, one column each.

    Args:
        images: (n, H, W[, 3]) display images in [0, 1] (or a list of them).
        truth: (n, H, W) nodule truth, outlined in cyan.
        predicted: (n, H, W) binary prediction, outlined in red.
        vessels: optional (n, H, W) vessel masks, outlined in yellow (dashed).
        attention: optional n maps, each (H, W) or (h, w) (upsampled bilinearly), drawn in a second row.
        titles: optional n column titles.

    Returns:
        the figure.
    """
    imgs = [display_image(i) for i in images]
    n = len(imgs)
    if n == 0:
        raise ValueError("show_failure_cases: no cases to show")
    gts, preds = to_numpy(truth), to_numpy(predicted)
    ves = None if vessels is None else to_numpy(vessels)
    for name, arr in (("truth", gts), ("predicted", preds), ("vessels", ves)):
        if arr is not None and (arr.shape[0] != n or arr.shape[1:] != imgs[0].shape[:2]):
            raise ValueError(f"{name} must be ({n}, H, W) = {(n, *imgs[0].shape[:2])}, got {arr.shape}")
    if attention is not None and len(attention) != n:
        raise ValueError(f"attention has {len(attention)} maps for {n} cases")
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles has {len(titles)} entries for {n} cases")
    fig, axes = panel_grid(1 + (attention is not None), n, panel=2.2)
    for j, img in enumerate(imgs):
        ax = axes[0, j]
        overlay_map(ax, img, np.zeros(img.shape[:2], np.float32), alpha=0.0, contour=gts[j])
        outline_mask(ax, (preds[j] > 0.5).astype(np.float32), "red")
        if ves is not None:
            outline_mask(ax, (ves[j] > 0.5).astype(np.float32), "yellow", "dashed")
        ax.set_title(titles[j] if titles is not None else f"case {j}", fontsize=8)
        if attention is not None:
            a = to_numpy(attention[j])
            a = a if a.shape == img.shape[:2] else upsample_map(a, img.shape[:2])
            overlay_map(axes[1, j], img, a, contour=gts[j])
            if ves is not None:
                outline_mask(axes[1, j], (ves[j] > 0.5).astype(np.float32), "yellow", "dashed")
    legend = "cyan: nodule truth · red: prediction" + (" · yellow dashed: vessels" if ves is not None else "")
    fig.suptitle(legend, fontsize=9)
    return fig
