"""Built-in synthetic thyroid ultrasound ("phantom"): procedural B-mode images with full annotations.

Every notebook and test runs on this generator, so nothing needs a download. An image is built from
anatomy in a transverse neck scan (patient's right on the image left, skin at the top):

    skin, subcutaneous fat, strap muscles (horizontal bands) and sternocleidomastoid (lateral)
    thyroid: one or two lobes (ellipses carved by the trachea into crescents) joined by the isthmus
    trachea: bright air-mucosa arc, reverberation (A-)lines and an acoustic shadow below it
    carotid artery and jugular vein lateral to each lobe (anechoic, bright walls, posterior
    enhancement, edge shadows) and the oesophagus: nodule look-alikes OUTSIDE the gland
    longus colli and the vertebral body at depth
    0..3 nodules INSIDE the gland, with ACR TI-RADS features

TI-RADS (Tessler et al., "ACR Thyroid Imaging, Reporting and Data System (TI-RADS): White Paper of
the ACR TI-RADS Committee", J Am Coll Radiol 14:587-595, 2017). Points per feature:

    composition   cystic 0, spongiform 0, mixed cystic-solid 1, solid 2
    echogenicity  anechoic 0, hyper-/isoechoic 1, hypoechoic 2, very hypoechoic 3
    shape         wider-than-tall 0, taller-than-wide 3
    margin        smooth 0, ill-defined 0, lobulated/irregular 2, extra-thyroidal extension 3
    echogenic foci  none 0, comet-tail 0, macrocalcification 1, peripheral (rim) 2, punctate 3

A spongiform nodule scores 0 in total ("do not add further points for other categories"). The sum
gives the level (0-1 points TR1, 2 TR2, 3 TR3, 4-6 TR4, >= 7 TR5) and each nodule's benign/malignant
label is drawn from the level's observed malignancy rate in the white paper (TR1 0.3%, TR2 1.5%,
TR3 4.8%, TR4 9.1%, TR5 35%; ``PhantomConfig.malignancy_risk``). Halo and blurred boundaries are
rendered and reported but, as in ACR TI-RADS, score no points.

Physics-flavoured rendering (one pass per step over the image, everything else in bounding boxes):
echo level map x multiplicative speckle (magnitude of a complex Gaussian field filtered with an
anisotropic point-spread function: Rayleigh statistics, laterally elongated grains) x transmission
``exp(-cumsum(alpha) along depth)``, where fluid has a lower and calcification, air and bone a much
higher attenuation than tissue, so posterior enhancement and acoustic shadows come out of the same
sum. The noise fields are a cached bank (per image size and scanner profile) from which each sample
cuts a window at a random offset: no filtering per sample, > 200 images/s at 224 px on one core.

Each synthetic patient has one anatomy; ``views_per_patient`` consecutive indices are different
views of it (bilateral, one lobe, zoomed on the main nodule; pan, zoom and a few degrees of tilt,
fine texture redrawn, like a slightly different scan plane), so splits must be patient-wise.

Scanner profiles (``PROFILES``): "default"; "scanner_b" (coarser speckle, darker, stronger
attenuation, deeper field, gamma, overlays) for domain-shift experiments; "clean" (no speckle) for
figures. For a tour, ``sample(..., nodule_overrides={...})`` forces nodule features and
``gallery(feature=...)`` renders one image per category of a feature on the same patient.
``export`` writes TN3K / TG3K / DDTI folder layouts so the file loaders read the phantom too, and
``export_ddti_tirads`` DDTI's original XML + TI-RADS release (flat or in folders).

    >>> from ssmt_lib.data import phantom
    >>> s = phantom.sample(0, seed=0)
    >>> s["image"].shape, s["nodule_mask"].dtype, s["tirads_level"] in range(6)
    ((224, 224), dtype('uint8'), True)
    >>> s = phantom.sample(5, nodule_overrides={"composition": "solid", "foci": "macro"})
    >>> s["nodules"][0]["foci"]
    'macro'
"""
from __future__ import annotations

import csv
import functools
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

# ---------------------------------------------------------------------------- ACR TI-RADS tables

COMPOSITION_POINTS = {"cystic": 0, "spongiform": 0, "mixed": 1, "solid": 2}
ECHOGENICITY_POINTS = {"anechoic": 0, "hyper_iso": 1, "hypo": 2, "very_hypo": 3}
SHAPE_POINTS = {"wider_than_tall": 0, "taller_than_wide": 3}
MARGIN_POINTS = {"smooth": 0, "ill_defined": 0, "lobulated_irregular": 2, "extrathyroidal": 3}
FOCI_POINTS = {"none": 0, "comet_tail": 0, "macro": 1, "peripheral": 2, "punctate": 3}
FEATURE_POINTS: dict[str, dict[str, int]] = {
    "composition": COMPOSITION_POINTS, "echogenicity": ECHOGENICITY_POINTS, "shape": SHAPE_POINTS,
    "margin": MARGIN_POINTS, "foci": FOCI_POINTS,
}
ACR_MALIGNANCY_RISK = (0.003, 0.015, 0.048, 0.091, 0.35)  # TR1..TR5, ACR white paper (2017)
VIEW_KINDS = ("bilateral", "lobe", "nodule")
# Keys a caller may set in ``nodule_overrides`` besides the five scored features.
OVERRIDE_KEYS = tuple(FEATURE_POINTS) + ("halo", "blurred", "diameter_mm", "malignant")


def tirads_points(features: dict[str, str]) -> tuple[int, dict[str, int]]:
    """ACR TI-RADS points of one nodule.

    Args:
        features: {"composition", "echogenicity", "shape", "margin", "foci"} -> category name.

    Returns:
        (total points, points per feature). A spongiform nodule totals 0 (ACR rule).
    """
    per = {}
    for name, table in FEATURE_POINTS.items():
        value = features[name]
        if value not in table:
            raise ValueError(f"unknown {name} {value!r}; choose one of {sorted(table)}")
        per[name] = table[value]
    total = 0 if features["composition"] == "spongiform" else sum(per.values())
    return total, per


def tirads_level(points: int) -> int:
    """ACR level from points: 0-1 TR1, 2 TR2, 3 TR3, 4-6 TR4, >= 7 TR5.

    Args:
        points: total TI-RADS points (>= 0).

    Returns:
        1..5.
    """
    if points < 0:
        raise ValueError(f"TI-RADS points must be >= 0, got {points}")
    return 1 if points <= 1 else 2 if points == 2 else 3 if points == 3 else 4 if points <= 6 else 5


# ---------------------------------------------------------------------------- configuration

@dataclass
class PhantomConfig:
    """A scanner profile plus the case mix. Change fields with ``dataclasses.replace``."""

    image_size: int = 224  # output side (square images)
    speckle: bool = True  # multiplicative correlated speckle on/off
    speckle_size: float = 1.0  # speckle correlation length in pixels (scaled by image_size/224)
    speckle_contrast: float = 0.6  # strength of speckle after log compression (0 = none)
    gain: float = 1.0  # overall brightness
    attenuation: float = 0.6  # uncompensated depth attenuation: bottom row = exp(-attenuation)
    focus_depth: float = 0.45  # transmit focus as a fraction of the image depth (mild brightening)
    gamma: float = 1.0  # display gamma applied last (1 = linear, skipped)
    overlays: bool = False  # scanner overlays: black borders, depth ticks, text-like marks
    fov_scale: float = 1.0  # field-of-view multiplier (> 1: deeper and wider, anatomy smaller)
    max_nodules: int = 3  # 0..max_nodules nodules per patient (inside the gland)
    empty_fraction: float = 0.15  # share of patients (hence images) with no nodule
    nodule_mm: tuple[float, float] = (3.0, 36.0)  # main nodule diameter range, log-uniform, mm
    views_per_patient: int = 4  # consecutive indices share a patient (anatomy) with different views
    view_mix: tuple[float, float, float] = (0.25, 0.3, 0.45)  # P(bilateral, lobe, nodule-zoom) view
    tilt_deg: float = 5.0  # max probe tilt of a view (degrees)
    malignancy_risk: tuple[float, ...] = ACR_MALIGNANCY_RISK  # P(malignant) for TR1..TR5

    def __post_init__(self) -> None:
        checks = {
            "image_size": self.image_size >= 32 and isinstance(self.image_size, int),
            "speckle_size": self.speckle_size > 0,
            "speckle_contrast": 0 <= self.speckle_contrast <= 1.5,
            "gain": self.gain > 0,
            "attenuation": self.attenuation >= 0,
            "focus_depth": 0 <= self.focus_depth <= 1,
            "gamma": self.gamma > 0,
            "fov_scale": 0.5 <= self.fov_scale <= 2.0,
            "max_nodules": isinstance(self.max_nodules, int) and 0 <= self.max_nodules <= 3,
            "empty_fraction": 0 <= self.empty_fraction <= 1,
            "nodule_mm": len(self.nodule_mm) == 2 and 1.0 <= self.nodule_mm[0] <= self.nodule_mm[1] <= 45.0,
            "views_per_patient": isinstance(self.views_per_patient, int) and self.views_per_patient >= 1,
            "view_mix": len(self.view_mix) == 3 and min(self.view_mix) >= 0 and sum(self.view_mix) > 0,
            "tilt_deg": 0 <= self.tilt_deg <= 15,
            "malignancy_risk": len(self.malignancy_risk) == 5 and all(0 <= p <= 1 for p in self.malignancy_risk),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid PhantomConfig field(s) {bad}: "
                             + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad))


PROFILES: dict[str, PhantomConfig] = {
    "default": PhantomConfig(),
    # Another scanner for domain-shift experiments: coarser speckle, darker with stronger
    # attenuation, deeper field of view, gamma, and the overlays real exports carry.
    "scanner_b": PhantomConfig(speckle_size=1.8, speckle_contrast=0.95, gain=0.85, attenuation=1.1,
                               focus_depth=0.6, gamma=1.25, overlays=True, fov_scale=1.15),
    # Noise-free anatomy for teaching figures.
    "clean": PhantomConfig(speckle=False, attenuation=0.3),
}

# ---------------------------------------------------------------------------- tissue constants

# Echo levels (display units before speckle; the gland is drawn per patient around 0.58).
_SKIN, _FAT, _MUSCLE, _DEEP, _FLUID, _CALC = 0.55, 0.30, 0.20, 0.27, 0.02, 0.97
# Attenuation deviations from soft tissue, nepers per mm (TGC compensates plain tissue).
_A_FLUID, _A_BLOOD, _A_CALC, _A_AIR, _A_BONE, _A_EDGE = -0.035, -0.02, 1.6, 3.0, 0.8, 0.15
_BANK_SEED = 20240531  # the noise banks are fixed; samples differ by where they cut them


@functools.lru_cache(maxsize=None)
def _ar(n: int) -> np.ndarray:
    """Pixel-centre coordinates 0..n-1 (float32), shared by every sample."""
    return np.arange(n, dtype=np.float32)


def _normal_field(rng: np.random.Generator, n: int, sigma: tuple[float, float]) -> np.ndarray:
    """Periodic Gaussian-correlated noise, zero mean, unit std, clipped to +-2.5."""
    f = ndimage.gaussian_filter(rng.standard_normal((n, n)).astype(np.float32), sigma, mode="wrap")
    f = (f - f.mean()) / f.std()
    return np.clip(f, -2.5, 2.5).astype(np.float32)


@dataclass
class _Bank:
    base: np.ndarray  # speckle x mild tissue heterogeneity, mean ~1, (2S, 2S)
    tex: np.ndarray  # fine granular texture (gland, nodules), unit std
    coarse: np.ndarray  # coarse texture (lobulation, heterogeneity), unit std
    streak: np.ndarray  # laterally elongated texture (muscle striations, fat septa), unit std


@functools.lru_cache(maxsize=8)
def _bank(size: int, speckle: bool, speckle_size: float, contrast: float) -> _Bank:
    """Noise fields twice the image side; a sample cuts (S, S) windows at random offsets."""
    rng = np.random.default_rng(_BANK_SEED)
    n, s = 2 * size, size / 224.0
    coarse = _normal_field(rng, n, (5.0 * s, 5.0 * s))
    if speckle:
        # Speckle = |PSF * complex scatterers|: Rayleigh amplitude; the PSF is wider laterally.
        sig = (0.55 * s * speckle_size, 1.25 * s * speckle_size)
        re = ndimage.gaussian_filter(rng.standard_normal((n, n)).astype(np.float32), sig, mode="wrap")
        im = ndimage.gaussian_filter(rng.standard_normal((n, n)).astype(np.float32), sig, mode="wrap")
        amp = np.hypot(re, im)
        spk = np.clip(1.0 + contrast * (amp / amp.mean() - 1.0), 0.03, None)
    else:
        spk = np.ones((n, n), np.float32)
    return _Bank(
        base=(spk * (1.0 + 0.12 * coarse)).astype(np.float32),
        tex=_normal_field(rng, n, (1.3 * s, 1.6 * s)),
        coarse=coarse,
        streak=_normal_field(rng, n, (0.6 * s, 6.0 * s)),
    )


@functools.lru_cache(maxsize=32)
def _depth_profile(size: int, attenuation: float, focus: float, gain: float) -> np.ndarray:
    """Per-row gain: overall gain, residual attenuation, mild transmit-focus brightening, (S, 1)."""
    z = _ar(size) / size
    prof = gain * np.exp(-attenuation * z) * (1.0 + 0.15 * np.exp(-(((z - focus) / 0.15) ** 2)))
    return prof.astype(np.float32)[:, None]  # (S, 1)


@functools.lru_cache(maxsize=8)
def _gamma_lut(gamma: float) -> np.ndarray:
    """x ** gamma on 4096 levels of [0, 1]."""
    return (np.linspace(0.0, 1.0, 4096, dtype=np.float64) ** gamma).astype(np.float32)


# ---------------------------------------------------------------------------- anatomy (world, mm)

@dataclass
class _Nodule:
    side: int  # -1 image left (patient right) lobe, +1 image right lobe
    cx: float  # centre, mm lateral from the midline
    cy: float  # centre, mm depth below the skin
    a: float  # horizontal semi-axis (mm, before rotation)
    b: float  # vertical semi-axis (mm)
    angle: float  # rotation (rad)
    features: dict[str, str]  # composition, echogenicity, shape, margin, foci
    halo: bool  # thin hypoechoic rim
    blurred: bool  # soft boundary
    level: float  # echo level of the solid component
    hetero: float  # texture strength inside the nodule
    lob_amp: float  # margin perturbation amplitude (fraction of the radius per unit noise)
    solid_dir: tuple[float, float]  # mixed nodules: direction of the solid (mural) component
    solid_thr: float  # mixed nodules: threshold on the projection -> solid share
    foci_pts: np.ndarray  # (k, 3) focus positions (u, v) in the unit disk of the nodule + size
    arc: tuple[float, float]  # peripheral calcification: direction (rad), half-width (rad)
    malignant: bool
    points: int = 0
    feature_points: dict[str, int] = field(default_factory=dict)
    tirads: int = 1

    @property
    def ext(self) -> float:
        """Outer radius factor covering the margin perturbation."""
        return 1.0 + 2.5 * self.lob_amp


@dataclass
class _Patient:
    skin: float  # skin thickness (mm)
    fat: float  # depth of the fat / muscle fascia
    strap: float  # depth of the strap muscles' deep surface
    curve: float  # layer curvature (mm at 25 mm lateral)
    ripple: tuple[float, float]  # layer waviness amplitude (mm) and phase
    gland_level: float  # parenchyma echo level
    thyroiditis: float  # coarse hypoechoic heterogeneity (0 = normal gland)
    trachea: tuple[float, float]  # (depth of centre, radius)
    cart: float  # cartilage thickness (mm); isthmus starts beyond it
    isthmus: tuple[float, float]  # (thickness, half-angle rad)
    lobes: dict[int, tuple[float, float, float, float, float]]  # side -> (cx, cy, a, b, angle)
    vessels: list[tuple[str, float, float, float, float]]  # (kind, cx, cy, a, b)
    scm: list[tuple[float, float, float, float, float]]  # sternocleidomastoid ellipses
    longus: list[tuple[float, float, float, float, float]]  # longus colli ellipses
    vertebra: tuple[float, float, float]  # (cy, a, b) of the vertebral body
    esophagus: tuple[float, float, float]  # (cx, cy, radius)
    nodules: list[_Nodule]


def _choice(rng: np.random.Generator, options: Sequence[str], p: Sequence[float]) -> str:
    """One option with probabilities p (a cumulative search: far cheaper than Generator.choice)."""
    x, acc, total = rng.random() * sum(p), 0.0, len(options) - 1
    for i, w in enumerate(p):
        acc += w
        if x < acc:
            return options[i]
    return options[total]


def _draw_features(rng: np.random.Generator, comp: str | None = None) -> tuple[dict[str, str], bool, bool]:
    """Plausible joint feature mix (cysts anechoic, spongiform iso, solid nodules span TR3..TR5);
    ``comp`` fixes the composition and the other features follow it."""
    drawn = _choice(rng, ("cystic", "spongiform", "mixed", "solid"), (0.12, 0.10, 0.28, 0.5))
    comp = comp or drawn
    margins, foci = list(MARGIN_POINTS), list(FOCI_POINTS)
    if comp == "cystic":
        f = {"echogenicity": "anechoic", "shape": "wider_than_tall",
             "margin": _choice(rng, margins, (0.85, 0.15, 0, 0)), "foci": _choice(rng, foci, (0.6, 0.4, 0, 0, 0))}
    elif comp == "spongiform":
        f = {"echogenicity": "hyper_iso", "shape": "wider_than_tall",
             "margin": _choice(rng, margins, (0.8, 0.2, 0, 0)), "foci": _choice(rng, foci, (0.75, 0.25, 0, 0, 0))}
    elif comp == "mixed":
        f = {"echogenicity": _choice(rng, ("hyper_iso", "hypo", "very_hypo"), (0.6, 0.32, 0.08)),
             "shape": _choice(rng, list(SHAPE_POINTS), (0.9, 0.1)),
             "margin": _choice(rng, margins, (0.55, 0.25, 0.16, 0.04)),
             "foci": _choice(rng, foci, (0.5, 0.2, 0.13, 0.09, 0.08))}
    else:
        f = {"echogenicity": _choice(rng, ("hyper_iso", "hypo", "very_hypo"), (0.35, 0.45, 0.2)),
             "shape": _choice(rng, list(SHAPE_POINTS), (0.8, 0.2)),
             "margin": _choice(rng, margins, (0.45, 0.2, 0.27, 0.08)),
             "foci": _choice(rng, foci, (0.5, 0.05, 0.17, 0.1, 0.18))}
    f["composition"] = comp
    halo = bool(rng.random() < (0.3 if f["echogenicity"] == "hyper_iso" and comp != "spongiform" else 0.08))
    blurred = bool(rng.random() < 0.15)
    return f, halo, blurred


def _check_overrides(overrides: Any) -> list[dict[str, Any]] | None:
    """Validate ``nodule_overrides`` (a dict for the main nodule or a list, one dict per nodule)."""
    if overrides is None:
        return None
    items = [overrides] if isinstance(overrides, dict) else overrides
    if not isinstance(items, (list, tuple)) or not all(isinstance(o, dict) for o in items):
        raise TypeError(f"nodule_overrides must be a dict or a list of dicts, got {type(overrides).__name__}")
    if not 1 <= len(items) <= 3:
        raise ValueError(f"nodule_overrides: give 1..3 nodules, got {len(items)}")
    for o in items:
        for k, v in o.items():
            if k not in OVERRIDE_KEYS:
                raise ValueError(f"nodule_overrides: unknown key {k!r}; allowed {list(OVERRIDE_KEYS)}")
            if k in FEATURE_POINTS and v not in FEATURE_POINTS[k]:
                raise ValueError(f"nodule_overrides: {k}={v!r}; choose one of {sorted(FEATURE_POINTS[k])}")
            if k == "diameter_mm" and not (isinstance(v, (int, float)) and 2.0 <= v <= 45.0):
                raise ValueError(f"nodule_overrides: diameter_mm must be a number in [2, 45], got {v!r}")
            if k in ("halo", "blurred", "malignant") and not isinstance(v, bool):
                raise ValueError(f"nodule_overrides: {k} must be a bool, got {v!r}")
    return list(items)


def _make_nodule(rng: np.random.Generator, diameter: float, side: int, gland_level: float,
                 risk: Sequence[float], over: dict[str, Any]) -> _Nodule:
    """Features, size and rendering parameters of one nodule (placed later)."""
    feats, halo, blurred = _draw_features(rng, over.get("composition"))
    ratio = rng.uniform(1.15, 1.7)
    u = rng.random(16)  # fixed number of draws keeps the stream aligned whatever the features
    feats.update({k: over[k] for k in FEATURE_POINTS if k in over})
    halo, blurred = over.get("halo", halo), over.get("blurred", blurred)
    diameter = float(over.get("diameter_mm", diameter))
    if feats["margin"] == "ill_defined":
        blurred = True
    if feats["shape"] == "taller_than_wide":
        ratio = 1.2 + 0.4 * (ratio - 1.15) / 0.55
        a, b = diameter / 2 / math.sqrt(ratio), diameter / 2 * math.sqrt(ratio)
    else:
        a, b = diameter / 2 * math.sqrt(ratio), diameter / 2 / math.sqrt(ratio)
    echo = feats["echogenicity"]
    level = {"anechoic": _FLUID, "hyper_iso": min(0.92, gland_level * (0.95 + 0.35 * u[0])),
             "hypo": 0.25 + 0.1 * u[0], "very_hypo": 0.07 + 0.06 * u[0]}[echo]
    lob_amp = {"smooth": 0.012, "ill_defined": 0.03, "lobulated_irregular": 0.06 + 0.04 * u[1],
               "extrathyroidal": 0.06 + 0.03 * u[1]}[feats["margin"]]
    # Echogenic foci in the nodule's unit disk: (u, v, size as a fraction of the radius).
    kind = feats["foci"]
    k = {"none": 0, "comet_tail": 1 + int(3 * u[2]), "macro": 1 + int(2.99 * u[2]),
         "peripheral": 0, "punctate": 5 + int(11 * u[2])}[kind]
    rad = {"comet_tail": 0.7, "macro": 0.5, "punctate": 0.8}.get(kind, 0.0)
    pool = rng.random((3, 16))  # always 16 draws, so the anatomy drawn later does not depend on k
    ang, rr = 2 * np.pi * pool[0, :k], rad * np.sqrt(pool[1, :k])
    pts = np.stack([rr * np.cos(ang), rr * np.sin(ang), 0.12 + 0.12 * pool[2, :k]], 1)  # (k, 3)
    if kind == "comet_tail":
        pts[:, 1] = -np.abs(pts[:, 1])  # comet tails sit on the anterior wall / in colloid
    total, per = tirads_points(feats)
    lvl = tirads_level(total)
    malignant = bool(over.get("malignant", u[3] < risk[lvl - 1]))
    theta = 2 * np.pi * u[4]
    return _Nodule(side=side, cx=0.0, cy=0.0, a=a, b=b, angle=(u[5] - 0.5) * 0.3, features=feats, halo=halo,
                   blurred=blurred, level=level, hetero=0.15 + 0.25 * u[6], lob_amp=lob_amp,
                   solid_dir=(math.cos(theta), math.sin(theta)), solid_thr=0.6 - 1.0 * u[7],
                   foci_pts=pts.astype(np.float32), arc=(2 * np.pi * u[8], 0.6 + 1.0 * u[9]),
                   malignant=malignant, points=total, feature_points=per, tirads=lvl)


def _lobe_lateral(lobe: tuple[float, float, float, float, float]) -> float:
    """|x| of the lobe's lateral tangent (vessels are placed beyond it)."""
    cx, _, a, b, ang = lobe
    return abs(cx) + math.sqrt((a * math.cos(ang)) ** 2 + (b * math.sin(ang)) ** 2)


_RING = np.linspace(0, 2 * np.pi, 24, endpoint=False)
_RING_CS = (np.cos(_RING), np.sin(_RING))


def _fits(nod: _Nodule, cx: np.ndarray, cy: np.ndarray, p: _Patient, lobe: Sequence[float],
          others: list[_Nodule]) -> np.ndarray:
    """Which candidate centres (cx, cy), shape (K,), put the nodule inside its lobe (ETE: may
    bulge anteriorly) and clear of the trachea, oesophagus and other nodules. Tested on 24
    boundary points per candidate, all candidates at once."""
    ca, sa = math.cos(nod.angle), math.sin(nod.angle)
    e = nod.ext * 1.04 + 0.04
    ox = e * (nod.a * _RING_CS[0] * ca - nod.b * _RING_CS[1] * sa)  # (24,) outline offsets
    oy = e * (nod.a * _RING_CS[0] * sa + nod.b * _RING_CS[1] * ca)
    px, py = cx[:, None] + ox, cy[:, None] + oy  # (K, 24)
    lx, ly, la, lb, lang = lobe
    cl, sl = math.cos(lang), math.sin(lang)

    def in_lobe(x, y, shrink):
        u = ((x - lx) * cl + (y - ly) * sl) / (la - shrink)
        v = (-(x - lx) * sl + (y - ly) * cl) / (lb - shrink)
        return u * u + v * v < 1.0

    ete = nod.features["margin"] == "extrathyroidal"
    inside = in_lobe(px, py, min(0.8, 0.15 * nod.b) if ete else 0.8)
    if ete:
        # The anterior part breaks through the capsule (and must), the rest stays in the lobe.
        inside |= py < cy[:, None]
        ok = inside.all(1) & (py.min(1) > p.skin + 1.0) & (np.abs(px).max(1) < _lobe_lateral(lobe) - 0.5)
        ok &= ~in_lobe(cx, cy - nod.b, 0.0)
    else:
        ok = inside.all(1)
    ty, tr = p.trachea
    ok &= (np.hypot(px, py - ty) >= tr + p.cart + 0.8).all(1)
    ex, ey, er = p.esophagus
    ok &= (np.hypot(px - ex, py - ey) >= er + 1.5).all(1)
    for o in others:
        ok &= np.hypot(cx - o.cx, cy - o.cy) >= 1.05 * (max(nod.a, nod.b) * nod.ext + max(o.a, o.b) * o.ext)
    return ok


def _make_patient(rng: np.random.Generator, cfg: PhantomConfig, overrides: list[dict] | None) -> _Patient:
    """Draw one patient's anatomy (mm). Lobes grow to hold big nodules (goitre)."""
    u = rng.random(40)
    skin = 1.0 + 0.8 * u[0]
    fat = skin + 1.5 + 3.0 * u[1]
    strap = fat + 2.5 + 3.0 * u[2]
    gland_level = 0.5 + 0.16 * u[3]
    thyroiditis = 0.6 * u[5] if u[4] < 0.15 else 0.0
    tr = 8.0 + 2.5 * u[6]
    cart = 1.0 + 0.6 * u[7]
    ist = 2.0 + 3.0 * u[8]
    ty = strap + 0.4 + ist + cart + tr
    missing = (-1 if u[10] < 0.5 else 1) if u[9] < 0.04 else 0  # hemithyroidectomy
    sides = [s for s in (-1, 1) if s != missing]

    # Nodules: count, size (main log-uniform in cfg.nodule_mm, others smaller), lobe.
    if overrides is not None:
        count = len(overrides)
    elif cfg.max_nodules == 0 or u[11] < cfg.empty_fraction:
        count = 0
    else:
        w = np.array([0.62, 0.26, 0.12][: cfg.max_nodules])
        count = 1 + int(np.searchsorted(np.cumsum(w / w.sum()), u[12]))
    lo, hi = cfg.nodule_mm
    diam = [math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u[13] ** 0.7)]  # skewed to large
    for i in range(1, 3):
        diam.append(math.exp(math.log(2.5) + (math.log(max(2.6, min(diam[0], 14.0))) - math.log(2.5)) * u[13 + i]))
    main_side = sides[int(u[16] * len(sides))]
    nodules = []
    for i in range(count):
        side = main_side if i == 0 or u[16 + i] < 0.4 or len(sides) == 1 else -main_side
        over = overrides[i] if overrides is not None else {}
        nodules.append(_make_nodule(rng, diam[i], side, gland_level, cfg.malignancy_risk, over))

    # Lobes: normal size, enlarged to hold their nodules (margin 2.5 mm plus lobulation).
    lobes = {}
    for s in sides:
        la, lb = 8.5 + 3.0 * rng.random(), 8.0 + 3.0 * rng.random()
        for n in nodules:
            if n.side == s:
                top = 0.35 * n.b if n.features["margin"] == "extrathyroidal" else 0.0
                la = max(la, (n.a * n.ext + 2.8) / 0.9)
                lb = max(lb, n.b * n.ext + 2.8 - top)
        ang = s * rng.uniform(-0.05, 0.2)
        lobes[s] = [s * (tr + cart + 0.6 * la), max(strap + 0.4 + lb, ty - 0.35 * tr), la, lb, ang]

    ex_ang = rng.uniform(0.5, 0.9)
    er = 4.5 + 2.0 * rng.random()
    esophagus = (math.sin(ex_ang) * (tr + er + 1.0), ty + math.cos(ex_ang) * (tr + er + 1.0), er)
    p = _Patient(skin=skin, fat=fat, strap=strap, curve=1.5 * rng.random(),
                 ripple=(0.6 * rng.random(), 6.3 * rng.random()), gland_level=gland_level, thyroiditis=thyroiditis, trachea=(ty, tr), cart=cart,
                 isthmus=(ist, rng.uniform(0.75, 1.0)), lobes={}, vessels=[], scm=[], longus=[],
                 vertebra=(0.0, 0.0, 0.0), esophagus=esophagus, nodules=[])

    # Place nodules by rejection, 32 candidates at a time. The first nodule of a lobe may grow
    # the lobe (goitre) and, if still too big, shrink; an ETE nodule that cannot straddle the
    # capsule becomes lobulated. A later nodule never moves the lobe (that would move the nodules
    # already in it): it tries the other lobe and is left out if it fits nowhere.
    placed: list[_Nodule] = []
    for n in nodules:
        first = not any(o.side == n.side for o in placed)
        for attempt in range(24):
            if attempt == 4 and n.features["margin"] == "extrathyroidal":
                n.features["margin"] = "lobulated_irregular"
                n.points, n.feature_points = tirads_points(n.features)
                n.tirads = tirads_level(n.points)
            if not first and attempt == 8:
                other = -n.side
                if other not in lobes or any(o.side == other for o in placed):
                    break
                n.side, first = other, True
            lobe = lobes[n.side]
            lx, ly, la, lb, _ = lobe
            k = rng.random((2, 32))
            cx = lx + n.side * (k[0] - 0.4) * max(la - n.a * n.ext, 0.0)
            if n.features["margin"] == "extrathyroidal":  # straddle the anterior capsule
                cx = lx + n.side * (k[0] - 0.5) * 0.8 * max(la - n.a * n.ext, 0.0)
                top = ly - lb * np.sqrt(np.clip(1 - ((cx - lx) / la) ** 2, 0, 1))
                cy = top + n.b * (0.6 + 0.25 * k[1])
            else:
                cy = ly + (k[1] - 0.5) * 1.2 * max(lb - n.b * n.ext, 0.0)
            ok = _fits(n, cx, cy, p, lobe, placed)
            if ok.any():
                i = int(np.argmax(ok))
                n.cx, n.cy = float(cx[i]), float(cy[i])
                placed.append(n)
                break
            if first and attempt < 16:  # grow the (still empty) lobe
                lobe[2] *= 1.06
                lobe[3] *= 1.06
                lobe[0] = n.side * (tr + cart + 0.6 * lobe[2])
                lobe[1] = max(strap + 0.4 + lobe[3], ty - 0.35 * tr)
            elif first:
                n.a, n.b = 0.85 * n.a, 0.85 * n.b
        else:
            if first:  # cannot happen with the geometry above; fail loudly rather than cheat
                raise RuntimeError(f"phantom: could not place a nodule ({n.features}, {n.a:.1f}x{n.b:.1f} mm)")
    p.lobes = {s: tuple(v) for s, v in lobes.items()}
    p.nodules = placed

    # Vessels, muscles and bone relative to the lobes (vessels strictly beyond the lateral tangent).
    for s in (-1, 1):
        lobe = p.lobes.get(s) or (s * (tr + cart + 6.0), strap + 0.4 + 8.0, 8.0, 8.0, 0.0)
        lat = _lobe_lateral(lobe)
        rc = 2.8 + 1.4 * rng.random()
        gap = 0.8 + 2.0 * rng.random()
        # (outer radius incl. the wall: carotid +1 mm, jugular +0.5 mm, see _render_round)
        ccx, ccy = s * (lat + rc + 1.0 + gap), lobe[1] + lobe[3] * rng.uniform(-0.1, 0.4)
        ja, jb = 3.0 + 3.0 * rng.random(), 1.2 + 3.0 * rng.random()
        jcx = s * max(abs(ccx) + rc * rng.uniform(0.3, 1.0) + ja * 0.5, lat + gap + ja + 0.5)
        jcy = ccy - rc * rng.uniform(0.2, 1.0)
        p.vessels += [("carotid", ccx, ccy, rc, rc), ("jugular", jcx, jcy, ja, jb)]
        p.scm.append((abs(ccx) * s + s * rng.uniform(0, 4), strap - 1.0 + 2.0 * rng.random(), 11.0 + 5.0 * rng.random(),
                      2.5 + 1.5 * rng.random(), s * rng.uniform(0.05, 0.25)))
        p.longus.append((s * (tr * 0.8 + 4.0), ty + tr + 3.0 + 2.0 * rng.random(), 6.0 + 2.0 * rng.random(),
                         3.0 + rng.random(), 0.0))
    vy = ty + tr + 6.0 + 3.0 * rng.random()
    p.vertebra = (vy + 10.0, 14.0 + 4.0 * rng.random(), 10.0)
    return p


# ---------------------------------------------------------------------------- views

@dataclass
class _View:
    kind: str  # "bilateral", "lobe" or "nodule"
    x0: float  # world x (mm) of the image's left edge
    y0: float  # world depth (mm) of the top row (slightly above the skin)
    width: float  # field of view (mm); square, so also the depth
    tilt: float  # rotation (rad) about the image centre
    ppm: float  # pixels per mm

    def pt(self, x: float, y: float) -> tuple[float, float]:
        """World (mm) -> pixel (column, row)."""
        xc, yc = self.x0 + self.width / 2, self.y0 + self.width / 2
        c, s = math.cos(self.tilt), math.sin(self.tilt)
        xr = xc + (x - xc) * c - (y - yc) * s
        yr = yc + (x - xc) * s + (y - yc) * c
        return (xr - self.x0) * self.ppm, (yr - self.y0) * self.ppm


def _make_view(rng: np.random.Generator, p: _Patient, k: int, cfg: PhantomConfig) -> _View:
    """View k of a patient: view 0 is a lobe view; others follow cfg.view_mix."""
    mix = np.array(cfg.view_mix, float)
    if not p.nodules:
        mix[2] = 0.0
    u = rng.random(8)
    kind = "lobe" if k == 0 and mix[1] > 0 else VIEW_KINDS[int(np.searchsorted(np.cumsum(mix / mix.sum()), u[0]))]
    main = p.nodules[0] if p.nodules else None
    side = main.side if main else (list(p.lobes) or [1])[int(u[1] * max(len(p.lobes), 1))]
    lobe = p.lobes.get(side)
    if kind == "bilateral":
        half = max(abs(v[1]) + v[3] for v in p.vessels) + 2.0
        width, cx = 2 * half * (0.95 + 0.15 * u[2]), (u[3] - 0.5) * 6.0
    elif kind == "lobe" and lobe is not None:
        rc = max(v[3] for v in p.vessels)
        width = (2 * lobe[2] + 2 * rc + 10.0) * (1.1 + 0.35 * u[2])
        width = max(width, lobe[1] + lobe[3] + 4.0)
        cx = lobe[0] + side * (0.1 + 0.15 * u[3]) * width
    elif kind == "nodule" and main is not None:
        ext = 2 * max(main.a, main.b) * main.ext
        width = max(ext * (0.9 + 1.2 * u[2] ** 2), main.cy + 0.85 * main.b * main.ext + 2.5 * u[4])
        cx = main.cx + (u[3] - 0.5) * 0.2 * width
    else:  # a lobe view of a patient without that lobe: fall back to bilateral
        kind, width, cx = "bilateral", 60.0, 0.0
    width *= cfg.fov_scale * (0.95 + 0.1 * u[5])
    tilt = math.radians(cfg.tilt_deg) * (2 * u[6] - 1)
    return _View(kind=kind, x0=cx - width / 2, y0=-0.3, width=width, tilt=tilt, ppm=cfg.image_size / width)


# ---------------------------------------------------------------------------- rasterisation

def _box(cx: float, cy: float, hw: float, hh: float, size: int) -> tuple[slice, slice] | None:
    """Clipped (rows, cols) slices around a centre, or None if off-image."""
    x0, x1 = max(int(cx - hw), 0), min(int(cx + hw) + 2, size)
    y0, y1 = max(int(cy - hh), 0), min(int(cy + hh) + 2, size)
    if x0 >= x1 or y0 >= y1:
        return None
    return slice(y0, y1), slice(x0, x1)


def _ellipse(cx: float, cy: float, a: float, b: float, ang: float, size: int, pad: float = 2.0):
    """Normalised radius of a rotated ellipse over its bounding box (pixel units).

    Returns:
        (box, r, u, v): box = (rows, cols) slices; r = sqrt(u^2 + v^2), 1 on the outline; u, v =
        coordinates in the ellipse frame divided by the semi-axes; or None if off-image.
    """
    c, s = math.cos(ang), math.sin(ang)
    hw = math.sqrt((a * c) ** 2 + (b * s) ** 2) + pad
    hh = math.sqrt((a * s) ** 2 + (b * c) ** 2) + pad
    box = _box(cx, cy, hw, hh, size)
    if box is None:
        return None
    ar = _ar(size)
    dx = (ar[box[1]] - cx)[None, :]  # (1, w)
    dy = (ar[box[0]] - cy)[:, None]  # (h, 1)
    u = dx * (c / a) + dy * (s / a)  # (h, w)
    v = dy * (c / b) - dx * (s / b)  # (h, w)
    return box, np.sqrt(u * u + v * v), u, v


def _ramp(z: np.ndarray, width: float) -> np.ndarray:
    """Soft step 0 -> 1 around z = 0 over ``width`` (cheaper than a sigmoid)."""
    return np.clip(z * (1.0 / width) + 0.5, 0.0, 1.0)


class _Canvas:
    """Per-sample render state: echo map E, attenuation map A (nepers per pixel), label masks,
    noise windows and the additive artefacts drawn after attenuation."""

    def __init__(self, size: int, bank: _Bank, offsets: np.ndarray, mm_per_px: float):
        self.size, self.mmpp = size, mm_per_px
        self.E = np.empty((size, size), np.float32)
        self.A = np.zeros((size, size), np.float32)
        self.gland = np.zeros((size, size), bool)
        self.nodule = np.zeros((size, size), bool)
        self.vessel = np.zeros((size, size), bool)
        o = [int(x) for x in offsets]
        self.fields = {name: getattr(bank, name)[o[2 * i]:o[2 * i] + size, o[2 * i + 1]:o[2 * i + 1] + size]
                       for i, name in enumerate(("base", "tex", "coarse", "streak"))}
        self.after: list[tuple] = []  # additive artefacts (after attenuation)
        self.a_rows, self.a_cols = size, (size, 0)  # first row / column span where A != 0

    def f(self, name: str, box: tuple[slice, slice]) -> np.ndarray:
        """Window of a noise field over ``box``."""
        return self.fields[name][box]

    def att(self, box: tuple[slice, slice], alpha: np.ndarray | float) -> None:
        """Add attenuation over ``box`` and grow the region that needs the depth integral."""
        self.A[box] += alpha
        rows, cols = box
        self.a_rows = min(self.a_rows, rows.start)
        self.a_cols = (min(self.a_cols[0], cols.start), max(self.a_cols[1], cols.stop))


def _render_layers(cv: _Canvas, p: _Patient, view: _View) -> None:
    """Skin, fat, strap muscles (with fascia lines and striations) over deep tissue."""
    S, E = cv.size, cv.E
    cols = _ar(S)
    xw = view.x0 + cols / view.ppm  # (S,) world x of each column
    ramp = p.ripple[0] * np.sin(xw * 0.25 + p.ripple[1])
    curve = p.curve * (xw / 25.0) ** 2
    slope = (cols - S / 2) * view.tilt  # small-angle tilt of horizontal layers
    b = [((d + curve * k + ramp * k - view.y0) * view.ppm + slope)[None, :]  # (1, S) boundary rows
         for d, k in ((p.skin, 0.2), (p.fat, 0.6), (p.strap, 1.0))]
    ymax = min(S, int(max(float(x.max()) for x in b)) + 4)
    E[:] = _DEEP
    if ymax <= 0:
        return
    rows = _ar(S)[:ymax, None]  # (ymax, 1)
    w = max(0.8, 0.6 * view.ppm)
    top = (_DEEP + (_MUSCLE - _DEEP) * _ramp(b[2] - rows, w) + (_FAT - _MUSCLE) * _ramp(b[1] - rows, w)
           + (_SKIN - _FAT) * _ramp(b[0] - rows, w))  # (ymax, S)
    fascia = np.clip(1.0 - np.abs(rows - b[1]) / w, 0, None) + np.clip(1.0 - np.abs(rows - b[2]) / w, 0, None)
    box = (slice(0, ymax), slice(0, S))
    E[:ymax] = top * (1.0 + 0.3 * cv.f("streak", box)) + 0.3 * fascia
    E[: max(1, int(0.3 * view.ppm))] = 0.9  # the skin entry echo


def _paint(cv: _Canvas, box: tuple[slice, slice], m: np.ndarray, level: np.ndarray | float) -> None:
    """Blend ``level`` into the echo map with soft mask ``m`` (both over ``box``)."""
    e = cv.E[box]
    e += (level - e) * m


def _render_ellipse_tissue(cv: _Canvas, view: _View, ell5: tuple[float, float, float, float, float],
                           level: float, tex: str, amount: float) -> None:
    """A textured soft tissue ellipse (cx, cy, a, b, angle in mm/rad): muscles."""
    cx, cy = view.pt(ell5[0], ell5[1])
    res = _ellipse(cx, cy, ell5[2] * view.ppm, ell5[3] * view.ppm, ell5[4] + view.tilt, cv.size)
    if res is None:
        return
    box, r, _, _ = res
    rpx = math.sqrt(ell5[2] * ell5[3]) * view.ppm
    _paint(cv, box, _ramp((1.0 - r) * rpx, 1.5), level * (1.0 + amount * cv.f(tex, box)))


def _render_gland(cv: _Canvas, p: _Patient, view: _View) -> None:
    """Lobes with their capsule. The trachea and oesophagus renderers carve their discs out of
    the lobes afterwards (crescent shape) and draw the isthmus."""
    S, ppm = cv.size, view.ppm
    w = max(0.7, 0.35 * ppm)
    for lobe in p.lobes.values():
        cx, cy = view.pt(lobe[0], lobe[1])
        a, b = lobe[2] * ppm, lobe[3] * ppm
        res = _ellipse(cx, cy, a, b, lobe[4] + view.tilt, S)
        if res is None:
            continue
        box, r, _, _ = res
        rl = math.sqrt(a * b)
        cv.gland[box] |= r < 1.0
        level = p.gland_level * (1.0 + 0.2 * cv.f("tex", box))
        if p.thyroiditis:
            level = level * (1.0 - p.thyroiditis * np.clip(cv.f("coarse", box) - 0.3, 0, None))
        _paint(cv, box, _ramp((1.0 - r) * rl, w), level)
        cap = 1.0 - np.abs(r - 1.0) * (rl / max(1.0, 0.4 * ppm))  # thin bright capsule line
        np.maximum(cv.E[box], 0.72 * cap, out=cv.E[box])


def _render_trachea(cv: _Canvas, p: _Patient, view: _View) -> None:
    """Isthmus (anterior ring sector), cartilage (hypoechoic C), bright air-mucosa interface,
    air shadow; queues the reverberations. Carves the trachea + cartilage disc out of the lobes."""
    S, ppm = cv.size, view.ppm
    ty, tr = p.trachea
    xc, yc = view.pt(0.0, ty)
    R, rc = tr * ppm, (tr + p.cart) * ppm
    ro = rc + p.isthmus[0] * ppm
    box = _box(xc, yc, ro + 2, ro + 2, S)
    if box is None:
        return
    ar = _ar(S)
    dx, dy = (ar[box[1]] - xc)[None, :], (ar[box[0]] - yc)[:, None]
    d = np.sqrt(dx * dx + dy * dy)  # (h, w)
    w = max(0.8, 0.3 * ppm)
    e = cv.E[box]
    if p.lobes:
        sector = -dy - math.cos(p.isthmus[1]) * d  # > 0 inside the anterior sector
        m = _ramp(d - rc, w) * _ramp(ro - d, w) * _ramp(sector, 2.0 * w)
        cv.gland[box] |= m >= 0.5
        _paint(cv, box, m, p.gland_level * (1.0 + 0.2 * cv.f("tex", box)))
    disc = d < rc
    cv.gland[box] &= ~disc
    e[disc] = np.where(dy < 0.35 * d, 0.12, _DEEP)[disc]  # cartilage in front, soft tissue behind
    air = d < R - 0.5 * w
    e[air] = 0.05
    line = (1.0 - np.abs(d - R) * (1.0 / w)) * (dy < 0)
    np.maximum(e, line, out=e)
    cv.att(box, (_A_AIR * view.width / S) * air)
    cv.after.append(("reverb", xc, yc, R))


def _render_round(cv: _Canvas, view: _View, kind: str, cx_mm: float, cy_mm: float, a_mm: float, b_mm: float) -> None:
    """Carotid / jugular: anechoic lumen, bright wall, posterior enhancement, edge shadows."""
    S, ppm, mmpp = cv.size, view.ppm, view.width / cv.size
    cx, cy = view.pt(cx_mm, cy_mm)
    wall = (1.0 if kind == "carotid" else 0.5) * ppm
    res = _ellipse(cx, cy, a_mm * ppm + wall, b_mm * ppm + wall, view.tilt, S)
    if res is None:
        return
    box, r, _, _ = res
    inner = math.sqrt(a_mm * b_mm) * ppm / (math.sqrt(a_mm * b_mm) * ppm + wall)  # lumen radius in r units
    lumen = r < inner
    cv.vessel[box] |= r < 1.0
    m = _ramp((1.0 - r) * (a_mm * ppm + wall), 1.0)
    level = np.where(lumen, _FLUID, 0.85 if kind == "carotid" else 0.5)
    _paint(cv, box, m, level)
    cv.att(box, (_A_BLOOD * mmpp) * lumen)
    # Refraction at the carotid's curved lateral walls: thin shadows straight down from the edges.
    for sx in ((-1, 1) if kind == "carotid" else ()):
        col, row = int(round(cx + sx * a_mm * ppm)), int(round(cy))
        if 0 <= col < S and 0 <= row < S:
            cv.att((slice(row, row + 1), slice(max(col - 1, 0), col + 1)), _A_EDGE)


def _render_esophagus(cv: _Canvas, p: _Patient, view: _View) -> None:
    """Target sign: hypoechoic muscular wall around echogenic mucosa; carved out of the gland."""
    ex, ey, er = p.esophagus
    cx, cy = view.pt(ex, ey)
    res = _ellipse(cx, cy, er * view.ppm, er * view.ppm * 0.85, view.tilt, cv.size)
    if res is None:
        return
    box, r, _, _ = res
    cv.gland[box] &= r >= 1.0
    level = np.where(r < 0.5, 0.55 * (1.0 + 0.5 * cv.f("tex", box)), 0.14)
    _paint(cv, box, _ramp((1.0 - r) * er * view.ppm, 1.0), level)


def _render_vertebra(cv: _Canvas, p: _Patient, view: _View) -> None:
    """Anterior surface of the vertebral body: bright arc with a bone shadow below."""
    vy, va, vb = p.vertebra
    cx, cy = view.pt(0.0, vy)
    res = _ellipse(cx, cy, va * view.ppm, vb * view.ppm, view.tilt, cv.size)
    if res is None:
        return
    box, r, _, v = res
    rim = np.clip(1.0 - np.abs(r - 1.0) * vb * view.ppm / 1.5, 0, None) * (v < 0)
    e = cv.E[box]
    np.maximum(e, 0.9 * rim, out=e)
    cv.att(box, (_A_BONE * view.width / cv.size) * ((r < 0.97) & (r > 0.8) & (v < 0)))  # anterior cortex


def _render_nodule(cv: _Canvas, n: _Nodule, view: _View) -> np.ndarray | None:
    """One nodule: composition, echogenicity, margin, halo, foci and their shadows.

    Returns:
        (box, hard mask over the box), or None when the nodule is off-image.
    """
    S, ppm, mmpp = cv.size, view.ppm, view.width / cv.size
    cx, cy = view.pt(n.cx, n.cy)
    a, b, ang = n.a * ppm, n.b * ppm, n.angle + view.tilt
    rpx = math.sqrt(a * b)
    res = _ellipse(cx, cy, a, b, ang, S, pad=(n.ext - 1.0) * max(a, b) + 3.0)
    if res is None:
        return None
    box, r, u, v = res
    noise = cv.f("tex" if rpx < 12 else "coarse", box)
    re = r - n.lob_amp * noise  # perturbed radius: lobulated / irregular margins
    hard = re < 1.0
    if not hard.any():
        return None
    edge = (2.0 + 1.5 * n.lob_amp * 10) * (S / 224.0) if n.blurred else 0.7
    m = _ramp((1.0 - re) * rpx, edge)
    comp = n.features["composition"]
    solid = n.level * (1.0 + n.hetero * cv.f("tex", box))
    if comp == "cystic":
        fluid = np.ones_like(re, dtype=bool)
    elif comp == "mixed":
        fluid = (u * n.solid_dir[0] + v * n.solid_dir[1] + 0.35 * cv.f("coarse", box)) < n.solid_thr
    elif comp == "spongiform":
        fluid = (cv.f("tex", box) > -0.1) & (re < 0.9)  # many small cystic spaces (> 50%)
    else:
        fluid = np.zeros_like(re, dtype=bool)
    level = np.where(fluid, _FLUID + (0.06 if comp == "spongiform" else 0.0), solid)
    if n.halo:
        level = np.where(re > 1.0 - max(1.2, 0.7 * ppm) / rpx, level * 0.25, level)
    _paint(cv, box, m, level)
    cv.att(box, (_A_FLUID * mmpp) * (fluid & hard))

    # Echogenic foci (positions in the unit disk of the nodule, same for every view).
    kind = n.features["foci"]
    ca, sa = math.cos(ang), math.sin(ang)
    if kind == "peripheral":
        d0, d1 = math.cos(n.arc[0]), math.sin(n.arc[0])
        cosang = (u * d0 + v * d1) / np.maximum(r, 1e-3)
        rim = (re > 1.0 - max(1.5, 0.8 * ppm) / rpx) & hard & (cosang > math.cos(n.arc[1]))
        np.maximum(cv.E[box], 0.95 * rim, out=cv.E[box])
        cv.att(box, (_A_CALC * 0.7 * mmpp) * rim)
    elif kind != "none" and len(n.foci_pts):
        px = cx + a * n.foci_pts[:, 0] * ca - b * n.foci_pts[:, 1] * sa
        py = cy + a * n.foci_pts[:, 0] * sa + b * n.foci_pts[:, 1] * ca
        for x, y, fr in zip(px, py, n.foci_pts[:, 2]):
            if kind == "macro":
                rb = max(1.3, fr * rpx)
                res2 = _ellipse(x, y, rb, rb * 0.8, 0.0, S, pad=1.0)
                if res2 is None:
                    continue
                b2, r2, _, _ = res2
                blob = _ramp((1.0 - r2) * rb, 1.0)
                np.maximum(cv.E[b2], _CALC * blob, out=cv.E[b2])
                cv.att(b2, (_A_CALC * mmpp) * blob)
            else:  # punctate foci / comet-tail heads: bright specks added after attenuation
                col, row = int(round(x)), int(round(y))
                if 0 <= row < S and 0 <= col < S:
                    cv.after.append(("dot", col, row, 0.0))
                    if kind == "comet_tail":
                        cv.after.append(("comet", col, row, max(3.0, 0.35 * rpx)))
    return box, hard


def _add_artifacts(cv: _Canvas, img: np.ndarray, view: _View) -> None:
    """Artefacts added after attenuation: tracheal reverberations, echogenic specks, comet tails."""
    S = cv.size
    for item in cv.after:
        if item[0] == "reverb":
            _, xc, yc, R = item
            c0, c1 = max(int(xc - 0.85 * R), 0), min(int(xc + 0.85 * R) + 1, S)
            if c0 >= c1:
                continue
            dx = _ar(S)[c0:c1] - xc
            yi = yc - np.sqrt(np.maximum(R * R - dx * dx, 0.0))  # (w,) interface row per column
            top = -view.y0 * view.ppm  # skin row
            d0 = np.maximum(yi - top, 2.0)  # (w,) probe-to-interface distance
            r0, r1 = max(int(1.5 * d0.min() + top), 0), min(int(4.5 * d0.max() + top) + 1, S)
            if r0 >= r1:
                continue
            rows = _ar(S)[r0:r1, None]  # (h, 1)
            phase = (rows - top) * (1.0 / d0)[None, :]  # (h, w) multiples of the distance
            ring = np.clip(1.0 - np.abs(phase - np.round(phase)) * (d0[None, :] / max(1.0, 0.02 * S)), 0, None)
            amp = 0.35 * np.cos(np.clip(dx / R, -1, 1) * 1.3)[None, :] ** 2  # (1, w) lateral fade
            img[r0:r1, c0:c1] += ring * amp * np.exp(-0.5 * (phase - 1.0)) * (phase > 1.5)  # 0.6x per echo
        elif item[0] == "dot":
            _, col, row, _ = item
            img[row:row + 2, col:col + 2] += 0.7  # ~0.5 mm speck
        elif item[0] == "comet":
            _, col, row, length = item
            r1 = min(S, row + int(length) + 1)
            if row + 1 < r1:
                tail = 0.8 * np.linspace(1.0, 0.1, r1 - row - 1, dtype=np.float32)
                img[row + 1:r1, col] += tail
                if col + 1 < S:
                    img[row + 1:r1, col + 1] += 0.4 * tail


def _overlay(img: np.ndarray, masks: list[np.ndarray], view: _View, rng: np.random.Generator) -> None:
    """Scanner overlays: black borders (labels cleared there too), depth ticks, focus marker,
    text-like glyph strings."""
    S = img.shape[0]
    t, bt, l, rt = int(0.08 * S), int(0.03 * S), int(0.05 * S), int(0.09 * S)
    for arr in [img] + masks:
        arr[:t], arr[S - bt:], arr[:, :l], arr[:, S - rt:] = 0, 0, 0, 0
    tick, long, short = S - rt + 1, max(2, rt // 3), max(1, rt // 6)
    for mm in np.arange(5.0, view.width, 5.0):  # depth scale: long ticks every cm
        row = int((mm - view.y0) * view.ppm)
        if t <= row < S - bt:
            img[row, tick:tick + (long if mm % 10 == 0 else short)] = 0.85
    frow, fcol = int(t + 0.45 * (S - t - bt)), min(tick + long + 1, S - 3)
    for k in range(3):  # focus marker (a small triangle)
        img[frow - k:frow + k + 1, fcol + k] = 0.9
    # Text-like marks: one line of random 3x5 glyphs (4 columns per slot, some slots blank).
    c = max(1, S // 150)  # glyph cell size in pixels
    slots = max(1, int((S - l - rt) * (0.3 + 0.4 * rng.random())) // (4 * c))
    bits = rng.random((5, slots, 4)) < 0.55  # (5, slots, 4)
    bits[:, :, 3] = False  # spacing column
    bits[:, rng.random(slots) < 0.3] = False  # word gaps
    line = bits.reshape(5, slots * 4).repeat(c, 0).repeat(c, 1)  # (5c, 4c*slots)
    y0 = max(1, t // 2 - line.shape[0] // 2)
    h = min(line.shape[0], t - y0)
    if h > 0:
        img[y0:y0 + h, l:l + line.shape[1]] = 0.8 * line[:h]


# ---------------------------------------------------------------------------- public API

@functools.lru_cache(maxsize=64)
def _patient(seed: int, patient: int, max_nodules: int, empty_fraction: float, nodule_mm: tuple,
             risk: tuple, overrides_json: str) -> _Patient:
    """A patient's anatomy from its own stream (seed, patient). Cached because consecutive
    indices are views of the same patient; rendering never mutates it."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, patient, 0]))
    cfg = PhantomConfig(max_nodules=max_nodules, empty_fraction=empty_fraction, nodule_mm=nodule_mm,
                        malignancy_risk=risk)
    return _make_patient(rng, cfg, json.loads(overrides_json))


def _nodule_info(n: _Nodule, view: _View, area: float) -> dict[str, Any]:
    cx, cy = view.pt(n.cx, n.cy)
    return {"center": (float(cx), float(cy)), "axes": (float(n.a * view.ppm), float(n.b * view.ppm)),
            "angle": float(math.degrees(n.angle + view.tilt)), **n.features, "halo": n.halo,
            "blurred": n.blurred, "points": n.points, "feature_points": dict(n.feature_points),
            "level": n.tirads, "malignant": n.malignant, "area": area,
            "diameter_mm": float(2 * math.sqrt(n.a * n.b))}


def sample(index: int, seed: int = 0, config: PhantomConfig | None = None, *,
           nodule_overrides: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
           return_aux: bool = False) -> dict[str, Any]:
    """One synthetic B-mode image with labels, deterministic from (seed, index, config).

    Args:
        index: sample number (>= 0); patient = index // config.views_per_patient.
        seed: data-set seed.
        config: scanner profile / case mix (default ``PhantomConfig()``).
        nodule_overrides: force nodule features for demos, e.g. ``{"composition": "solid",
            "echogenicity": "very_hypo", "foci": "punctate", "diameter_mm": 15}`` for the main nodule,
            or a list of such dicts (one per nodule, sets the count). Keys: ``OVERRIDE_KEYS``.
        return_aux: also return ``aux`` = {"vessel_mask": (H, W) uint8 of carotids/jugulars,
            "view": view kind, "mm_per_px": float}.

    Returns:
        dict with image (H, W) float32 in [0, 1]; nodule_mask, gland_mask (H, W) uint8 in {0, 1}
        (gland = lobes + isthmus + nodules); size = nodule_mask.mean(); nodules (visible ones: center
        (x, y) px, axes (a, b) px, angle deg, composition, echogenicity, shape, margin, foci, halo,
        blurred, points, feature_points, level, malignant, area, diameter_mm); tirads_points (max
        over nodules, 0 if none); tirads_level (1..5, 0 if none); malignant (any visible nodule
        malignant); patient ("P000123"); id ("phantom_s0_000123"); view (kind).
    """
    cfg = config if config is not None else PhantomConfig()
    if not isinstance(cfg, PhantomConfig):
        raise TypeError(f"config must be a PhantomConfig, got {type(cfg).__name__}")
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or index < 0:
        raise ValueError(f"index must be an int >= 0, got {index!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    index, S = int(index), cfg.image_size
    overrides = _check_overrides(nodule_overrides)
    p = _patient(seed, index // cfg.views_per_patient, cfg.max_nodules, float(cfg.empty_fraction),
                 tuple(cfg.nodule_mm), tuple(cfg.malignancy_risk), json.dumps(overrides, sort_keys=True))
    vrng = np.random.default_rng(np.random.SeedSequence([seed, index, 1]))  # the view's own stream
    view = _make_view(vrng, p, index % cfg.views_per_patient, cfg)
    bank = _bank(S, cfg.speckle, float(cfg.speckle_size), float(cfg.speckle_contrast))
    cv = _Canvas(S, bank, vrng.integers(0, S, 8), view.width / S)

    _render_layers(cv, p, view)
    for e5 in p.scm:
        _render_ellipse_tissue(cv, view, e5, _MUSCLE, "streak", 0.45)
    for e5 in p.longus:
        _render_ellipse_tissue(cv, view, e5, 0.18, "streak", 0.4)
    _render_vertebra(cv, p, view)
    _render_gland(cv, p, view)
    _render_esophagus(cv, p, view)
    _render_trachea(cv, p, view)
    for kind, x, y, a, b in p.vessels:
        _render_round(cv, view, kind, x, y, a, b)
    drawn = []
    for n in p.nodules:
        out = _render_nodule(cv, n, view)
        if out is not None:
            cv.nodule[out[0]] |= out[1]
            drawn.append((n, out))
    cv.gland |= cv.nodule  # a nodule is part of the gland

    # Image formation: echo x speckle x transmission along depth x depth gain.
    img = cv.E
    if cv.a_rows < S:  # transmission exp(-integral of alpha over depth), only where alpha != 0
        reg = (slice(cv.a_rows, S), slice(*cv.a_cols))
        a = cv.A[reg]
        t = np.cumsum(a, axis=0)
        t -= 0.5 * a  # half-exclusive: a reflector is not hidden by its own shadow
        np.exp(-t, out=t)
        img[reg] *= t
    img += 0.03  # noise floor: shadows are dark, not empty
    img *= cv.fields["base"]
    img *= _depth_profile(S, float(cfg.attenuation), float(cfg.focus_depth), float(cfg.gain))
    _add_artifacts(cv, img, view)
    np.clip(img, 0.0, 1.0, out=img)
    if cfg.gamma != 1.0:  # a lookup table: much cheaper than np.power per pixel
        img = _gamma_lut(float(cfg.gamma))[(img * 4095.0 + 0.5).astype(np.int32)]
    nodule, gland = cv.nodule.view(np.uint8), cv.gland.view(np.uint8)
    vessel = cv.vessel.view(np.uint8)
    if cfg.overlays:
        _overlay(img, [nodule, gland, vessel], view, vrng)

    visible = []
    for n, (box, hard) in drawn:
        count = int((hard & cv.nodule[box]).sum())
        if count:
            visible.append(_nodule_info(n, view, count / (S * S)))
    points = max((d["points"] for d in visible), default=0)
    out = {
        "image": img, "nodule_mask": nodule, "gland_mask": gland, "size": float(nodule.mean()),
        "nodules": visible, "tirads_points": int(points),
        "tirads_level": tirads_level(points) if visible else 0,
        "malignant": any(d["malignant"] for d in visible),
        "patient": f"P{index // cfg.views_per_patient:06d}", "id": f"phantom_s{seed}_{index:06d}",
        "view": view.kind,
    }
    if return_aux:
        out["aux"] = {"vessel_mask": vessel, "view": view.kind, "mm_per_px": view.width / S}
    return out


def batch(indices: Sequence[int] | int, seed: int = 0, config: PhantomConfig | None = None) -> dict[str, Any]:
    """Many samples stacked.

    Args:
        indices: sample indices, or an int n meaning ``range(n)``.
        seed: data-set seed.
        config: scanner profile.

    Returns:
        image (N, H, W) float32, nodule_mask / gland_mask (N, H, W) uint8, size (N,) float32,
        tirads_points / tirads_level (N,) int64, malignant (N,) bool, patient / id / view (lists of
        str), nodules (list of lists of dicts).
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
        raise ValueError(f"gallery: feature must be one of {list(FEATURE_POINTS)}, got {feature!r}")
    # A visible baseline (solid, hypoechoic, smooth, no foci) unless the caller fixes it.
    base = {"composition": "solid", "echogenicity": "hypo", "margin": "smooth", "foci": "none",
            "shape": "wider_than_tall"}
    base.update(fixed)
    return {cat: sample(index, seed, config, nodule_overrides={**base, feature: cat})
            for cat in FEATURE_POINTS[feature]}


_LAYOUTS = {
    "tn3k": ("trainval-image", "trainval-mask", "test-image", "test-mask"),
    "tg3k": ("thyroid-image", "thyroid-mask"),
    "ddti": ("image", "mask"),
}


def _save(arr: np.ndarray, path: Path, scale: float) -> None:
    from PIL import Image

    im = Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8), mode="L")
    if path.suffix == ".jpg":
        im.save(path, quality=95, subsampling=0)
    else:
        im.save(path, format="PNG")


def _patient_groups(patients: list[str], k: int, rng: np.random.Generator) -> list[set[str]]:
    """Shuffle unique patients into k groups (some may be empty when there are < k patients)."""
    uniq = sorted(set(patients))
    order = rng.permutation(len(uniq))
    return [{uniq[i] for i in part} for part in np.array_split(order, k)]


def export(root: str | Path, layout: str, n: int, seed: int = 0, config: PhantomConfig | None = None,
           *, overwrite: bool = False) -> Path:
    """Write n samples in the public folder layout of TN3K, TG3K or DDTI, so the same loaders read them.

    tn3k: trainval-image/, trainval-mask/, test-image/, test-mask/ (JPEG .jpg, integer stems 0000.jpg
        in each part, nodule masks 0/255), ~20% of patients in test; tn3k-trainval-fold{0..4}.json =
        {"train": [...], "val": [...]} integer indices into the trainval files sorted by integer stem,
        patient-wise (with fewer than 5 trainval patients some val lists are empty).
    tg3k: thyroid-image/, thyroid-mask/ (gland masks, .jpg), tg3k-trainval.json with integer indices
        (like TRFE-Net's loader), patient-wise ~80/20 train/val.
    ddti: image/, mask/ (nodule masks) as 1.PNG, 2.PNG, ... (upper-case extension).
    Every layout also gets phantom-meta.csv (file, split, patient, id, size, TI-RADS, malignant).

    Args:
        root: output folder (created).
        layout: "tn3k", "tg3k" or "ddti".
        n: number of samples (indices 0..n-1).
        seed, config: as in :func:`sample`.
        overwrite: replace the layout's sub-folders if they already hold files.

    Returns:
        The root path.
    """
    if layout not in _LAYOUTS:
        raise ValueError(f"export: unknown layout {layout!r}; choose one of {sorted(_LAYOUTS)}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"export: n must be an int >= 1, got {n!r}")
    root = Path(root)
    for sub in _LAYOUTS[layout]:
        d = root / sub
        if d.exists() and any(d.iterdir()):
            if not overwrite:
                raise FileExistsError(f"export: {d} is not empty; pass overwrite=True to replace it")
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
    cfg = config if config is not None else PhantomConfig()
    rng = np.random.default_rng([seed, 9173])
    metas = [sample(i, seed, cfg) for i in range(int(n))]
    patients = [s["patient"] for s in metas]
    rows: list[dict[str, Any]] = []

    def meta(s: dict, file: str, split: str) -> dict[str, Any]:
        return {"file": file, "split": split, "patient": s["patient"], "id": s["id"], "size": f"{s['size']:.6f}",
                "tirads_points": s["tirads_points"], "tirads_level": s["tirads_level"],
                "malignant": int(s["malignant"])}

    if layout == "tn3k":
        uniq = sorted(set(patients))
        n_test = int(round(0.2 * len(uniq))) if len(uniq) > 1 else 0
        test_p = set(rng.permutation(uniq)[:max(n_test, 1 if len(uniq) > 1 else 0)].tolist())
        counters = {"trainval": 0, "test": 0}
        tv_patients = []
        for s in metas:
            part = "test" if s["patient"] in test_p else "trainval"
            stem = f"{counters[part]:04d}.jpg"
            counters[part] += 1
            _save(s["image"], root / f"{part}-image" / stem, 255.0)
            _save(s["nodule_mask"], root / f"{part}-mask" / stem, 255.0)
            rows.append(meta(s, f"{part}-image/{stem}", part))
            if part == "trainval":
                tv_patients.append(s["patient"])
        for k, group in enumerate(_patient_groups(tv_patients, 5, rng)):
            split = {"train": [i for i, q in enumerate(tv_patients) if q not in group],
                     "val": [i for i, q in enumerate(tv_patients) if q in group]}
            (root / f"tn3k-trainval-fold{k}.json").write_text(json.dumps(split))
    elif layout == "tg3k":
        groups = _patient_groups(patients, 5, rng)
        val = groups[0] if len(set(patients)) > 1 else set()
        for i, s in enumerate(metas):
            stem = f"{i:04d}.jpg"
            _save(s["image"], root / "thyroid-image" / stem, 255.0)
            _save(s["gland_mask"], root / "thyroid-mask" / stem, 255.0)
            rows.append(meta(s, f"thyroid-image/{stem}", "val" if s["patient"] in val else "train"))
        split = {"train": [i for i, q in enumerate(patients) if q not in val],
                 "val": [i for i, q in enumerate(patients) if q in val]}
        (root / "tg3k-trainval.json").write_text(json.dumps(split))
    else:
        for i, s in enumerate(metas):
            stem = f"{i + 1}.PNG"
            _save(s["image"], root / "image" / stem, 255.0)
            _save(s["nodule_mask"], root / "mask" / stem, 255.0)
            rows.append(meta(s, f"image/{stem}", "all"))
    with open(root / "phantom-meta.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


# ---------------------------------------------------------------------------- DDTI original (XML + TI-RADS)

# How the export spells the phantom's categories in DDTI's vocabulary; a tuple alternates between
# spelling variants from case to case, as the public release does (the loader maps them back).
_DDTI_SPELLING: dict[str, dict[str, str | tuple[str, ...]]] = {
    "composition": {"cystic": "cystic", "spongiform": "spongiform", "mixed": "predominantly solid", "solid": "solid"},
    "echogenicity": {"anechoic": "anechoic", "hyper_iso": "isoechogenicity", "hypo": "hypoechogenicity",
                     "very_hypo": "marked hypoechogenicity"},
    "margin": {"smooth": "well defined", "ill_defined": ("ill defined", "ill- defined"),
               "lobulated_irregular": "microlobulated", "extrathyroidal": "extrathyroidal extension"},
    "foci": {"none": "non", "comet_tail": "comet tail artifacts", "macro": ("macrocalcification", "macrocalcifications"),
             "peripheral": "peripheral calcifications", "punctate": ("microcalcification", "microcalcifications")},
}
_DDTI_FIELDS = {"composition": "composition", "echogenicity": "echogenicity", "margin": "margins", "foci": "calcifications"}


def ddti_tirads_category(points: int) -> str:
    """The phantom's TI-RADS points as a DDTI category (our convention: DDTI's categories are not
    ACR's): 0-2 -> "2" (TR1-TR2), 3 -> "3" (TR3), 4/5/6 -> "4a"/"4b"/"4c" (TR4), >= 7 -> "5" (TR5)."""
    if points < 0:
        raise ValueError(f"TI-RADS points must be >= 0, got {points}")
    return "2" if points <= 2 else "3" if points == 3 else {4: "4a", 5: "4b", 6: "4c"}.get(points, "5")


def _regions(mask: np.ndarray) -> list[dict[str, Any]]:
    """One freehand polygon per connected component of a mask (outer contour, DDTI's svg format)."""
    import cv2

    labels, count = ndimage.label(mask)
    out = []
    for k in range(1, count + 1):
        comp = (labels == k).astype(np.uint8)
        contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        pts = max(contours, key=len)[:, 0, :]  # (P, 2) x, y
        if len(pts) < 3:  # a one- or two-pixel blob: its pixel box
            ys, xs = np.nonzero(comp)
            pts = np.array([(xs.min(), ys.min()), (xs.max(), ys.min()), (xs.max(), ys.max()), (xs.min(), ys.max())])
        out.append({"points": [{"x": int(x), "y": int(y)} for x, y in pts], "regionType": "freehand"})
    return out


def export_ddti_tirads(root: str | Path, n: int, seed: int = 0, config: PhantomConfig | None = None, *,
                       layout: str = "folders", masks: bool | None = None, overwrite: bool = False) -> Path:
    """Write n samples as DDTI's original release: one XML per case (patient) + ``{case}_{k}.jpg``.

    Each synthetic patient is a case (number = patient + 1) and each of its views an image k = 1, 2,
    ...; the XML holds the case's TI-RADS descriptors in DDTI's spelling (variants alternate between
    cases), its category (:func:`ddti_tirads_category` of the most suspicious visible nodule's
    points; empty when no view shows a nodule), a random age and sex, and one ``<mark>`` per image
    whose svg lists one polygon per connected nodule region (``[]`` for a view without a nodule).
    ``phantom-meta.csv`` adds the phantom's own labels per image (its drawn ``malignant`` too).

    Args:
        root: output folder (created).
        n: number of samples (indices 0..n-1; the last case may have fewer views).
        seed, config: as in :func:`sample`.
        layout: "folders" (``annotations/``, ``images/``, ``masks/``) or "flat" (all in ``root``).
        masks: also write ``{case}_{k}_mask.png`` (0/255); default True for "folders", False for "flat".
        overwrite: replace existing files of this layout.

    Returns:
        The root path.
    """
    import xml.etree.ElementTree as ET

    if layout not in ("folders", "flat"):
        raise ValueError(f"export_ddti_tirads: layout must be 'folders' or 'flat', got {layout!r}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"export_ddti_tirads: n must be an int >= 1, got {n!r}")
    root = Path(root)
    masks = layout == "folders" if masks is None else masks
    dirs = {"xml": root / "annotations", "image": root / "images", "mask": root / "masks"} if layout == "folders" \
        else {"xml": root, "image": root, "mask": root}
    if layout == "folders":
        for d in set(dirs.values()):
            if d.exists() and any(d.iterdir()):
                if not overwrite:
                    raise FileExistsError(f"export_ddti_tirads: {d} is not empty; pass overwrite=True to replace it")
                shutil.rmtree(d)
    else:
        old = [p for p in root.glob("*") if p.suffix.lower() in (".xml", ".jpg", ".png")] if root.exists() else []
        if old and not overwrite:
            raise FileExistsError(f"export_ddti_tirads: {root} already holds {old[0].name}; pass overwrite=True")
        for p in old:
            p.unlink()
    for d in set(dirs.values()):
        d.mkdir(parents=True, exist_ok=True)
    cfg = config if config is not None else PhantomConfig()
    views = cfg.views_per_patient
    rng = np.random.default_rng([seed, 31337])
    rows: list[dict[str, Any]] = []
    for patient in range(math.ceil(int(n) / views)):
        case = str(patient + 1)
        shots = [sample(i, seed, cfg) for i in range(patient * views, min((patient + 1) * views, int(n)))]
        visible = [d for s in shots for d in s["nodules"]]
        worst = max(visible, key=lambda d: d["points"]) if visible else None
        xml = ET.Element("case")
        fields = {"number": case, "age": str(int(rng.integers(20, 86))), "sex": "F" if rng.random() < 0.8 else "M"}
        for key, tag in _DDTI_FIELDS.items():
            spell = _DDTI_SPELLING[key][worst[key]] if worst else ""
            fields[tag] = spell[patient % len(spell)] if isinstance(spell, tuple) else spell
        fields["tirads"] = ddti_tirads_category(worst["points"]) if worst else ""
        fields.update(reportbacaf="", reporteco="")
        for tag, text in fields.items():
            ET.SubElement(xml, tag).text = text
        for k, s in enumerate(shots, start=1):
            mark = ET.SubElement(xml, "mark")
            ET.SubElement(mark, "image").text = str(k)
            ET.SubElement(mark, "svg").text = json.dumps(_regions(s["nodule_mask"]))
            _save(s["image"], dirs["image"] / f"{case}_{k}.jpg", 255.0)
            if masks:
                _save(s["nodule_mask"], dirs["mask"] / f"{case}_{k}_mask.png", 255.0)
            rows.append({"file": f"{case}_{k}.jpg", "case": case, "patient": s["patient"], "id": s["id"],
                         "size": f"{s['size']:.6f}", "tirads": fields["tirads"], "tirads_points": s["tirads_points"],
                         "tirads_level": s["tirads_level"], "malignant": int(s["malignant"])})
        ET.ElementTree(xml).write(dirs["xml"] / f"{case}.xml", encoding="utf-8", xml_declaration=True)
    with open(root / "phantom-meta.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root
