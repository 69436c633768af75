"""Drawing helpers shared by the plotting modules: arrays to display, panel grids, maps over images.

Images are display-ready: (H, W), (H, W, 3) or (C, H, W) with values in [0, 1] (dataset items go
through :func:`ssmt_lib.data.denormalize` first). Maps on a coarser grid than the image (tokens,
decoder levels) are drawn over it with ``imshow(extent=...)``, so every cell covers exactly the
pixels it stands for. Figures are built without pyplot, so nothing global changes and
``ipywidgets.interact`` shows exactly one figure per update.
"""
from __future__ import annotations

import math

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from torch import Tensor

__all__ = [
    "ArrayLike", "to_numpy", "display_image", "level_grid", "as_grid", "panel_grid", "draw_image",
    "overlay_map", "outline_mask",
]

ArrayLike = Tensor | np.ndarray


def to_numpy(x: ArrayLike) -> np.ndarray:
    """A float32 NumPy copy of a tensor (detached, on the CPU) or an array.

    Args:
        x: tensor or array-like.

    Returns:
        float32 array of the same shape.
    """
    return x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float32)


def display_image(image: ArrayLike) -> np.ndarray:
    """Display array (H, W) or (H, W, 3) in [0, 1] from (H, W), (H, W, 3) or (C, H, W).

    Args:
        image: a display-ready image, channels first or last (values outside [0, 1] are clipped).

    Returns:
        (H, W) for one channel, else (H, W, 3).
    """
    arr = to_numpy(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)  # (H, W, C)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise ValueError(f"image must be (H, W), (H, W, 3) or (C, H, W) with C in (1, 3), got {arr.shape}")
    return np.clip(arr, 0.0, 1.0)


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


def as_grid(values: np.ndarray, grid: tuple[int, int] | None, image_shape: tuple[int, int], what: str) -> np.ndarray:
    """A flat (h*w,) map reshaped to (h, w); an (h, w) map is returned as it is.

    Args:
        values: (h*w,) or (h, w) map.
        grid: (h, w) of a flat map; None = the grid with the image's aspect (:func:`level_grid`).
        image_shape: (H, W) of the image the map is drawn over.
        what: the map's name for the error message.

    Returns:
        (h, w) array.
    """
    if values.ndim == 2:
        return values
    h, w = grid if grid is not None else level_grid(values.size, image_shape)
    if h * w != values.size:
        raise ValueError(f"{what} has {values.size} entries, not grid {(h, w)}")
    return values.reshape(h, w)


def panel_grid(nrows: int, ncols: int, panel: float = 2.4, title_space: float = 0.0) -> tuple[Figure, np.ndarray]:
    """A new figure of ``nrows`` x ``ncols`` square panels with their axes turned off.

    Args:
        nrows, ncols: panels down and across.
        panel: side of one panel in inches.
        title_space: inches added to the figure's height (room for multi-line panel titles).

    Returns:
        (figure, axes) with axes an (nrows, ncols) array.
    """
    fig = Figure(figsize=(panel * ncols, panel * nrows + title_space), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def draw_image(ax: Axes, img: np.ndarray) -> None:
    """A display image in grey (or colour for (H, W, 3)) on the fixed [0, 1] scale, one pixel per cell.

    Args:
        ax: the axes to draw on.
        img: (H, W) or (H, W, 3) in [0, 1] (:func:`display_image`).
    """
    ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")


def outline_mask(ax: Axes, mask: np.ndarray, color: str, style: str = "solid", linewidth: float = 0.9) -> None:
    """Contour of a binary (H, W) mask, skipped when it is empty or full (no edge to draw).

    Args:
        ax: the axes to draw on.
        mask: (H, W) mask in {0, 1} (or probabilities, outlined at 0.5).
        color: line colour.
        style: matplotlib line style ("solid", "dashed", ...).
        linewidth: line width in points.
    """
    if mask.min() < 0.5 < mask.max():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=color, linewidths=linewidth, linestyles=style)


def overlay_map(ax: Axes, img: np.ndarray, grid_map: np.ndarray, vmax: float | None = None, cmap: str = "inferno",
                alpha: float = 0.6, contour: ArrayLike | None = None) -> AxesImage:
    """Image, then ``grid_map`` (h, w) stretched over the whole image (nearest), then a cyan contour.

    Args:
        ax: the axes to draw on.
        img: (H, W) or (H, W, 3) display image in [0, 1].
        grid_map: (h, w) map on any grid that tiles the image; each entry covers (H/h) x (W/w) pixels.
        vmax: top of the colour scale (bottom is 0); None = the map's maximum.
        cmap: colour map of the overlay.
        alpha: overlay opacity.
        contour: optional (H, W) binary mask outlined in cyan (e.g. the ground-truth nodule).

    Returns:
        the overlay's image artist (for a colour bar).
    """
    H, W = img.shape[:2]
    draw_image(ax, img)
    if vmax is None:
        vmax = float(grid_map.max()) or 1.0  # per-panel scale; an all-zero map still gets a valid range
    im = ax.imshow(grid_map, cmap=cmap, alpha=alpha, vmin=0, vmax=vmax,
                   extent=(-0.5, W - 0.5, H - 0.5, -0.5), interpolation="nearest")  # one cell per grid entry
    if contour is not None:
        outline_mask(ax, to_numpy(contour).reshape(H, W), "cyan", linewidth=0.8)
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)
    return im
