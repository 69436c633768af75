"""The phantom's sampling API: ``sample`` one image with its labels, ``batch`` many, ``gallery``.

A sample is deterministic from (seed, index, config): the patient (``index //
views_per_patient``) draws its anatomy from the stream (seed, patient, 0), cached because
consecutive indices are its views; the view draws its placement, noise-window offsets and
overlay glyphs from its own stream (seed, index, 1). Then ``render`` paints the scene and
``ultrasound`` forms the image. Nothing uses numpy's global random state.
"""
from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np

from ssmt_lib.data.phantom.anatomy import View, draw_view, patient_anatomy
from ssmt_lib.data.phantom.config import PhantomConfig
from ssmt_lib.data.phantom.nodules import Nodule, check_overrides
from ssmt_lib.data.phantom.render import render_scene
from ssmt_lib.data.phantom.tirads import FEATURE_POINTS, tirads_level
from ssmt_lib.data.phantom.ultrasound import Canvas, add_scanner_overlays, form_image, noise_bank


def _nodule_record(nodule: Nodule, view: View, area: float) -> dict[str, Any]:
    """The public description of a visible nodule in pixel units of the view."""
    cx, cy = view.to_pixel(nodule.cx, nodule.cy)
    return {"center": (float(cx), float(cy)),
            "axes": (float(nodule.a * view.px_per_mm), float(nodule.b * view.px_per_mm)),
            "angle": float(math.degrees(nodule.angle + view.tilt)), **nodule.features,
            "halo": nodule.halo, "blurred": nodule.blurred, "points": nodule.points,
            "feature_points": dict(nodule.feature_points), "level": nodule.tirads_level,
            "malignant": nodule.malignant, "area": area,
            "diameter_mm": float(2 * math.sqrt(nodule.a * nodule.b))}


def _check_int(name: str, value: Any) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")


def sample(index: int, seed: int = 0, config: PhantomConfig | None = None, *,
           nodule_overrides: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
           return_aux: bool = False) -> dict[str, Any]:
    """One synthetic B-mode image with labels, deterministic from (seed, index, config).

    Args:
        index: sample number (>= 0); patient = index // config.views_per_patient.
        seed: data-set seed.
        config: scanner profile / case mix (default ``PhantomConfig()``).
        nodule_overrides: force nodule features for demos, e.g. ``{"composition": "solid",
            "echogenicity": "very_hypo", "foci": "punctate", "diameter_mm": 15}`` for the main
            nodule, or a list of such dicts (one per nodule, sets the count). Keys:
            ``OVERRIDE_KEYS``.
        return_aux: also return ``aux`` = {"vessel_mask": (H, W) uint8 of carotids/jugulars,
            "view": view kind, "mm_per_px": float}.

    Returns:
        dict with image (H, W) float32 in [0, 1]; nodule_mask, gland_mask (H, W) uint8 in {0, 1}
        (gland = lobes + isthmus + nodules); size = nodule_mask.mean(); nodules (visible ones:
        center (x, y) px, axes (a, b) px, angle deg, composition, echogenicity, shape, margin,
        foci, halo, blurred, points, feature_points, level, malignant, area, diameter_mm);
        tirads_points (max over nodules, 0 if none); tirads_level (1..5, 0 if none); malignant
        (any visible nodule malignant); patient ("P000123"); id ("phantom_s0_000123"); view (kind).
    """
    cfg = config if config is not None else PhantomConfig()
    if not isinstance(cfg, PhantomConfig):
        raise TypeError(f"config must be a PhantomConfig, got {type(cfg).__name__}")
    _check_int("index", index)
    _check_int("seed", seed)
    index, size = int(index), cfg.image_size
    overrides = check_overrides(nodule_overrides)
    patient = patient_anatomy(seed, index // cfg.views_per_patient, cfg.max_nodules,
                              float(cfg.empty_fraction), tuple(cfg.nodule_mm),
                              tuple(cfg.malignancy_risk), json.dumps(overrides, sort_keys=True))
    view_rng = np.random.default_rng(np.random.SeedSequence([seed, index, 1]))  # the view's stream
    view = draw_view(view_rng, patient, index % cfg.views_per_patient, cfg)
    bank = noise_bank(size, cfg.speckle, float(cfg.speckle_size), float(cfg.speckle_contrast))
    canvas = Canvas(size, bank, view_rng.integers(0, size, 8), view.width / size)
    drawn = render_scene(canvas, patient, view)
    image = form_image(canvas, view, cfg)
    nodule, gland = canvas.nodule.view(np.uint8), canvas.gland.view(np.uint8)
    vessel = canvas.vessel.view(np.uint8)
    if cfg.overlays:
        add_scanner_overlays(image, [nodule, gland, vessel], view, view_rng)

    visible = []
    for n, (box, hard) in drawn:
        count = int((hard & canvas.nodule[box]).sum())  # pixels not covered by a later nodule
        if count:
            visible.append(_nodule_record(n, view, count / (size * size)))
    points = max((d["points"] for d in visible), default=0)
    out = {
        "image": image, "nodule_mask": nodule, "gland_mask": gland, "size": float(nodule.mean()),
        "nodules": visible, "tirads_points": int(points),
        "tirads_level": tirads_level(points) if visible else 0,
        "malignant": any(d["malignant"] for d in visible),
        "patient": f"P{index // cfg.views_per_patient:06d}", "id": f"phantom_s{seed}_{index:06d}",
        "view": view.kind,
    }
    if return_aux:
        out["aux"] = {"vessel_mask": vessel, "view": view.kind, "mm_per_px": view.width / size}
    return out


def batch(indices: Sequence[int] | int, seed: int = 0,
          config: PhantomConfig | None = None) -> dict[str, Any]:
    """Many samples stacked.

    Args:
        indices: sample indices, or an int n meaning ``range(n)``.
        seed: data-set seed.
        config: scanner profile.

    Returns:
        image (N, H, W) float32, nodule_mask / gland_mask (N, H, W) uint8, size (N,) float32,
        tirads_points / tirads_level (N,) int64, malignant (N,) bool, patient / id / view (lists
        of str), nodules (list of lists of dicts).
    """
    if isinstance(indices, (int, np.integer)):
        if indices < 1:
            raise ValueError(f"batch: indices as an int must be >= 1, got {indices}")
        indices = range(int(indices))
    items = [sample(int(i), seed, config) for i in indices]
    if not items:
        raise ValueError("batch: indices is empty")
    return {
        "image": np.stack([s["image"] for s in items]),  # (N, H, W)
        "nodule_mask": np.stack([s["nodule_mask"] for s in items]),  # (N, H, W)
        "gland_mask": np.stack([s["gland_mask"] for s in items]),  # (N, H, W)
        "size": np.array([s["size"] for s in items], np.float32),
        "tirads_points": np.array([s["tirads_points"] for s in items], np.int64),
        "tirads_level": np.array([s["tirads_level"] for s in items], np.int64),
        "malignant": np.array([s["malignant"] for s in items], bool),
        "patient": [s["patient"] for s in items], "id": [s["id"] for s in items],
        "view": [s["view"] for s in items], "nodules": [s["nodules"] for s in items],
    }


def gallery(seed: int = 0, config: PhantomConfig | None = None, feature: str = "composition",
            index: int = 0, **fixed: Any) -> dict[str, dict[str, Any]]:
    """One sample per category of a TI-RADS feature (same patient), for tours and figures.

    Args:
        seed, config: as in :func:`sample`.
        feature: "composition", "echogenicity", "shape", "margin" or "foci".
        index: sample index (patient and view) to re-render for every category.
        **fixed: other overrides held constant (e.g. ``diameter_mm=18``); by default the other
            features are solid, hypoechoic, smooth, wider-than-tall, no foci.

    Returns:
        {category: sample dict}.
    """
    if feature not in FEATURE_POINTS:
        raise ValueError(f"gallery: feature must be one of {list(FEATURE_POINTS)}, "
                         f"got {feature!r}")
    # A visible baseline (solid, hypoechoic, smooth, no foci) unless the caller fixes it.
    base = {"composition": "solid", "echogenicity": "hypo", "margin": "smooth", "foci": "none",
            "shape": "wider_than_tall"}
    base.update(fixed)
    return {category: sample(index, seed, config, nodule_overrides={**base, feature: category})
            for category in FEATURE_POINTS[feature]}
