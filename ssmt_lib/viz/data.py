"""Looking at the data: phantom samples, TI-RADS galleries, augmentation, data-set statistics.

SSMT-Net (Farooq et al., arXiv 2512.12662) learns from images with a nodule mask (TN3K), a gland
mask (TG3K) and the nodule area fraction (the size estimator's target, "size" below). These views
show exactly those targets: every panel draws the image with the nodule outlined in red and the
gland in yellow, titled with the size and, for the phantom, the ACR TI-RADS level (Tessler et al.,
JACR 2017) and the benign/malignant label.

All plotting functions are pure: they build a new :class:`matplotlib.figure.Figure` without pyplot
(no global state), so ``ipywidgets.interact`` shows exactly one figure per update and a headless
run (papermill, nbval) shows the same figure. Three kinds of input are accepted wherever "samples"
are drawn:

* phantom sample dicts (``phantom.sample``): image (H, W) float in [0, 1], masks (H, W) uint8;
* dataset items (``build_dataset(...)[i]``): image (C, H, W) normalised tensor, masks (1, H, W),
  with ``has_nodule`` / ``has_gland`` saying which masks are labels;
* raw dicts (``dataset.load_raw(i)``, :func:`ssmt_lib.data.stitch`): image (H, W) uint8, masks or None.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import albumentations as A
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import ndimage

from ssmt_lib.data import phantom
from ssmt_lib.data.transforms import denormalize, eval_transform, seed_transform, stitch
from ssmt_lib.viz.common import panel_grid

__all__ = [
    "show_samples", "show_anatomy", "show_gallery", "show_augmentations", "phantom_frame",
    "plot_dataset_stats", "speckle_view",
]

NODULE_COLOR, GLAND_COLOR, VESSEL_COLOR = "red", "yellow", "cyan"
LEVEL_NAMES = {0: "none", 1: "TR1", 2: "TR2", 3: "TR3", 4: "TR4", 5: "TR5"}

# ----------------------------------------------------------------------------- helpers


def _np(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _display(sample: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(image (H, W) or (H, W, 3) in [0, 1], nodule (H, W) or None, gland (H, W) or None) of any sample kind."""
    if "image" not in sample:
        raise ValueError(f"sample has no 'image' key (keys: {sorted(sample)})")
    img = _np(sample["image"])
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.dtype != np.uint8:
        img = denormalize(img)  # dataset item (C, H, W), normalised -> (H, W[, 3]) in [0, 1]
    elif img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0  # raw item
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3):
        raise ValueError(f"sample image must be (H, W), (H, W, C) or (C, H, W), got shape {img.shape}")
    masks = []
    for key, flag in (("nodule_mask", "has_nodule"), ("gland_mask", "has_gland")):
        m = _np(sample.get(key))
        if m is not None and sample.get(flag, True):  # an unlabelled task's zero mask is not drawn
            m = m.reshape(img.shape[:2])  # (1, H, W) -> (H, W)
        else:
            m = None
        masks.append(m)
    return np.clip(img, 0.0, 1.0), masks[0], masks[1]


def _title(sample: Mapping[str, Any]) -> str:
    """'size 0.042 · TR3 · benign' from whatever labels the sample has."""
    parts = []
    if "size" in sample and sample.get("has_nodule", True):
        parts.append(f"size {float(sample['size']):.3f}")
    if "tirads_level" in sample:
        level = int(sample["tirads_level"])
        parts.append(LEVEL_NAMES.get(level, f"TR{level}") if level else "no nodule")
        if level:
            parts.append("malignant" if sample.get("malignant") else "benign")
    return " · ".join(parts) if parts else str(sample.get("id", ""))


def _axes(n: int, ncols: int | None, panel: float) -> tuple[Figure, np.ndarray]:
    """Enough rows of ``ncols`` panels (default: one row) for ``n`` panels, 0.3 in taller for the titles."""
    ncols = max(1, min(ncols or n, n))
    return panel_grid(math.ceil(n / ncols), ncols, panel, title_space=0.3)


def _draw(ax: Axes, img: np.ndarray, nodule: np.ndarray | None, gland: np.ndarray | None,
          contours: bool = True, linewidth: float = 0.9) -> None:
    """Image in grey with the gland (yellow) and nodule (red) outlines."""
    ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if contours:
        for mask, color in ((gland, GLAND_COLOR), (nodule, NODULE_COLOR)):
            if mask is not None and mask.max() > 0 and mask.min() == 0:  # contour needs both levels
                ax.contour(mask.astype(np.float32), levels=[0.5], colors=color, linewidths=linewidth)
    ax.set_axis_off()


# ----------------------------------------------------------------------------- samples


def show_samples(samples: Sequence[Mapping[str, Any]], titles: Sequence[str] | None = None,
                 headers: Sequence[str] | None = None, ncols: int | None = None, contours: bool = True,
                 panel: float = 2.6) -> Figure:
    """Images with their nodule (red) and gland (yellow) contours, titled with size and TI-RADS.

    Args:
        samples: phantom sample dicts, dataset items or raw dicts (see the module docstring).
        titles: one title per sample (default: size, TI-RADS level and benign/malignant, as known).
        headers: one line per sample put above the (default or given) title, e.g. the view kind.
        ncols: panels per row (default: all in one row).
        contours: draw the mask outlines.
        panel: side of one panel in inches.

    Returns:
        the figure.
    """
    samples = list(samples)
    if not samples:
        raise ValueError("show_samples: no samples given")
    for name, given in (("titles", titles), ("headers", headers)):
        if given is not None and len(given) != len(samples):
            raise ValueError(f"show_samples: {len(given)} {name} for {len(samples)} samples")
    fig, axes = _axes(len(samples), ncols, panel)
    for k, (ax, s) in enumerate(zip(axes.flat, samples)):
        img, nod, gla = _display(s)
        _draw(ax, img, nod, gla, contours)
        title = titles[k] if titles is not None else _title(s)
        ax.set_title(title if headers is None else f"{headers[k]}\n{title}", fontsize=8)
    return fig


def _inside_point(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the mask pixel nearest to the mask's centroid (a crescent's centroid can lie outside)."""
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    k = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return float(xs[k]), float(ys[k])


def _anatomy_targets(sample: Mapping[str, Any]) -> list[tuple[str, float, float]]:
    """(label, x, y) of the structures of a phantom sample, found from its masks."""
    gland = np.asarray(sample["gland_mask"], bool)
    nodule = np.asarray(sample["nodule_mask"], bool)
    vessel = np.asarray(sample["aux"]["vessel_mask"], bool)
    H, W = gland.shape
    targets: list[tuple[str, float, float]] = [("skin", 0.12 * W, 1.0)]
    if gland.any():
        rows = np.flatnonzero(gland.any(axis=1))
        cols = np.flatnonzero(gland.any(axis=0))
        x_mid = 0.5 * (cols[0] + cols[-1])
        targets.append(("strap muscles", x_mid + 0.25 * (cols[-1] - cols[0]), 0.7 * rows[0]))
        parenchyma = gland & ~nodule
        bilateral = sample.get("view") == "bilateral" and len(cols) > 4
        if bilateral:  # the trachea's shadow is the darkest deep band between the lobes
            img = np.asarray(sample["image"], np.float32)
            deep = ndimage.uniform_filter1d(img[H // 2:].mean(axis=0), size=max(3, W // 10))  # (W,)
            valley = int(cols[0] + np.argmin(deep[cols[0]:cols[-1] + 1]))
            # two lobes joined by a thin isthmus over the trachea
            for name, part in (("right lobe (image left)", np.s_[:, :valley]),
                               ("left lobe (image right)", np.s_[:, valley:])):
                side = np.zeros_like(parenchyma)
                side[part] = parenchyma[part]
                if side.any():
                    targets.append((name, *_inside_point(side)))
            iy = np.flatnonzero(gland[:, valley])
            if len(iy):
                targets.append(("isthmus", float(valley), float(iy.mean())))
            top = iy.max() + 1 if len(iy) else rows[0]
            targets.append(("trachea (air arc)", float(valley), float(min(top + 0.04 * H, H - 1))))
            targets.append(("acoustic shadow", float(valley), 0.75 * H))
        elif parenchyma.any():
            targets.append(("thyroid lobe", *_inside_point(parenchyma)))
    comps, n = ndimage.label(vessel)
    for k in range(1, n + 1):
        part = comps == k
        if part.sum() >= 0.0005 * H * W:  # skip slivers cut by the image edge
            targets.append(("carotid / jugular", *_inside_point(part)))
    for nod in sample.get("nodules", []):
        x, y = nod["center"]
        if 0 <= x < W and 0 <= y < H:
            targets.append((f"nodule ({LEVEL_NAMES[nod['level']]})", float(x), float(y)))
    return targets


def show_anatomy(sample: Mapping[str, Any], panel: float = 4.2) -> Figure:
    """One phantom image with its structures labelled at the side (arrows to each structure).

    Labels come from the masks: lobes, isthmus, trachea and its shadow from the gland mask's
    shape (bilateral views), carotid/jugular from the vessel mask (outside the gland, the nodule
    look-alikes), nodules from ``sample["nodules"]``.

    Args:
        sample: ``phantom.sample(..., return_aux=True)``.
        panel: side of the image in inches.

    Returns:
        the figure.
    """
    if "aux" not in sample or "vessel_mask" not in sample["aux"]:
        raise ValueError("show_anatomy needs the vessel mask: call phantom.sample(..., return_aux=True)")
    img, nod, gla = _display(sample)
    H, W = img.shape[:2]
    fig = Figure(figsize=(panel + 3.6, panel + 0.2), layout="constrained")
    ax = fig.subplots()
    _draw(ax, img, nod, gla)
    vessel = np.asarray(sample["aux"]["vessel_mask"], np.float32)
    if vessel.max() > 0:
        ax.contour(vessel, levels=[0.5], colors=VESSEL_COLOR, linewidths=0.9)
    # One label per structure and side (arrows to every instance) on the nearer side of the image;
    # central structures go to the side with fewer labels. Label heights follow the targets.
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for label, x, y in _anatomy_targets(sample):
        where = "center" if abs(x - W / 2) < 0.1 * W else "left" if x < W / 2 else "right"
        groups.setdefault((label, where), []).append((x, y))
    sides: dict[str, list[tuple[str, str]]] = {"left": [], "right": []}
    for key in sorted(groups, key=lambda k: k[1] == "center"):  # lateral ones first
        side = key[1] if key[1] != "center" else "left" if len(sides["left"]) <= len(sides["right"]) else "right"
        sides[side].append(key)
    gap = 0.075 * H
    for side, labels in sides.items():
        labels.sort(key=lambda lb: min(p[1] for p in groups[lb]))
        ys = [min(p[1] for p in groups[lb]) for lb in labels]
        for k in range(1, len(ys)):  # push down, then back up from the bottom edge
            ys[k] = max(ys[k], ys[k - 1] + gap)
        for k in range(len(ys) - 1, -1, -1):
            ys[k] = min(ys[k], (H - 1 if k == len(ys) - 1 else ys[k + 1] - gap))
        x_text, ha = (-0.06 * W, "right") if side == "left" else (1.06 * W, "left")
        for key, y_text in zip(labels, ys):
            for j, (x, y) in enumerate(groups[key]):
                ax.annotate(key[0] if j == 0 else "", xy=(x, y), xytext=(x_text, y_text), ha=ha, va="center",
                            fontsize=8, annotation_clip=False,
                            arrowprops=dict(arrowstyle="->", color="darkorange", lw=0.9, shrinkA=2, shrinkB=1))
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)
    ax.set_title(f"{sample.get('id', '')} ({sample.get('view', '')} view): gland yellow, nodules red, "
                 f"vessels cyan", fontsize=8)
    return fig


def _crop_box(mask: np.ndarray, factor: float) -> tuple[slice, slice]:
    """A square of side ``factor`` x the mask's bounding-box side around it, kept inside the image."""
    H, W = mask.shape
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return slice(0, H), slice(0, W)
    side = int(min(max(factor * max(np.ptp(ys) + 1, np.ptp(xs) + 1), 24), H, W))
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    y0 = int(np.clip(cy - side // 2, 0, H - side))
    x0 = int(np.clip(cx - side // 2, 0, W - side))
    return slice(y0, y0 + side), slice(x0, x0 + side)


def show_gallery(gallery: Mapping[str, Any], crop: float | None = 1.6, contours: bool = False,
                 panel: float = 1.9) -> Figure:
    """Nodules by TI-RADS category: one column per category, one row per feature.

    Args:
        gallery: ``phantom.gallery(feature=...)`` ({category: sample}) for one row, or
            {feature: {category: sample}} for one row per feature.
        crop: zoom on the main nodule, a square of ``crop`` x its bounding box (None: whole image).
        contours: outline the masks (off by default so the margin itself is visible).
        panel: side of one panel in inches.

    Returns:
        the figure; titles give the category and its ACR points, rows are labelled by feature.
    """
    if not gallery:
        raise ValueError("show_gallery: empty gallery")
    first = next(iter(gallery.values()))
    rows = dict(gallery) if isinstance(first, Mapping) and "image" not in first else {"": dict(gallery)}
    ncols = max(len(r) for r in rows.values())
    fig, axes = _axes(len(rows) * ncols, ncols, panel)
    for r, (feature, cats) in enumerate(rows.items()):
        for c, (cat, s) in enumerate(cats.items()):
            ax = axes[r, c]
            img, nod, gla = _display(s)
            box = _crop_box(nod, crop) if crop is not None and nod is not None else np.s_[:, :]
            _draw(ax, img[box], None if nod is None else nod[box], None if gla is None else gla[box], contours)
            points = ""
            if s.get("nodules"):
                main = s["nodules"][0]
                feat = feature or next((f for f, t in phantom.FEATURE_POINTS.items() if main.get(f) == cat), "")
                if feat:
                    points = f" ({main['feature_points'][feat]} pt)"
                points += f" → {LEVEL_NAMES[main['level']]}"
            ax.set_title(f"{cat}{points}", fontsize=7)
        if feature:
            axes[r, 0].text(-0.08, 0.5, feature, transform=axes[r, 0].transAxes, rotation=90, ha="right",
                            va="center", fontsize=9, fontweight="bold")
    return fig


# ----------------------------------------------------------------------------- augmentation


def show_augmentations(dataset: Any, index: int, n: int = 5, seed: int = 0,
                       transforms: Mapping[str, Callable] | None = None, stitch_with: int | None = None,
                       ncols: int | None = None, panel: float = 2.2) -> Figure:
    """One training image under augmentation, masks following every geometric op.

    The first panel is the item without augmentation (``eval_transform``). Then either ``n``
    random draws of ``dataset[index]`` (the dataset's own pipeline, stitching included), each
    seeded inside ``torch.random.fork_rng`` so the caller's RNG state is untouched, or one panel
    per named transform applied to the raw sample. ``stitch_with`` adds the sample stitched side
    by side with another one (:func:`ssmt_lib.data.stitch`).

    Args:
        dataset: a ``SegmentationDataset`` from ``build_dataset`` (``augment=True`` for random draws).
        index: item to show.
        n: number of random draws (ignored when ``transforms`` is given).
        seed: seed of the draws.
        transforms: optional {name: albumentations transform}, each called as
            ``t(image=(H, W, C) uint8, mask=(H, W, 2) uint8)``.
        stitch_with: index of a second item to stitch with, or None.
        ncols: panels per row.
        panel: side of one panel in inches.

    Returns:
        the figure.
    """
    if not 0 <= index < len(dataset):
        raise IndexError(f"show_augmentations: index {index} out of range for a dataset of length {len(dataset)}")
    size, channels = dataset.image_size, dataset.channels
    raw = dataset.load_raw(index)

    def through(pipeline: Callable, r: dict) -> dict:
        """Apply an albumentations pipeline to a raw dict -> displayable dict (image in [0, 1])."""
        h, w = r["image"].shape
        zeros = np.zeros((h, w), np.uint8)
        nod = r["nodule_mask"] if r["nodule_mask"] is not None else zeros
        gla = r["gland_mask"] if r["gland_mask"] is not None else zeros
        out = pipeline(image=np.repeat(r["image"][..., None], channels, axis=-1),  # (H, W, C)
                       mask=np.stack([nod, gla], axis=-1))  # (H, W, 2)
        image = out["image"]
        if image.dtype != np.uint8:  # normalised float output: back to [0, 1]
            image = denormalize(image.transpose(2, 0, 1))  # (H, W[, 3])
        return {"image": image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0),
                "nodule_mask": out["mask"][..., 0] if r["nodule_mask"] is not None else None,
                "gland_mask": out["mask"][..., 1] if r["gland_mask"] is not None else None,
                "size": float(out["mask"][..., 0].mean()), **r.get("extras", {})}  # extras: TI-RADS, malignant

    panels = {"original": through(eval_transform(size, channels), raw)}
    if transforms is not None:
        for k, (name, t) in enumerate(transforms.items()):
            resize = eval_transform(size, channels).transforms[0]  # the dataset's input size first
            pipe = A.Compose([resize, t])
            seed_transform(pipe, seed + k)
            panels[name] = through(pipe, raw)
    else:
        for k in range(n):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + k)
                panels[f"draw {k + 1}"] = dataset[index]
    if stitch_with is not None:
        other = dataset.load_raw(stitch_with)
        joined = dict(stitch(raw, other), extras={})  # two scans: one image-level label no longer applies
        panels["stitched"] = through(eval_transform(size, channels), joined)
    return show_samples(list(panels.values()), headers=list(panels), ncols=ncols, panel=panel)


# ----------------------------------------------------------------------------- statistics


def phantom_frame(samples: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per image: id, patient, view, size, n_nodules, tirads_points, tirads_level, malignant.

    Args:
        samples: a ``phantom.batch(...)`` dict or a list of ``phantom.sample`` dicts.

    Returns:
        a DataFrame (``tirads_level`` 0 = no visible nodule).
    """
    if isinstance(samples, Mapping):  # batch: columns already stacked
        n = len(samples["id"])
        rows = [{k: samples[k][i] for k in ("id", "patient", "view", "size", "tirads_points", "tirads_level",
                                            "malignant", "nodules")} for i in range(n)]
    else:
        rows = list(samples)
    if not rows:
        raise ValueError("phantom_frame: no samples given")
    return pd.DataFrame({
        "id": [str(r["id"]) for r in rows],
        "patient": [str(r["patient"]) for r in rows],
        "view": [str(r["view"]) for r in rows],
        "size": [float(r["size"]) for r in rows],
        "n_nodules": [len(r["nodules"]) for r in rows],
        "tirads_points": [int(r["tirads_points"]) for r in rows],
        "tirads_level": [int(r["tirads_level"]) for r in rows],
        "malignant": [bool(r["malignant"]) for r in rows],
    })


def plot_dataset_stats(frame: pd.DataFrame, reference: Sequence[float] | None = phantom.ACR_MALIGNANCY_RISK,
                       seed: int = 0) -> Figure:
    """Nodule size by TI-RADS level, level counts and malignancy rate per level (seaborn).

    Args:
        frame: one row per image with columns ``size``, ``tirads_level`` (0 = no nodule) and
            ``malignant`` (e.g. :func:`phantom_frame`).
        reference: expected malignancy rate of TR1..TR5, drawn as black markers (default: the
            ACR white paper's rates, from which the phantom draws its labels); None to omit.
        seed: seed of seaborn's bootstrap confidence intervals (reproducible figures).

    Returns:
        the figure (three panels).
    """
    missing = {"size", "tirads_level", "malignant"} - set(frame.columns)
    if missing:
        raise ValueError(f"plot_dataset_stats: frame lacks column(s) {sorted(missing)}")
    if reference is not None and len(reference) != 5:
        raise ValueError(f"plot_dataset_stats: reference needs 5 rates (TR1..TR5), got {len(reference)}")
    df = frame.assign(level=frame["tirads_level"].map(lambda v: LEVEL_NAMES.get(int(v), f"TR{v}")),
                      malignant=frame["malignant"].astype(float))
    with_nodule = df[df["tirads_level"] > 0]
    levels = [LEVEL_NAMES[k] for k in range(1, 6)]
    palette = dict(zip(levels, sns.color_palette("rocket_r", 5)))
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    ax_size, ax_count, ax_rate = fig.subplots(1, 3)
    if len(with_nodule):
        sns.histplot(data=with_nodule, x="size", hue="level", hue_order=levels, palette=palette, log_scale=True,
                     multiple="stack", bins=20, ax=ax_size)
    ax_size.set(xlabel="nodule area fraction (log)", ylabel="images",
                title=f"nodule size by level ({len(with_nodule)} images)")
    sns.countplot(data=df, x="level", order=["none"] + levels, hue="level", palette={"none": "0.6", **palette},
                  legend=False, ax=ax_count)
    ax_count.set(xlabel="TI-RADS level of the image (worst nodule)", ylabel="images",
                 title=f"{len(df)} images, {100 * (df['tirads_level'] == 0).mean():.0f}% without nodule")
    if len(with_nodule):
        sns.barplot(data=with_nodule, x="level", y="malignant", order=levels, hue="level", palette=palette,
                    legend=False, errorbar=("ci", 95), seed=seed, ax=ax_rate)
    if reference is not None:
        ax_rate.scatter(range(5), list(reference), color="black", marker="D", s=22, zorder=3,
                        label="reference (ACR)")
        ax_rate.legend(loc="upper left", fontsize=8)
    ax_rate.set_ylim(bottom=0)
    ax_rate.set(xlabel="TI-RADS level", ylabel="share malignant",
                title="malignancy rate per level (95% CI)")
    return fig


# ----------------------------------------------------------------------------- interactive


def speckle_view(index: int = 0, speckle: bool = True, speckle_size: float = 1.0, gain: float = 1.0,
                 overlays: bool = False, seed: int = 0, profile: str = "default", image_size: int = 224) -> Figure:
    """A phantom image under one scanner setting and its parenchyma grey-level histogram.

    Speckle is multiplicative (image = echo x speckle x transmission x gain), so with speckle on
    the gland's grey levels spread into the skewed, Rayleigh-like histogram of real B-mode and
    their std/mean (the inverse of the speckle SNR) rises; ``speckle_size`` sets the grain
    (correlation length), ``gain`` the brightness, ``overlays`` the scanner marks.

    Args:
        index: phantom sample index.
        speckle: speckle on/off.
        speckle_size: speckle correlation length in pixels (at 224 px).
        gain: overall brightness.
        overlays: black borders, depth ticks and text-like marks.
        seed: data-set seed.
        profile: base scanner profile in ``phantom.PROFILES``.
        image_size: side of the rendered image.

    Returns:
        the figure (image with contours, histogram of gland pixels outside nodules).
    """
    if profile not in phantom.PROFILES:
        raise ValueError(f"speckle_view: unknown profile {profile!r}; choose from {sorted(phantom.PROFILES)}")
    config = dataclasses.replace(phantom.PROFILES[profile], image_size=int(image_size), speckle=bool(speckle),
                                 speckle_size=float(speckle_size), gain=float(gain), overlays=bool(overlays))
    s = phantom.sample(int(index), seed=seed, config=config)
    fig = Figure(figsize=(7.6, 3.6), layout="constrained")
    ax_img, ax_hist = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.1]})
    _draw(ax_img, s["image"], s["nodule_mask"], s["gland_mask"])
    ax_img.set_title(f"speckle={'on' if speckle else 'off'}, size {speckle_size:g}, gain {gain:g}", fontsize=9)
    parenchyma = s["image"][(s["gland_mask"] > 0) & (s["nodule_mask"] == 0)]
    if parenchyma.size:
        ratio = float(parenchyma.std() / max(float(parenchyma.mean()), 1e-6))
        ax_hist.hist(parenchyma, bins=40, range=(0, 1), color="0.35")
        ax_hist.set_title(f"gland grey levels: std/mean = {ratio:.2f}", fontsize=9)
    else:
        ax_hist.set_title("no gland in this view", fontsize=9)
    ax_hist.set(xlabel="grey level", ylabel="pixels", xlim=(0, 1))
    return fig
