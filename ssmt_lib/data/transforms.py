"""Augmentation pipelines for thyroid ultrasound (albumentations) and image stitching.

SSMT-Net (Farooq et al., arXiv 2512.12662, Sec. 3.1) trains at 224x224 with flipping, rotation,
zoom-out and stitching. Here:

- ``train_transform``: resize, brightness/contrast + gamma (gain and TGC differ between scanners),
  horizontal flip (left/right lobes look alike), small rotation and zoom-out (``A.Affine`` with
  scale < 1: the gland shrinks inside a black border, so nodules get smaller), then ImageNet
  normalisation. Intensity ops come before the affine so the black border stays black.
- ``eval_transform``: resize + normalisation only.
- ``stitch``: two scans side by side (or stacked) with their masks, a mosaic-style augmentation that
  yields several, smaller nodules per image. It is albumentations' ``A.Mosaic`` on a 1x2 (or 2x1)
  grid whose cells exactly tile the square output, with ``fit_mode="contain"``: each scan is
  shrunk into its half with its aspect ratio kept and letterboxed with black, so a nodule keeps its
  shape (taller-than-wide is a TI-RADS feature; the paper only says "stitching").
  The output is already square, so the pipeline's resize does not squash it.

Masks go through albumentations' ``mask`` target: every geometric op uses nearest-neighbour
interpolation and fills borders with 0, so masks stay binary and aligned with the image.
Written against albumentations 2.0 (``A.Affine(scale=, rotate=)``, ``A.RandomGamma``); only
arguments that also exist in 1.4 are used.
"""
from __future__ import annotations

import random

import albumentations as A
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# One-channel input: the mean of the ImageNet channel statistics (grey = average of R, G, B).
GREY_MEAN = (0.449,)
GREY_STD = (0.226,)


def normalization(channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std used to normalise images with ``channels`` channels.

    Args:
        channels: 3 (grey replicated to RGB, ImageNet statistics) or 1 (their channel average).

    Returns:
        ``(mean, std)`` tuples of length ``channels``.
    """
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    if channels == 1:
        return GREY_MEAN, GREY_STD
    raise ValueError(f"channels must be 1 or 3, got {channels!r}")


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")


def eval_transform(image_size: int, channels: int = 3) -> A.Compose:
    """Deterministic pipeline: resize to ``image_size`` x ``image_size`` and normalise.

    Args:
        image_size: output side in pixels (aspect ratio is not kept, as in the TRFE-Net loaders).
        channels: channels of the uint8 HxWxC input image (1 or 3).

    Returns:
        An ``A.Compose`` taking ``image`` (H, W, C) uint8 and ``mask`` (H, W, K) uint8; it returns
        a float32 normalised image and a nearest-resized mask.
    """
    _check_size(image_size)
    mean, std = normalization(channels)
    return A.Compose([A.Resize(image_size, image_size), A.Normalize(mean=mean, std=std)])


def train_transform(image_size: int, channels: int = 3, rotate: float = 15.0,
                    zoom_out: tuple[float, float] = (0.7, 1.0), p_affine: float = 0.7,
                    p_flip: float = 0.5, p_intensity: float = 0.5) -> A.Compose:
    """Training pipeline: resize, intensity jitter, flip, rotation + zoom-out, normalise.

    Args:
        image_size: output side in pixels.
        channels: channels of the uint8 HxWxC input image (1 or 3).
        rotate: maximal rotation in degrees (uniform in [-rotate, rotate]).
        zoom_out: range of the affine scale; values < 1 zoom out (black border, smaller nodules).
        p_affine: probability of the rotation/zoom-out affine.
        p_flip: probability of a horizontal flip.
        p_intensity: probability of each of brightness/contrast and gamma jitter.

    Returns:
        An ``A.Compose`` with the same inputs/outputs as :func:`eval_transform`.
    """
    _check_size(image_size)
    lo, hi = zoom_out
    if not 0 < lo <= hi:
        raise ValueError(f"zoom_out must satisfy 0 < low <= high, got {zoom_out!r}")
    mean, std = normalization(channels)
    return A.Compose([
        A.Resize(image_size, image_size),  # geometric ops on the small image: cheaper
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=p_intensity),
        A.RandomGamma(gamma_limit=(80, 120), p=p_intensity),
        A.HorizontalFlip(p=p_flip),
        # defaults: constant border 0 for image and mask, nearest interpolation for the mask
        A.Affine(scale=(lo, hi), rotate=(-rotate, rotate), p=p_affine),
        A.Normalize(mean=mean, std=std),
    ])


def seed_transform(transform: A.Compose, seed: int) -> None:
    """Make the next calls of ``transform`` deterministic from ``seed``.

    Datasets call this with a seed drawn from torch's RNG, so augmentation follows
    ``torch.manual_seed`` and DataLoader worker seeding (and resumes with the torch RNG state).

    Args:
        transform: an albumentations ``Compose``.
        seed: integer seed.
    """
    if hasattr(transform, "set_random_state"):  # albumentations >= 2.0: one shared generator
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    else:  # albumentations 1.x draws from the global generators
        random.seed(seed)
        np.random.seed(seed % 2**32)


def _mosaic(side: int, vertical: bool) -> A.Compose:
    """``A.Mosaic`` placing two items in the two halves of a ``side`` x ``side`` square, aspect kept.

    The grid (1x2, or 2x1 when ``vertical``) of cells of half the side is exactly the output, so
    Mosaic's random crop centre has nothing to choose and the result is deterministic.
    """
    half = (side + 1) // 2
    grid, cell = ((2, 1), (half, side)) if vertical else ((1, 2), (side, half))
    return A.Compose([A.Mosaic(grid_yx=grid, target_size=(side, side), cell_shape=cell, fit_mode="contain",
                               fill=0, fill_mask=0, p=1.0)])


def stitch(a: dict, b: dict, vertical: bool = False, size: int | None = None) -> dict:
    """Stitch two raw samples side by side (or stacked when ``vertical``) with their masks.

    Done by albumentations' ``A.Mosaic`` (see :func:`_mosaic`): ``a`` fills the left (top) half
    and ``b`` the right (bottom) half of a square, each resized with its aspect ratio kept and
    padded with 0 (masks nearest-neighbour, so they stay binary). A mask that is ``None`` in both
    samples stays ``None``.

    Args:
        a: dict with ``image`` (H, W) uint8 and ``nodule_mask`` / ``gland_mask`` (H, W) uint8
            in {0, 1} or ``None``; other keys are copied from ``a``, with ``id``/``patient``
            joined by "+".
        b: same kind of dict.
        vertical: stack top/bottom instead of left/right.
        size: side of the square result; None = the longer side of ``a``.

    Returns:
        A new dict of the same form, image and masks (size, size).
    """
    keys = ("nodule_mask", "gland_mask")
    for key in keys:
        if (a.get(key) is None) != (b.get(key) is None):
            raise ValueError(f"cannot stitch: {key} is present in one sample only "
                             f"({a.get('id')!r}, {b.get('id')!r})")
    side = int(size) if size is not None else max(a["image"].shape[:2])
    present = [k for k in keys if a.get(k) is not None]

    def masks(x: dict) -> np.ndarray:  # (H, W, K), K >= 1 (a zero channel when there is no mask)
        planes = [x[k] for k in present] or [np.zeros(x["image"].shape[:2], np.uint8)]
        return np.stack(planes, axis=-1)

    res = _mosaic(side, vertical)(image=a["image"], mask=masks(a), mosaic_metadata=[{"image": b["image"], "mask": masks(b)}])
    out = dict(a)
    out["image"] = np.ascontiguousarray(res["image"])  # (side, side)
    for k in keys:
        out[k] = np.ascontiguousarray(res["mask"][..., present.index(k)]) if k in present else None
    for key in ("id", "patient"):
        if key in a and key in b:
            out[key] = a[key] if a[key] == b[key] else f"{a[key]}+{b[key]}"
    return out


def denormalize(image: torch.Tensor | np.ndarray, channels_mean: tuple[float, ...] | None = None,
                channels_std: tuple[float, ...] | None = None) -> np.ndarray:
    """Undo the normalisation of one image for display.

    Args:
        image: (C, H, W) tensor or array with C in {1, 3}, as produced by the datasets.
        channels_mean: mean used for normalisation; default from :func:`normalization`.
        channels_std: std used for normalisation; default from :func:`normalization`.

    Returns:
        float32 array in [0, 1]: (H, W) for one channel, (H, W, 3) for three.
    """
    arr = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ValueError(f"denormalize expects one (C, H, W) image with C in (1, 3), got shape {arr.shape}")
    mean, std = normalization(arr.shape[0])
    mean = np.asarray(channels_mean or mean, np.float32)[:, None, None]  # (C, 1, 1)
    std = np.asarray(channels_std or std, np.float32)[:, None, None]  # (C, 1, 1)
    arr = np.clip(arr * std + mean, 0.0, 1.0)
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)  # (H, W) or (H, W, 3)
