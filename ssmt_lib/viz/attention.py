"""Looking inside the model: tokens (paper eq. 1), attention maps (eq. 2-5), masks (eq. 6-9).

Two kinds of functions live here:

* recorders and small tensor helpers: ``record_attention`` (re-exported from
  :mod:`ssmt_lib.attention`: hooks on the softmax of every attention layer), ``record_attention_masks``
  (hooks on the ``allowed`` argument each cross-attention layer receives, i.e. the eq. 6 mask
  really used), ``vit_attention`` / ``query_attention`` (pick layers out of a recording, in order),
  ``pos_embed_similarity`` and ``attention_rollout`` (Abnar & Zuidema, 2020);
* pure plotting functions: each takes tensors or arrays and returns a new
  :class:`matplotlib.figure.Figure` built without pyplot, so nothing global changes and
  ``ipywidgets.interact`` shows exactly one figure per update.

Images are display-ready: (H, W), (H, W, 3) or (C, H, W) with values in [0, 1] (dataset items go
through :func:`ssmt_lib.data.denormalize` first). Maps on a coarser grid than the image (tokens,
decoder levels) are drawn over it with ``imshow(extent=...)``, so every cell covers exactly the
pixels it stands for.
"""
from __future__ import annotations

import contextlib
import math
import re
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle
from torch import Tensor, nn

from ssmt_lib.attention import Attention, record_attention

__all__ = [
    "record_attention", "record_attention_masks", "vit_attention", "query_attention", "level_grid",
    "attention_rollout", "pos_embed_similarity", "show_patch_grid", "show_token_grid", "show_feature_maps",
    "show_pos_embed_similarity", "show_overlays", "show_attention_map", "show_attention_heads",
    "show_query_masks", "show_coarse_to_fine",
]

ArrayLike = Tensor | np.ndarray

# ----------------------------------------------------------------------------- recorders and tensors


@contextlib.contextmanager
def record_attention_masks(model: nn.Module) -> Iterator[dict[str, Tensor | None]]:
    """Record the boolean mask every attention layer of ``model`` receives (eq. 6) during the block.

    A forward pre-hook reads the ``allowed`` argument of each :class:`ssmt_lib.attention.Attention`;
    ``None`` means the layer attended everywhere (self-attention, or ``masked_attention=False``).

    Args:
        model: any module containing ``Attention`` layers (SSMT-Net, a query decoder ...).

    Yields:
        dict module name -> (B, heads, Nq, Nk) bool (True = may attend), or None.
    """
    masks: dict[str, Tensor | None] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, Attention):
            def hook(_module, args, kwargs, name=name):
                allowed = kwargs.get("allowed", args[3] if len(args) > 3 else None)
                masks[name] = None if allowed is None else allowed.detach()

            handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    if not handles:
        raise ValueError(f"record_attention_masks: {type(model).__name__} has no ssmt_lib Attention layer")
    try:
        yield masks
    finally:
        for h in handles:
            h.remove()


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
        kind: "cross_attn" (queries -> pixels, eq. 4-5) or "self_attn" (queries -> queries).

    Returns:
        list over layers t = 1..T of the recorded values, e.g. (B, heads, N, h_t*w_t) weights.
    """
    if kind not in ("cross_attn", "self_attn"):
        raise ValueError(f"kind={kind!r}; choose 'cross_attn' or 'self_attn'")
    return _ordered(maps, rf"(?:.*\.)?query_decoders\.{re.escape(task)}\.layers\.(\d+)\.{kind}", f"{task} {kind}")


def level_grid(num_keys: int, image_shape: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a feature level with ``num_keys`` positions and the image's aspect ratio.

    Args:
        num_keys: h * w.
        image_shape: (H, W) of the image the level was computed from.

    Returns:
        (h, w) with h / w == H / W.
    """
    H, W = image_shape
    h = round(math.sqrt(num_keys * H / W))
    if h < 1 or num_keys % h or (num_keys // h) * H != h * W:
        raise ValueError(f"{num_keys} keys do not form a grid with the aspect of an image of shape {image_shape}")
    return h, num_keys // h


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


# ----------------------------------------------------------------------------- plotting helpers


def _np(x: ArrayLike) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float32)


def _image(image: ArrayLike) -> np.ndarray:
    """Display array (H, W) or (H, W, 3) in [0, 1] from (H, W), (H, W, 3) or (C, H, W)."""
    arr = _np(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)  # (H, W, C)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise ValueError(f"image must be (H, W), (H, W, 3) or (C, H, W) with C in (1, 3), got {arr.shape}")
    return np.clip(arr, 0.0, 1.0)


def _axes(nrows: int, ncols: int, panel: float = 2.4) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(panel * ncols, panel * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def _draw_image(ax: Axes, img: np.ndarray) -> None:
    ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")


def _overlay(ax: Axes, img: np.ndarray, grid_map: np.ndarray, vmax: float | None = None, cmap: str = "inferno",
             alpha: float = 0.6, contour: ArrayLike | None = None) -> AxesImage:
    """Image, then ``grid_map`` (h, w) stretched over the whole image (nearest), then a contour."""
    H, W = img.shape[:2]
    _draw_image(ax, img)
    if vmax is None:
        vmax = float(grid_map.max()) or 1.0  # per-panel scale; an all-zero map still gets a valid range
    im = ax.imshow(grid_map, cmap=cmap, alpha=alpha, vmin=0, vmax=vmax,
                   extent=(-0.5, W - 0.5, H - 0.5, -0.5), interpolation="nearest")  # one cell per grid entry
    if contour is not None:
        c = _np(contour).reshape(H, W)
        if c.min() < 0.5 < c.max():  # an empty (or full) mask has no outline to draw
            ax.contour(c, levels=[0.5], colors="cyan", linewidths=0.8)
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)
    return im


def _grid_of(values: np.ndarray, grid: tuple[int, int] | None, image_shape: tuple[int, int], what: str) -> np.ndarray:
    """Reshape a flat (h*w,) map to (h, w); grid None = infer from the image's aspect."""
    if values.ndim == 2:
        return values
    h, w = grid if grid is not None else level_grid(values.size, image_shape)
    if h * w != values.size:
        raise ValueError(f"{what} has {values.size} entries, not grid {(h, w)}")
    return values.reshape(h, w)


# ----------------------------------------------------------------------------- tokens (eq. 1)


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
    img = _image(image)
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
    _draw_image(ax, img)
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
    img = _image(image)
    H, W = img.shape[:2]
    h, w = grid
    if H % h or W % w:
        raise ValueError(f"grid {grid} does not tile an image of {H}x{W} pixels")
    sy, sx = H // h, W // w
    named = {} if saliency is None else dict(saliency) if isinstance(saliency, Mapping) else {"saliency": saliency}
    fig, axes = _axes(1, 1 + len(named), panel=3.4)
    _draw_image(axes[0, 0], img)
    for k in range(h + 1):
        axes[0, 0].axhline(k * sy - 0.5, color="yellow", lw=0.5)
    for k in range(w + 1):
        axes[0, 0].axvline(k * sx - 0.5, color="yellow", lw=0.5)
    axes[0, 0].set_title(f"{h} x {w} tokens, each a {sy} x {sx} px cell", fontsize=9)
    for ax, (title, sal) in zip(axes[0, 1:], named.items()):
        sal = _np(sal)
        if sal.shape != (H, W):
            raise ValueError(f"saliency {title!r} must be (H, W) = {(H, W)}, got {sal.shape}")
        _overlay(ax, img, sal, cmap="magma", alpha=0.75)
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
    fig, axes = _axes(len(maps), channels + extra, panel=1.6)
    for row, (name, fmap) in enumerate(maps.items()):
        arr = _np(fmap)
        arr = arr[0] if arr.ndim == 4 else arr  # (C, h, w)
        if arr.ndim != 3:
            raise ValueError(f"feature map {name!r} must be (C, h, w) or (1, C, h, w), got {arr.shape}")
        if extra and row == 0:
            _draw_image(axes[0, 0], _image(image))
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
    fig, axes = _axes(1, len(named), panel=3.8)
    for ax, (name, pos) in zip(axes.flat, named.items()):
        sim = _np(pos_embed_similarity(pos, grid))  # (h, w, h, w)
        h, w = sim.shape[:2]
        mosaic = np.full((h * (h + 1), w * (w + 1)), np.nan, np.float32)
        for i in range(h):
            for j in range(w):
                mosaic[i * (h + 1): i * (h + 1) + h, j * (w + 1): j * (w + 1) + w] = sim[i, j]
        im = ax.imshow(mosaic, cmap="viridis", vmin=float(np.nanmin(mosaic)), vmax=1, interpolation="nearest")
        ax.set_title(f"{name} ({h}x{w} positions)".strip(), fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.8, label="cosine similarity")
    return fig


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
    img = _image(image)
    arrays = {k: _grid_of(_np(v), grid, img.shape[:2], repr(k)) for k, v in maps.items()}
    vmax = max(float(a.max()) for a in arrays.values()) if shared_scale and arrays else None
    ncols = ncols or max(len(arrays), 1)
    fig, axes = _axes(math.ceil(len(arrays) / ncols), ncols, panel=2.6)
    for ax, (title, a) in zip(axes.flat, arrays.items()):
        im = _overlay(ax, img, a, vmax=vmax, cmap=cmap, contour=contour)
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
    a = _np(attn)
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
    masks = torch.as_tensor(_np(mask_logits)).sigmoid().numpy()  # (N, H', W')
    if masks.ndim != 3:
        raise ValueError(f"mask_logits must be (N, H, W) for one image, got {masks.shape}")
    titles = [f"query {i}" for i in range(masks.shape[0])]
    if class_logits is not None:
        fg = 1.0 - torch.as_tensor(_np(class_logits)).softmax(-1)[:, -1].numpy()  # (N,)
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
    n_queries = _np(mask_logits[0]).shape[0]
    if not 0 <= query < n_queries:
        raise ValueError(f"query {query} out of range for {n_queries} queries")
    img = _image(image)
    fig, axes = _axes(T, 4, panel=2.3)
    for t in range(T):
        a = _np(attn[t])
        a = a.mean(0) if a.ndim == 3 else a  # (N, h*w): heads averaged
        grid = level_grid(a.shape[-1], img.shape[:2])
        before = torch.as_tensor(_np(mask_logits[t][query])).sigmoid().numpy()
        after = torch.as_tensor(_np(mask_logits[t + 1][query])).sigmoid().numpy()
        _overlay(axes[t, 0], img, before, vmax=1, cmap="viridis", contour=contour)
        axes[t, 0].set_title(f"layer {t + 1} input: sigmoid(Z_{t})", fontsize=8)
        if allowed[t] is None:
            m = np.ones(grid, np.float32)
            note = "none (unmasked)"
        else:
            m = _np(allowed[t])
            m = (m[0] if m.ndim == 3 else m)[query].reshape(grid)  # (h, w): heads share the mask
            note = f"{int(m.sum())}/{m.size} allowed"
        _overlay(axes[t, 1], img, m, vmax=1, cmap="gray", alpha=0.55, contour=contour)
        axes[t, 1].set_title(f"eq. 6 mask {grid[0]}x{grid[1]}: {note}", fontsize=8)
        _overlay(axes[t, 2], img, a[query].reshape(grid), contour=contour)
        axes[t, 2].set_title(f"cross-attention, layer {t + 1}", fontsize=8)
        _overlay(axes[t, 3], img, after, vmax=1, cmap="viridis", contour=contour)
        axes[t, 3].set_title(f"output: sigmoid(Z_{t + 1})", fontsize=8)
    fig.suptitle(f"query {query}, coarse to fine", fontsize=10)
    return fig
