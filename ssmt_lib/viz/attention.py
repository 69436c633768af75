"""Attention maps and query masks inside SSMT-Net (paper eq. 2-9), from a recording.

SSMT-Net paper (*Anatomy-Guided Representation Learning Using a Transformer-Based Network for
Thyroid Nodule Segmentation in Ultrasound Images*): the ViT's self-attention (eq. 2), the query
decoder's masked cross-attention (eq. 5) with its eq. 6 masks, and the query masks and classes
(eq. 7-9). The weights come from :func:`ssmt_lib.recording.record_attention` and the masks from
:func:`ssmt_lib.recording.record_attention_masks` (hooks; the model is not edited). Two kinds of
functions live here:

* tensor helpers: ``vit_attention`` / ``query_attention`` (pick layers out of a recording, in
  order) and ``attention_rollout`` (Abnar & Zuidema, "Quantifying Attention Flow in Transformers",
  ACL 2020);
* pure plotting functions: each takes tensors or arrays and returns a new
  :class:`matplotlib.figure.Figure` (conventions: :mod:`ssmt_lib.viz.common`).

A trained model's maps over its test images, from one recorded batch: :mod:`ssmt_lib.viz.maps`.
"""
from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ssmt_lib.viz.common import ArrayLike, as_grid, display_image, level_grid, overlay_map, panel_grid, to_numpy

__all__ = [
    "vit_attention", "query_attention", "attention_rollout", "show_overlays", "show_attention_map",
    "show_attention_heads", "show_query_masks", "show_coarse_to_fine",
]

# ----------------------------------------------------------------------------- recordings and tensors


def _ordered(maps: Mapping[str, Tensor | None], pattern: str, what: str) -> list:
    """Values whose key matches ``pattern`` (one group = layer index), sorted by layer."""
    found = {int(m.group(1)): v for k, v in maps.items() if (m := re.fullmatch(pattern, k))}
    if not found:
        raise KeyError(f"no {what} in the recording; keys: {sorted(maps)[:8]}{' ...' if len(maps) > 8 else ''}")
    return [found[i] for i in sorted(found)]


def vit_attention(maps: Mapping[str, Tensor]) -> list[Tensor]:
    """The ViT self-attention maps of a ``record_attention`` recording, layer 0 first.

    Args:
        maps: recording of an SSMT-Net (keys like ``encoder.vit.blocks.3.attn``) or a bare timm ViT
            (``blocks.3.attn``).

    Returns:
        list of (B, heads, 1 + h*w, 1 + h*w) tensors (class token first).
    """
    return _ordered(maps, r"(?:.*\.)?blocks\.(\d+)\.attn", "ViT block attention")


def query_attention(maps: Mapping[str, Tensor | None], task: str = "nodule", kind: str = "cross_attn") -> list:
    """One task's query-decoder entries of a recording (``record_attention`` or ``record_attention_masks``).

    Args:
        maps: the recording.
        task: "nodule" or "gland".
        kind: "cross_attn" (queries -> pixels, eq. 5) or "self_attn" (queries -> queries).

    Returns:
        list over layers t = 1..T of the recorded values, e.g. (B, heads, N, h_t*w_t) weights.
    """
    if kind not in ("cross_attn", "self_attn"):
        raise ValueError(f"kind={kind!r}; choose 'cross_attn' or 'self_attn'")
    return _ordered(maps, rf"(?:.*\.)?query_decoders\.{re.escape(task)}\.layers\.(\d+)\.{kind}", f"{task} {kind}")

def attention_rollout(maps: Sequence[Tensor], add_residual: bool = True) -> Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): how much each output token draws on each input token.

    Per layer: average the heads, add the identity for the residual connection (eq. 2's ``+ z``),
    renormalize the rows; then multiply through the layers: ``R = A_L ... A_2 A_1``.

    Args:
        maps: L self-attention maps in layer order, each (B, heads, N, N) or (heads, N, N).
        add_residual: add the identity before renormalizing (the paper's choice; False = raw product).

    Returns:
        (B, N, N) or (N, N): row i = distribution of output token i over the input tokens (sums to 1).
    """
    if not maps:
        raise ValueError("attention_rollout needs at least one attention map")
    rollout = None
    for i, a in enumerate(maps):
        if a.dim() not in (3, 4) or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"attention map {i} must be (B, heads, N, N) or (heads, N, N), got {tuple(a.shape)}")
        a = a.float().mean(dim=-3)  # (B, N, N): heads averaged
        if add_residual:
            a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
            a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout


# ----------------------------------------------------------------------------- attention and masks


def show_overlays(image: ArrayLike, maps: Mapping[str, ArrayLike], grid: tuple[int, int] | None = None,
                  contour: ArrayLike | None = None, shared_scale: bool = False, cmap: str = "inferno",
                  ncols: int | None = None) -> Figure:
    """Several maps over the same image, one panel each (e.g. masked vs unmasked attention).

    Args:
        image: display image.
        maps: title -> (h, w) map, or flat (h*w,) with ``grid`` (None = the image's aspect).
        grid: grid of flat maps.
        contour: optional (H, W) binary mask outlined in cyan (e.g. the ground-truth nodule).
        shared_scale: one colour scale for all panels (compare magnitudes) instead of per panel.
        cmap: colour map of the overlays.
        ncols: panels per row (default: all in one row).

    Returns:
        the figure.
    """
    img = display_image(image)
    arrays = {k: as_grid(to_numpy(v), grid, img.shape[:2], repr(k)) for k, v in maps.items()}
    vmax = max(float(a.max()) for a in arrays.values()) if shared_scale and arrays else None
    ncols = ncols or max(len(arrays), 1)
    fig, axes = panel_grid(math.ceil(len(arrays) / ncols), ncols, panel=2.6)
    for ax, (title, a) in zip(axes.flat, arrays.items()):
        im = overlay_map(ax, img, a, vmax=vmax, cmap=cmap, contour=contour)
        ax.set_title(title, fontsize=9)
        if not shared_scale:
            fig.colorbar(im, ax=ax, shrink=0.7)
    if shared_scale and arrays:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.7)
    return fig


def show_attention_map(image: ArrayLike, attn_row: ArrayLike, grid: tuple[int, int] | None = None,
                       title: str = "attention", contour: ArrayLike | None = None) -> Figure:
    """One query's attention weights over the key grid, drawn on the image.

    Args:
        image: display image.
        attn_row: (Nk,) weights of one query (one head or averaged), or (h, w).
        grid: (h, w) of the keys; None = the image's aspect.
        title: panel title.
        contour: optional (H, W) binary mask outlined.

    Returns:
        the figure.
    """
    return show_overlays(image, {title: attn_row}, grid=grid, contour=contour)


def show_attention_heads(image: ArrayLike, attn: ArrayLike, query: int, grid: tuple[int, int] | None = None,
                         prefix_tokens: int = 0, contour: ArrayLike | None = None) -> Figure:
    """Attention of one query, head by head, plus the head mean.

    Args:
        image: display image.
        attn: (heads, Nq, Nk) weights of one image (e.g. ``maps[name][0]``).
        query: row to show (0 = class token for ViT maps).
        grid: key grid (h, w); None = the image's aspect.
        prefix_tokens: keys to drop before the grid (1 for the ViT's class token).
        contour: optional (H, W) binary mask outlined.

    Returns:
        the figure (one row: head 0 .. heads-1, mean).
    """
    a = to_numpy(attn)
    if a.ndim != 3:
        raise ValueError(f"attn must be (heads, Nq, Nk) for one image, got {a.shape}")
    if not 0 <= query < a.shape[1]:
        raise ValueError(f"query {query} out of range for {a.shape[1]} queries")
    rows = a[:, query, prefix_tokens:]  # (heads, h*w)
    maps = {f"head {i}": r for i, r in enumerate(rows)}
    maps["mean of heads"] = rows.mean(0)
    return show_overlays(image, maps, grid=grid, contour=contour)


def show_query_masks(image: ArrayLike, mask_logits: ArrayLike, class_logits: ArrayLike | None = None,
                     ncols: int | None = None, contour: ArrayLike | None = None) -> Figure:
    """Every query's mask (eq. 7, sigmoid of Z) with its foreground probability (eq. 8-9).

    Args:
        image: display image (H, W).
        mask_logits: (N, H', W') mask logits of one image (any resolution; drawn over the image).
        class_logits: optional (N, K+1) class logits; titles then give p(foreground) = 1 - p(no object).
        ncols: panels per row (default N).
        contour: optional (H, W) binary mask outlined.

    Returns:
        the figure.
    """
    masks = torch.as_tensor(to_numpy(mask_logits)).sigmoid().numpy()  # (N, H', W')
    if masks.ndim != 3:
        raise ValueError(f"mask_logits must be (N, H, W) for one image, got {masks.shape}")
    titles = [f"query {i}" for i in range(masks.shape[0])]
    if class_logits is not None:
        fg = 1.0 - torch.as_tensor(to_numpy(class_logits)).softmax(-1)[:, -1].numpy()  # (N,)
        titles = [f"{t}  p={p:.2f}" for t, p in zip(titles, fg)]
    fig = show_overlays(image, dict(zip(titles, masks)), contour=contour, shared_scale=True, cmap="viridis",
                        ncols=ncols)
    return fig


def show_coarse_to_fine(image: ArrayLike, mask_logits: Sequence[ArrayLike], allowed: Sequence[ArrayLike | None],
                        attn: Sequence[ArrayLike], query: int, contour: ArrayLike | None = None) -> Figure:
    """Coarse-to-fine masked cross-attention (eq. 4-6) of one query, one row per decoder layer t.

    Columns: the mask Z_{t-1} the layer starts from; the eq. 6 attention mask built from it at the
    layer's level resolution, over the image (light = may attend, dark = blocked); the layer's
    cross-attention weights (mean over heads); the mask Z_t after the layer.

    Args:
        image: display image (H, W).
        mask_logits: T + 1 tensors (N, H, W): the raw-query prediction, then one per layer.
        allowed: T bool tensors (heads, N, h_t*w_t) or (N, h_t*w_t) as the layers received them, or
            None for an unmasked layer.
        attn: T tensors (heads, N, h_t*w_t) of cross-attention weights.
        query: the query to follow.
        contour: optional (H, W) binary mask outlined.

    Returns:
        the figure.
    """
    T = len(attn)
    if len(mask_logits) != T + 1 or len(allowed) != T:
        raise ValueError(f"need T+1 mask predictions and T masks for T={T} attention maps, "
                         f"got {len(mask_logits)} and {len(allowed)}")
    n_queries = to_numpy(mask_logits[0]).shape[0]
    if not 0 <= query < n_queries:
        raise ValueError(f"query {query} out of range for {n_queries} queries")
    img = display_image(image)
    fig, axes = panel_grid(T, 4, panel=2.3)
    for t in range(T):
        a = to_numpy(attn[t])
        a = a.mean(0) if a.ndim == 3 else a  # (N, h*w): heads averaged
        grid = level_grid(a.shape[-1], img.shape[:2])
        before = torch.as_tensor(to_numpy(mask_logits[t][query])).sigmoid().numpy()
        after = torch.as_tensor(to_numpy(mask_logits[t + 1][query])).sigmoid().numpy()
        overlay_map(axes[t, 0], img, before, vmax=1, cmap="viridis", contour=contour)
        axes[t, 0].set_title(f"layer {t + 1} input: sigmoid(Z_{t})", fontsize=8)
        if allowed[t] is None:
            m = np.ones(grid, np.float32)
            note = "none (unmasked)"
        else:
            m = to_numpy(allowed[t])
            m = (m[0] if m.ndim == 3 else m)[query].reshape(grid)  # (h, w): heads share the mask
            note = f"{int(m.sum())}/{m.size} allowed"
        overlay_map(axes[t, 1], img, m, vmax=1, cmap="gray", alpha=0.55, contour=contour)
        axes[t, 1].set_title(f"eq. 6 mask {grid[0]}x{grid[1]}: {note}", fontsize=8)
        overlay_map(axes[t, 2], img, a[query].reshape(grid), contour=contour)
        axes[t, 2].set_title(f"cross-attention, layer {t + 1}", fontsize=8)
        overlay_map(axes[t, 3], img, after, vmax=1, cmap="viridis", contour=contour)
        axes[t, 3].set_title(f"output: sigmoid(Z_{t + 1})", fontsize=8)
    fig.suptitle(f"query {query}, coarse to fine", fontsize=10)
    return fig
