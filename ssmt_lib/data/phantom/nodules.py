"""Thyroid nodules of the phantom: their ACR TI-RADS features, size, look and label.

A nodule is drawn in two steps. First its five scored features (composition, echogenicity, shape,
margin, echogenic foci; see ``tirads``) from a plausible joint mix: cysts are anechoic, spongiform
nodules iso-echoic, solid nodules span TR3..TR5, so the level distribution resembles a clinic's
rather than a uniform grid of categories. Then what the renderer needs to show them: axes from
the diameter and the shape (taller-than-wide flips the axes), an echo level from the
echogenicity, a margin roughness from the margin, focus positions from the foci, and the
benign/malignant label drawn from the level's ACR malignancy rate. Halo and blurred boundaries
are drawn and reported but, as in ACR TI-RADS, score no points.

``nodule_overrides`` (checked by ``check_overrides``) force features for tours and figures.
Every draw takes a fixed number of random numbers whatever the features, so forcing a feature
changes that nodule only, not the anatomy drawn after it. Placement in the gland is in
``anatomy``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ssmt_lib.data.phantom.tirads import FEATURE_POINTS, FOCI_POINTS, MARGIN_POINTS, SHAPE_POINTS
from ssmt_lib.data.phantom.tirads import tirads_level, tirads_points
from ssmt_lib.data.phantom.ultrasound import ECHO_FLUID

# Keys a caller may set in ``nodule_overrides`` besides the five scored features.
OVERRIDE_KEYS = tuple(FEATURE_POINTS) + ("halo", "blurred", "diameter_mm", "malignant")


@dataclass
class Nodule:
    """One nodule in world coordinates (mm) with its features and rendering parameters."""

    side: int  # -1 image left (patient right) lobe, +1 image right lobe
    cx: float  # centre, mm lateral from the midline
    cy: float  # centre, mm depth below the skin
    a: float  # horizontal semi-axis (mm, before rotation)
    b: float  # vertical semi-axis (mm)
    angle: float  # rotation (rad)
    features: dict[str, str]  # composition, echogenicity, shape, margin, foci
    halo: bool  # thin hypoechoic rim
    blurred: bool  # soft boundary
    echo_level: float  # echo level of the solid component
    heterogeneity: float  # texture strength inside the nodule
    margin_roughness: float  # margin perturbation amplitude (fraction of the radius per unit noise)
    solid_direction: tuple[float, float]  # mixed nodules: direction of the solid (mural) component
    solid_threshold: float  # mixed nodules: threshold on the projection -> solid share
    focus_points: np.ndarray  # (k, 3) foci: (u, v) in the nodule's unit disk + size / radius
    rim_arc: tuple[float, float]  # peripheral calcification: direction (rad), half-width (rad)
    malignant: bool
    points: int = 0  # ACR TI-RADS points
    feature_points: dict[str, int] = field(default_factory=dict)
    tirads_level: int = 1  # ACR level 1..5

    @property
    def outer_radius_factor(self) -> float:
        """Radius factor (x the axes) that covers the margin perturbation."""
        return 1.0 + 2.5 * self.margin_roughness

    def rescore(self) -> None:
        """Recompute points and level after a feature changed."""
        self.points, self.feature_points = tirads_points(self.features)
        self.tirads_level = tirads_level(self.points)


def choose(rng: np.random.Generator, options: Sequence[str], p: Sequence[float]) -> str:
    """One option with (unnormalised) probabilities p.

    A cumulative search over one uniform draw: far cheaper than ``Generator.choice``.

    Args:
        rng: random stream.
        options: the options.
        p: their weights.
    """
    x, acc, last = rng.random() * sum(p), 0.0, len(options) - 1
    for i, w in enumerate(p):
        acc += w
        if x < acc:
            return options[i]
    return options[last]


def draw_features(rng: np.random.Generator,
                  composition: str | None = None) -> tuple[dict[str, str], bool, bool]:
    """A plausible joint feature mix (cysts anechoic, spongiform iso, solid nodules TR3..TR5).

    Args:
        rng: random stream (the composition is always drawn, to keep the stream aligned).
        composition: fixes the composition; the other features follow it.

    Returns:
        (features, halo, blurred).
    """
    drawn = choose(rng, ("cystic", "spongiform", "mixed", "solid"), (0.12, 0.10, 0.28, 0.5))
    composition = composition or drawn
    margins, foci = list(MARGIN_POINTS), list(FOCI_POINTS)
    echo_choices = ("hyper_iso", "hypo", "very_hypo")
    if composition == "cystic":
        f = {"echogenicity": "anechoic", "shape": "wider_than_tall",
             "margin": choose(rng, margins, (0.85, 0.15, 0, 0)),
             "foci": choose(rng, foci, (0.6, 0.4, 0, 0, 0))}
    elif composition == "spongiform":
        f = {"echogenicity": "hyper_iso", "shape": "wider_than_tall",
             "margin": choose(rng, margins, (0.8, 0.2, 0, 0)),
             "foci": choose(rng, foci, (0.75, 0.25, 0, 0, 0))}
    elif composition == "mixed":
        f = {"echogenicity": choose(rng, echo_choices, (0.6, 0.32, 0.08)),
             "shape": choose(rng, list(SHAPE_POINTS), (0.9, 0.1)),
             "margin": choose(rng, margins, (0.55, 0.25, 0.16, 0.04)),
             "foci": choose(rng, foci, (0.5, 0.2, 0.13, 0.09, 0.08))}
    else:
        f = {"echogenicity": choose(rng, echo_choices, (0.35, 0.45, 0.2)),
             "shape": choose(rng, list(SHAPE_POINTS), (0.8, 0.2)),
             "margin": choose(rng, margins, (0.45, 0.2, 0.27, 0.08)),
             "foci": choose(rng, foci, (0.5, 0.05, 0.17, 0.1, 0.18))}
    f["composition"] = composition
    halo_rate = 0.3 if f["echogenicity"] == "hyper_iso" and composition != "spongiform" else 0.08
    halo = bool(rng.random() < halo_rate)
    blurred = bool(rng.random() < 0.15)
    return f, halo, blurred


def check_overrides(overrides: Any) -> list[dict[str, Any]] | None:
    """Validate ``nodule_overrides``: a dict for the main nodule or a list, one dict per nodule.

    Args:
        overrides: None, a dict or a list/tuple of 1..3 dicts with keys in ``OVERRIDE_KEYS``.

    Returns:
        None or the list of dicts.
    """
    if overrides is None:
        return None
    items = [overrides] if isinstance(overrides, dict) else overrides
    if not isinstance(items, (list, tuple)) or not all(isinstance(o, dict) for o in items):
        raise TypeError("nodule_overrides must be a dict or a list of dicts, "
                        f"got {type(overrides).__name__}")
    if not 1 <= len(items) <= 3:
        raise ValueError(f"nodule_overrides: give 1..3 nodules, got {len(items)}")
    for o in items:
        for k, v in o.items():
            if k not in OVERRIDE_KEYS:
                raise ValueError(f"nodule_overrides: unknown key {k!r}; "
                                 f"allowed {list(OVERRIDE_KEYS)}")
            if k in FEATURE_POINTS and v not in FEATURE_POINTS[k]:
                raise ValueError(f"nodule_overrides: {k}={v!r}; "
                                 f"choose one of {sorted(FEATURE_POINTS[k])}")
            if k == "diameter_mm" and not (isinstance(v, (int, float)) and 2.0 <= v <= 45.0):
                raise ValueError("nodule_overrides: diameter_mm must be a number in [2, 45], "
                                 f"got {v!r}")
            if k in ("halo", "blurred", "malignant") and not isinstance(v, bool):
                raise ValueError(f"nodule_overrides: {k} must be a bool, got {v!r}")
    return list(items)


def draw_nodule(rng: np.random.Generator, diameter: float, side: int, gland_level: float,
                risk: Sequence[float], override: dict[str, Any]) -> Nodule:
    """Features, size and rendering parameters of one nodule (placed later, by ``anatomy``).

    Args:
        rng: the patient's stream.
        diameter: drawn diameter (mm); ``override["diameter_mm"]`` wins.
        side: lobe (-1 or +1).
        gland_level: the parenchyma's echo level (iso-echoic nodules follow it).
        risk: P(malignant) for TR1..TR5.
        override: forced features (may be empty).
    """
    feats, halo, blurred = draw_features(rng, override.get("composition"))
    ratio = rng.uniform(1.15, 1.7)  # axis ratio
    u = rng.random(16)  # fixed number of draws keeps the stream aligned whatever the features
    feats.update({k: override[k] for k in FEATURE_POINTS if k in override})
    halo, blurred = override.get("halo", halo), override.get("blurred", blurred)
    diameter = float(override.get("diameter_mm", diameter))
    if feats["margin"] == "ill_defined":
        blurred = True
    if feats["shape"] == "taller_than_wide":
        ratio = 1.2 + 0.4 * (ratio - 1.15) / 0.55
        a, b = diameter / 2 / math.sqrt(ratio), diameter / 2 * math.sqrt(ratio)
    else:
        a, b = diameter / 2 * math.sqrt(ratio), diameter / 2 / math.sqrt(ratio)
    echo = feats["echogenicity"]
    echo_level = {"anechoic": ECHO_FLUID,
                  "hyper_iso": min(0.92, gland_level * (0.95 + 0.35 * u[0])),
                  "hypo": 0.25 + 0.1 * u[0], "very_hypo": 0.07 + 0.06 * u[0]}[echo]
    roughness = {"smooth": 0.012, "ill_defined": 0.03,
                 "lobulated_irregular": 0.06 + 0.04 * u[1],
                 "extrathyroidal": 0.06 + 0.03 * u[1]}[feats["margin"]]
    # Echogenic foci in the nodule's unit disk: (u, v, size as a fraction of the radius).
    kind = feats["foci"]
    count = {"none": 0, "comet_tail": 1 + int(3 * u[2]), "macro": 1 + int(2.99 * u[2]),
             "peripheral": 0, "punctate": 5 + int(11 * u[2])}[kind]
    spread = {"comet_tail": 0.7, "macro": 0.5, "punctate": 0.8}.get(kind, 0.0)
    pool = rng.random((3, 16))  # always 16 draws, so the anatomy drawn later does not depend on k
    angles, radii = 2 * np.pi * pool[0, :count], spread * np.sqrt(pool[1, :count])
    pts = np.stack([radii * np.cos(angles), radii * np.sin(angles),
                    0.12 + 0.12 * pool[2, :count]], 1)  # (k, 3)
    if kind == "comet_tail":
        pts[:, 1] = -np.abs(pts[:, 1])  # comet tails sit on the anterior wall / in colloid
    total, per_feature = tirads_points(feats)
    level = tirads_level(total)
    malignant = bool(override.get("malignant", u[3] < risk[level - 1]))
    theta = 2 * np.pi * u[4]
    return Nodule(side=side, cx=0.0, cy=0.0, a=a, b=b, angle=(u[5] - 0.5) * 0.3, features=feats,
                  halo=halo, blurred=blurred, echo_level=echo_level,
                  heterogeneity=0.15 + 0.25 * u[6], margin_roughness=roughness,
                  solid_direction=(math.cos(theta), math.sin(theta)),
                  solid_threshold=0.6 - 1.0 * u[7], focus_points=pts.astype(np.float32),
                  rim_arc=(2 * np.pi * u[8], 0.6 + 1.0 * u[9]), malignant=malignant,
                  points=total, feature_points=per_feature, tirads_level=level)
