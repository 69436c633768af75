"""Tokens and positions: how the hybrid encoder turns an image into a sequence (paper eq. 1).

SSMT-Net paper (*Anatomy-Guided Representation Learning Using a Transformer-Based Network for
Thyroid Nodule Segmentation in Ultrasound Images*), eq. 1: the image is cut into patches (here: the
ResNet feature map's cells), each flattened and projected to a token, plus a position embedding.
``show_patch_grid`` draws the cutting, ``show_token_grid`` which pixels each token stands for,
``show_feature_maps`` the ResNet skips, ``pos_embed_similarity`` / ``show_pos_embed_similarity``
what the position embeddings encode (as in the ViT paper's figure 7). Drawing conventions:
:mod:`ssmt_lib.viz.common`.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from ssmt_lib.viz.common import ArrayLike, display_image, draw_image, overlay_map, panel_grid, to_numpy

__all__ = [
    "pos_embed_similarity", "show_patch_grid", "show_token_grid", "show_feature_maps", "show_pos_embed_similarity",
]


def pos_embed_similarity(pos_embed: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
    """Cosine similarity of every grid position's embedding with every other one.

    Args:
        pos_embed: (h*w, D) patch position embeddings (leave out class-token rows), or (1, h*w, D).
        grid: (h, w); None = square.

    Returns:
        (h, w, h, w): entry [i, j] is the (h, w) similarity map of position (i, j).
    """
    pos = pos_embed.detach().float().reshape(-1, pos_embed.shape[-1])  # (h*w, D)
    n = pos.shape[0]
    h, w = grid if grid is not None else (math.isqrt(n), math.isqrt(n))
    if h * w != n:
        raise ValueError(f"pos_embed has {n} positions, which is not grid {grid or (h, w)}; drop the class token row?")
    unit = F.normalize(pos, dim=-1)
    return (unit @ unit.T).reshape(h, w, h, w)  # (h, w, h, w)


def show_patch_grid(image: ArrayLike, patch_size: int) -> Figure:
    """Eq. 1's first step: cut the image into P x P patches and flatten them into a sequence.

    Left: the image with the patch grid (pixels beyond the last full patch, which a ViT drops,
    shaded red). Right: the sequence ``x_p`` as a matrix, one flattened patch per row.

    Args:
        image: display image (H, W), (H, W, 3) or (C, H, W) in [0, 1].
        patch_size: P in pixels.

    Returns:
        the figure.
    """
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    img = display_image(image)
    H, W = img.shape[:2]
    h, w = H // patch_size, W // patch_size
    if h == 0 or w == 0:
        raise ValueError(f"patch_size={patch_size} is larger than the image {H}x{W}")
    chans = img[..., None] if img.ndim == 2 else img  # (H, W, C)
    c = chans.shape[-1]
    crop = chans[: h * patch_size, : w * patch_size].transpose(2, 0, 1)  # (C, h*P, w*P)
    seq = crop.reshape(c, h, patch_size, w, patch_size).transpose(1, 3, 0, 2, 4).reshape(h * w, -1)  # (N, C*P*P)
    fig = Figure(figsize=(7.5, 3.4), layout="constrained")
    ax, ax_seq = fig.subplots(1, 2, width_ratios=[1, 1.15])
    draw_image(ax, img)
    for k in range(h + 1):
        ax.axhline(k * patch_size - 0.5, color="yellow", lw=0.6)
    for k in range(w + 1):
        ax.axvline(k * patch_size - 0.5, color="yellow", lw=0.6)
    if h * patch_size < H or w * patch_size < W:
        ax.add_patch(Rectangle((w * patch_size - 0.5, -0.5), W - w * patch_size, H, color="red", alpha=0.35))
        ax.add_patch(Rectangle((-0.5, h * patch_size - 0.5), W, H - h * patch_size, color="red", alpha=0.35))
    ax.set_title(f"P = {patch_size}: {h} x {w} = {h * w} patches")
    ax.set_axis_off()
    ax_seq.imshow(seq, cmap="gray", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax_seq.set_title(f"sequence x_p: ({h * w}, {c}*{patch_size}*{patch_size} = {seq.shape[1]})")
    ax_seq.set_xlabel("pixel of the flattened patch")
    ax_seq.set_ylabel("token (row-major patch index)")
    return fig


def show_token_grid(image: ArrayLike, grid: tuple[int, int], token: tuple[int, int] | None = None,
                    saliency: ArrayLike | Mapping[str, ArrayLike] | None = None) -> Figure:
    """Which pixels each token stands for: the grid of token cells and, optionally, one token's saliency.

    Args:
        image: display image (H, W[, 3]) or (C, H, W).
        grid: (h, w) token grid; each cell is (H/h) x (W/w) pixels (16 x 16 for the R50-ViT).
        token: (row, col) of a token to highlight in every panel.
        saliency: (H, W) map, e.g. |d token / d image|, or title -> map; one extra panel each.

    Returns:
        the figure.
    """
    img = display_image(image)
    H, W = img.shape[:2]
    h, w = grid
    if H % h or W % w:
        raise ValueError(f"grid {grid} does not tile an image of {H}x{W} pixels")
    sy, sx = H // h, W // w
    named = {} if saliency is None else dict(saliency) if isinstance(saliency, Mapping) else {"saliency": saliency}
    fig, axes = panel_grid(1, 1 + len(named), panel=3.4)
    draw_image(axes[0, 0], img)
    for k in range(h + 1):
        axes[0, 0].axhline(k * sy - 0.5, color="yellow", lw=0.5)
    for k in range(w + 1):
        axes[0, 0].axvline(k * sx - 0.5, color="yellow", lw=0.5)
    axes[0, 0].set_title(f"{h} x {w} tokens, each a {sy} x {sx} px cell", fontsize=9)
    for ax, (title, sal) in zip(axes[0, 1:], named.items()):
        sal = to_numpy(sal)
        if sal.shape != (H, W):
            raise ValueError(f"saliency {title!r} must be (H, W) = {(H, W)}, got {sal.shape}")
        overlay_map(ax, img, sal, cmap="magma", alpha=0.75)
        ax.set_title(title, fontsize=9)
    if token is not None:
        r, c = token
        if not (0 <= r < h and 0 <= c < w):
            raise ValueError(f"token {token} is outside the grid {grid}")
        for ax in axes.flat:
            ax.add_patch(Rectangle((c * sx - 0.5, r * sy - 0.5), sx, sy, fill=False, ec="cyan", lw=1.5))
    return fig


def show_feature_maps(maps: Mapping[str, ArrayLike], image: ArrayLike | None = None, channels: int = 4) -> Figure:
    """A few channels of each feature map (e.g. the ResNet skips at 1/2, 1/4, 1/8), one row per map.

    The ``channels`` channels with the largest spatial variance are shown, each min-max scaled.

    Args:
        maps: name -> (C, h, w) or (1, C, h, w).
        image: optional display image, shown once (top left); the first column then names the rows.
        channels: channels per row.

    Returns:
        the figure.
    """
    extra = image is not None
    fig, axes = panel_grid(len(maps), channels + extra, panel=1.6)
    for row, (name, fmap) in enumerate(maps.items()):
        arr = to_numpy(fmap)
        arr = arr[0] if arr.ndim == 4 else arr  # (C, h, w)
        if arr.ndim != 3:
            raise ValueError(f"feature map {name!r} must be (C, h, w) or (1, C, h, w), got {arr.shape}")
        if extra and row == 0:
            draw_image(axes[0, 0], display_image(image))
            axes[0, 0].set_title("input", fontsize=9)
        if extra:  # the row's name next to its maps
            axes[row, 0].text(0.5, 0.5 if row else -0.12, name, ha="center", va="center", fontsize=9,
                              transform=axes[row, 0].transAxes)
        top = np.argsort(-arr.reshape(arr.shape[0], -1).var(axis=1))[:channels]
        for col, ch in enumerate(top):
            a = arr[ch]
            ax = axes[row, col + extra]
            ax.imshow((a - a.min()) / (np.ptp(a) + 1e-8), cmap="viridis", interpolation="nearest")
            ax.set_title(f"{'' if extra else name + ' '}ch {ch} ({arr.shape[1]}x{arr.shape[2]})", fontsize=8)
    return fig


def show_pos_embed_similarity(pos_embeds: Tensor | Mapping[str, Tensor], grid: tuple[int, int] | None = None) -> Figure:
    """ViT-paper style: for every position, a small map of its embedding's cosine similarity to all others.

    Args:
        pos_embeds: (h*w, D) patch position embeddings (no class token), or name -> such tensors
            (one panel each; grids may differ when ``grid`` is None and each is square).
        grid: (h, w) for every panel; None = square.

    Returns:
        the figure: panel tile (i, j) is the similarity map of position (i, j); each panel has its
        own colour scale (min .. 1), so structure shows even when all similarities are high.
    """
    named = {"": pos_embeds} if isinstance(pos_embeds, Tensor) else dict(pos_embeds)
    fig, axes = panel_grid(1, len(named), panel=3.8)
    for ax, (name, pos) in zip(axes.flat, named.items()):
        sim = to_numpy(pos_embed_similarity(pos, grid))  # (h, w, h, w)
        h, w = sim.shape[:2]
        mosaic = np.full((h * (h + 1), w * (w + 1)), np.nan, np.float32)
        for i in range(h):
            for j in range(w):
                mosaic[i * (h + 1): i * (h + 1) + h, j * (w + 1): j * (w + 1) + w] = sim[i, j]
        im = ax.imshow(mosaic, cmap="viridis", vmin=float(np.nanmin(mosaic)), vmax=1, interpolation="nearest")
        ax.set_title(f"{name} ({h}x{w} positions)".strip(), fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.8, label="cosine similarity")
    return fig
