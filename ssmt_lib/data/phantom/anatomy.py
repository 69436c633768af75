"""The patient's anatomy in a transverse neck scan, and the views a probe takes of it.

World coordinates are millimetres: x lateral from the midline (patient's right on the image
left, negative), y depth below the skin. One patient is

    skin, subcutaneous fat, strap muscles (horizontal layers) and sternocleidomastoid (lateral)
    thyroid: one or two lobes (ellipses carved by the trachea into crescents) joined by the isthmus
    trachea: air column ringed by cartilage, centred at the midline
    carotid artery and jugular vein lateral to each lobe, and the oesophagus beside the trachea:
    nodule look-alikes OUTSIDE the gland
    longus colli and the vertebral body at depth
    0..3 nodules INSIDE the gland (``nodules``), placed so they fit their lobe

Lobes grow to hold big nodules (goitre), as real glands do, instead of letting a nodule poke
through the capsule (only extra-thyroidal extension does). Each synthetic patient has one anatomy
drawn from its own random stream; consecutive sample indices are views of it (``View``: bilateral,
one lobe, or zoomed on the main nodule; pan, zoom and a few degrees of tilt), so splits must be
patient-wise.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from ssmt_lib.data.phantom.config import PhantomConfig
from ssmt_lib.data.phantom.nodules import Nodule, draw_nodule

VIEW_KINDS = ("bilateral", "lobe", "nodule")


class Ellipse(NamedTuple):
    """A rotated ellipse in world mm (lobes, muscles)."""

    cx: float  # centre, mm lateral
    cy: float  # centre, mm depth
    a: float  # horizontal semi-axis (mm, before rotation)
    b: float  # vertical semi-axis (mm)
    angle: float  # rotation (rad)


class Vessel(NamedTuple):
    """A carotid artery or jugular vein (lumen semi-axes; the wall is added when drawn)."""

    kind: str  # "carotid" or "jugular"
    cx: float
    cy: float
    a: float
    b: float


@dataclass
class Patient:
    """One patient's anatomy (mm); rendering never mutates it (it is cached)."""

    skin: float  # skin thickness (mm)
    fat: float  # depth of the fat / muscle fascia
    strap: float  # depth of the strap muscles' deep surface
    curve: float  # layer curvature (mm at 25 mm lateral)
    ripple: tuple[float, float]  # layer waviness amplitude (mm) and phase
    gland_level: float  # parenchyma echo level
    thyroiditis: float  # coarse hypoechoic heterogeneity (0 = normal gland)
    trachea: tuple[float, float]  # (depth of centre, radius)
    cartilage: float  # tracheal cartilage thickness (mm); the isthmus starts beyond it
    isthmus: tuple[float, float]  # (thickness, half-angle rad)
    lobes: dict[int, Ellipse]  # side (-1, +1) -> lobe; one side is missing after hemithyroidectomy
    vessels: list[Vessel]
    sternocleidomastoid: list[Ellipse]
    longus_colli: list[Ellipse]
    vertebra: tuple[float, float, float]  # (cy, a, b) of the vertebral body
    esophagus: tuple[float, float, float]  # (cx, cy, radius)
    nodules: list[Nodule]


def lobe_lateral_extent(lobe: Sequence[float]) -> float:
    """|x| of the lobe's lateral tangent (vessels are placed beyond it).

    Args:
        lobe: (cx, cy, a, b, angle).
    """
    cx, _, a, b, angle = lobe
    return abs(cx) + math.sqrt((a * math.cos(angle)) ** 2 + (b * math.sin(angle)) ** 2)


_RING = np.linspace(0, 2 * np.pi, 24, endpoint=False)  # boundary points tested by nodule_fits
_RING_COS_SIN = (np.cos(_RING), np.sin(_RING))


def nodule_fits(nodule: Nodule, cx: np.ndarray, cy: np.ndarray, patient: Patient,
                lobe: Sequence[float], others: list[Nodule]) -> np.ndarray:
    """Which candidate centres put the nodule inside its lobe and clear of its neighbours.

    Inside the lobe (an ETE nodule: its anterior part may, and must, bulge through the capsule),
    clear of the trachea with its cartilage, the oesophagus and the other nodules. Tested on 24
    boundary points per candidate, all candidates at once.

    Args:
        nodule: the nodule (axes, angle, margin).
        cx, cy: (K,) candidate centres (mm).
        patient: the anatomy (skin, trachea, cartilage, oesophagus).
        lobe: (cx, cy, a, b, angle) of its lobe.
        others: nodules already placed.

    Returns:
        (K,) bool.
    """
    ca, sa = math.cos(nodule.angle), math.sin(nodule.angle)
    e = nodule.outer_radius_factor * 1.04 + 0.04
    ring_cos, ring_sin = _RING_COS_SIN
    ox = e * (nodule.a * ring_cos * ca - nodule.b * ring_sin * sa)  # (24,) outline offsets
    oy = e * (nodule.a * ring_cos * sa + nodule.b * ring_sin * ca)
    px, py = cx[:, None] + ox, cy[:, None] + oy  # (K, 24)
    lx, ly, la, lb, lang = lobe
    cl, sl = math.cos(lang), math.sin(lang)

    def in_lobe(x, y, shrink):
        u = ((x - lx) * cl + (y - ly) * sl) / (la - shrink)
        v = (-(x - lx) * sl + (y - ly) * cl) / (lb - shrink)
        return u * u + v * v < 1.0

    ete = nodule.features["margin"] == "extrathyroidal"
    inside = in_lobe(px, py, min(0.8, 0.15 * nodule.b) if ete else 0.8)
    if ete:
        # The anterior part breaks through the capsule (and must), the rest stays in the lobe.
        inside |= py < cy[:, None]
        ok = (inside.all(1) & (py.min(1) > patient.skin + 1.0)
              & (np.abs(px).max(1) < lobe_lateral_extent(lobe) - 0.5))
        ok &= ~in_lobe(cx, cy - nodule.b, 0.0)
    else:
        ok = inside.all(1)
    ty, tr = patient.trachea
    ok &= (np.hypot(px, py - ty) >= tr + patient.cartilage + 0.8).all(1)
    ex, ey, er = patient.esophagus
    ok &= (np.hypot(px - ex, py - ey) >= er + 1.5).all(1)
    reach = max(nodule.a, nodule.b) * nodule.outer_radius_factor
    for o in others:
        other_reach = max(o.a, o.b) * o.outer_radius_factor
        ok &= np.hypot(cx - o.cx, cy - o.cy) >= 1.05 * (reach + other_reach)
    return ok


def _lobe_centre(patient: Patient, side: int, a: float, b: float) -> tuple[float, float]:
    """A lobe's centre: beside the trachea's cartilage, its deep half behind the trachea's front."""
    ty, tr = patient.trachea
    return (side * (tr + patient.cartilage + 0.6 * a),
            max(patient.strap + 0.4 + b, ty - 0.35 * tr))


def draw_patient(rng: np.random.Generator, cfg: PhantomConfig,
                 overrides: list[dict] | None) -> Patient:
    """Draw one patient's anatomy (mm). Lobes grow to hold big nodules (goitre).

    Args:
        rng: the patient's own stream.
        cfg: the case mix (nodule count, size, malignancy risk).
        overrides: per-nodule forced features (sets the count), or None.
    """
    u = rng.random(40)  # the scalar draws, one fixed-size block so the stream stays aligned
    skin = 1.0 + 0.8 * u[0]
    fat = skin + 1.5 + 3.0 * u[1]
    strap = fat + 2.5 + 3.0 * u[2]
    gland_level = 0.5 + 0.16 * u[3]
    thyroiditis = 0.6 * u[5] if u[4] < 0.15 else 0.0
    tr = 8.0 + 2.5 * u[6]  # trachea radius; ty below is the depth of its centre
    cartilage = 1.0 + 0.6 * u[7]
    isthmus = 2.0 + 3.0 * u[8]
    ty = strap + 0.4 + isthmus + cartilage + tr
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
    diameters = [math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u[13] ** 0.7)]  # skewed up
    for i in range(1, 3):
        top = math.log(max(2.6, min(diameters[0], 14.0)))
        diameters.append(math.exp(math.log(2.5) + (top - math.log(2.5)) * u[13 + i]))
    main_side = sides[int(u[16] * len(sides))]
    nodules = []
    for i in range(count):
        side = main_side if i == 0 or u[16 + i] < 0.4 or len(sides) == 1 else -main_side
        override = overrides[i] if overrides is not None else {}
        nodules.append(draw_nodule(rng, diameters[i], side, gland_level, cfg.malignancy_risk,
                                   override))

    patient = Patient(skin=skin, fat=fat, strap=strap, curve=0.0, ripple=(0.0, 0.0),
                      gland_level=gland_level, thyroiditis=thyroiditis, trachea=(ty, tr),
                      cartilage=cartilage, isthmus=(isthmus, 0.0), lobes={}, vessels=[],
                      sternocleidomastoid=[], longus_colli=[], vertebra=(0.0, 0.0, 0.0),
                      esophagus=(0.0, 0.0, 0.0), nodules=[])
    # Lobes: normal size, enlarged to hold their nodules (margin 2.8 mm plus lobulation).
    lobes = {}
    for s in sides:
        la, lb = 8.5 + 3.0 * rng.random(), 8.0 + 3.0 * rng.random()
        for n in nodules:
            if n.side == s:
                top = 0.35 * n.b if n.features["margin"] == "extrathyroidal" else 0.0
                la = max(la, (n.a * n.outer_radius_factor + 2.8) / 0.9)
                lb = max(lb, n.b * n.outer_radius_factor + 2.8 - top)
        angle = s * rng.uniform(-0.05, 0.2)
        lobes[s] = [*_lobe_centre(patient, s, la, lb), la, lb, angle]  # mutable while placing

    esophagus_angle = rng.uniform(0.5, 0.9)
    er = 4.5 + 2.0 * rng.random()
    patient.esophagus = (math.sin(esophagus_angle) * (tr + er + 1.0),
                         ty + math.cos(esophagus_angle) * (tr + er + 1.0), er)
    patient.curve = 1.5 * rng.random()
    patient.ripple = (0.6 * rng.random(), 6.3 * rng.random())
    patient.isthmus = (isthmus, rng.uniform(0.75, 1.0))

    patient.nodules = _place_nodules(rng, nodules, lobes, patient)
    patient.lobes = {s: Ellipse(*v) for s, v in lobes.items()}
    _draw_neck(rng, patient)
    return patient


def _place_nodules(rng: np.random.Generator, nodules: list[Nodule],
                   lobes: dict[int, list[float]], patient: Patient) -> list[Nodule]:
    """Place nodules by rejection, 32 candidates at a time; returns the placed ones.

    The first nodule of a lobe may grow the lobe (goitre) and, if still too big, shrink; an ETE
    nodule that cannot straddle the capsule becomes lobulated. A later nodule never moves the
    lobe (that would move the nodules already in it): it tries the other lobe and is left out if
    it fits nowhere. ``lobes`` ([cx, cy, a, b, angle] lists) grow in place.
    """
    placed: list[Nodule] = []
    for n in nodules:
        first = not any(o.side == n.side for o in placed)
        for attempt in range(24):
            if attempt == 4 and n.features["margin"] == "extrathyroidal":
                n.features["margin"] = "lobulated_irregular"
                n.rescore()
            if not first and attempt == 8:
                other = -n.side
                if other not in lobes or any(o.side == other for o in placed):
                    break
                n.side, first = other, True
            lobe = lobes[n.side]
            lx, ly, la, lb, _ = lobe
            k = rng.random((2, 32))
            room_x = max(la - n.a * n.outer_radius_factor, 0.0)
            cx = lx + n.side * (k[0] - 0.4) * room_x
            if n.features["margin"] == "extrathyroidal":  # straddle the anterior capsule
                cx = lx + n.side * (k[0] - 0.5) * 0.8 * room_x
                top = ly - lb * np.sqrt(np.clip(1 - ((cx - lx) / la) ** 2, 0, 1))
                cy = top + n.b * (0.6 + 0.25 * k[1])
            else:
                cy = ly + (k[1] - 0.5) * 1.2 * max(lb - n.b * n.outer_radius_factor, 0.0)
            ok = nodule_fits(n, cx, cy, patient, lobe, placed)
            if ok.any():
                i = int(np.argmax(ok))
                n.cx, n.cy = float(cx[i]), float(cy[i])
                placed.append(n)
                break
            if first and attempt < 16:  # grow the (still empty) lobe
                lobe[2] *= 1.06
                lobe[3] *= 1.06
                lobe[0], lobe[1] = _lobe_centre(patient, n.side, lobe[2], lobe[3])
            elif first:
                n.a, n.b = 0.85 * n.a, 0.85 * n.b
        else:
            if first:  # cannot happen with the geometry above; fail loudly rather than cheat
                raise RuntimeError(f"phantom: could not place a nodule ({n.features}, "
                                   f"{n.a:.1f}x{n.b:.1f} mm)")
    return placed


def _draw_neck(rng: np.random.Generator, patient: Patient) -> None:
    """Vessels, muscles and bone relative to the lobes (vessels strictly beyond the lateral
    tangent); fills ``patient`` in place."""
    ty, tr = patient.trachea
    for s in (-1, 1):
        lobe = patient.lobes.get(s) or (s * (tr + patient.cartilage + 6.0),
                                        patient.strap + 0.4 + 8.0, 8.0, 8.0, 0.0)
        lateral = lobe_lateral_extent(lobe)
        carotid_r = 2.8 + 1.4 * rng.random()
        gap = 0.8 + 2.0 * rng.random()  # lobe to carotid wall
        # (outer radius incl. the wall: carotid +1 mm, jugular +0.5 mm, see render.render_vessel)
        carotid_x = s * (lateral + carotid_r + 1.0 + gap)
        carotid_y = lobe[1] + lobe[3] * rng.uniform(-0.1, 0.4)
        jugular_a, jugular_b = 3.0 + 3.0 * rng.random(), 1.2 + 3.0 * rng.random()
        jugular_x = s * max(abs(carotid_x) + carotid_r * rng.uniform(0.3, 1.0) + jugular_a * 0.5,
                            lateral + gap + jugular_a + 0.5)  # lateral to the carotid
        jugular_y = carotid_y - carotid_r * rng.uniform(0.2, 1.0)  # and a little anterior
        patient.vessels += [Vessel("carotid", carotid_x, carotid_y, carotid_r, carotid_r),
                            Vessel("jugular", jugular_x, jugular_y, jugular_a, jugular_b)]
        patient.sternocleidomastoid.append(Ellipse(
            abs(carotid_x) * s + s * rng.uniform(0, 4), patient.strap - 1.0 + 2.0 * rng.random(),
            11.0 + 5.0 * rng.random(), 2.5 + 1.5 * rng.random(), s * rng.uniform(0.05, 0.25)))
        patient.longus_colli.append(Ellipse(
            s * (tr * 0.8 + 4.0), ty + tr + 3.0 + 2.0 * rng.random(), 6.0 + 2.0 * rng.random(),
            3.0 + rng.random(), 0.0))
    vertebra_front = ty + tr + 6.0 + 3.0 * rng.random()
    patient.vertebra = (vertebra_front + 10.0, 14.0 + 4.0 * rng.random(), 10.0)


@functools.lru_cache(maxsize=64)
def patient_anatomy(seed: int, patient: int, max_nodules: int, empty_fraction: float,
                    nodule_mm: tuple, risk: tuple, overrides_json: str) -> Patient:
    """A patient's anatomy from its own stream (seed, patient).

    Cached because consecutive indices are views of the same patient; rendering never mutates
    it. The arguments are the hashable parts of the config that shape the anatomy.

    Args:
        seed: data-set seed.
        patient: patient number.
        max_nodules, empty_fraction, nodule_mm, risk: the ``PhantomConfig`` fields.
        overrides_json: ``json.dumps`` of the checked nodule overrides ("null" for none).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, patient, 0]))
    cfg = PhantomConfig(max_nodules=max_nodules, empty_fraction=empty_fraction,
                        nodule_mm=nodule_mm, malignancy_risk=risk)
    return draw_patient(rng, cfg, json.loads(overrides_json))


# ---------------------------------------------------------------------------- views

@dataclass
class View:
    """Where the probe looks: a square field of view, tilted about its centre."""

    kind: str  # "bilateral", "lobe" or "nodule"
    x0: float  # world x (mm) of the image's left edge
    y0: float  # world depth (mm) of the top row (slightly above the skin)
    width: float  # field of view (mm); square, so also the depth
    tilt: float  # rotation (rad) about the image centre
    px_per_mm: float  # pixels per mm

    def to_pixel(self, x: float, y: float) -> tuple[float, float]:
        """World (mm) -> pixel (column, row)."""
        xc, yc = self.x0 + self.width / 2, self.y0 + self.width / 2
        c, s = math.cos(self.tilt), math.sin(self.tilt)
        xr = xc + (x - xc) * c - (y - yc) * s
        yr = yc + (x - xc) * s + (y - yc) * c
        return (xr - self.x0) * self.px_per_mm, (yr - self.y0) * self.px_per_mm


def draw_view(rng: np.random.Generator, patient: Patient, k: int, cfg: PhantomConfig) -> View:
    """View k of a patient: view 0 is a lobe view; others follow ``cfg.view_mix``.

    Args:
        rng: the view's own stream.
        patient: the anatomy.
        k: view number within the patient.
        cfg: view mix, field-of-view scale, tilt, image size.
    """
    mix = np.array(cfg.view_mix, float)
    if not patient.nodules:
        mix[2] = 0.0
    u = rng.random(8)
    if k == 0 and mix[1] > 0:
        kind = "lobe"
    else:
        kind = VIEW_KINDS[int(np.searchsorted(np.cumsum(mix / mix.sum()), u[0]))]
    main = patient.nodules[0] if patient.nodules else None
    lobes = patient.lobes
    side = main.side if main else (list(lobes) or [1])[int(u[1] * max(len(lobes), 1))]
    lobe = lobes.get(side)
    if kind == "bilateral":
        half = max(abs(v.cx) + v.a for v in patient.vessels) + 2.0
        width, cx = 2 * half * (0.95 + 0.15 * u[2]), (u[3] - 0.5) * 6.0
    elif kind == "lobe" and lobe is not None:
        widest_vessel = max(v.a for v in patient.vessels)
        width = (2 * lobe.a + 2 * widest_vessel + 10.0) * (1.1 + 0.35 * u[2])
        width = max(width, lobe.cy + lobe.b + 4.0)
        cx = lobe.cx + side * (0.1 + 0.15 * u[3]) * width
    elif kind == "nodule" and main is not None:
        extent = 2 * max(main.a, main.b) * main.outer_radius_factor
        depth = main.cy + 0.85 * main.b * main.outer_radius_factor + 2.5 * u[4]  # nodule's bottom
        width = max(extent * (0.9 + 1.2 * u[2] ** 2), depth)
        cx = main.cx + (u[3] - 0.5) * 0.2 * width
    else:  # a lobe view of a patient without that lobe: fall back to bilateral
        kind, width, cx = "bilateral", 60.0, 0.0
    width *= cfg.fov_scale * (0.95 + 0.1 * u[5])
    tilt = math.radians(cfg.tilt_deg) * (2 * u[6] - 1)
    return View(kind=kind, x0=cx - width / 2, y0=-0.3, width=width, tilt=tilt,
                px_per_mm=cfg.image_size / width)
