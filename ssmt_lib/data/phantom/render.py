"""Drawing one view of a patient onto the canvas: each tissue's echo, texture and attenuation.

Painted back to front, later tissues over earlier ones: layers (skin, fat, strap muscles), the
lateral and deep muscles, the vertebra, the thyroid lobes, the oesophagus and trachea (which carve
their discs out of the lobes, leaving the crescent shape, and draw the isthmus), the vessels, and
the nodules. Every tissue writes only inside its bounding box. Each painter also sets what the
scanner model in ``ultrasound`` needs: attenuation (fluid enhances, air, bone and calcification
shadow), the label masks (gland, nodule, vessel) and the artefacts queued for after attenuation.
"""
from __future__ import annotations

import math

import numpy as np

from ssmt_lib.data.phantom.anatomy import Ellipse, Patient, View
from ssmt_lib.data.phantom.nodules import Nodule
from ssmt_lib.data.phantom.ultrasound import (
    ATT_AIR,
    ATT_BLOOD,
    ATT_BONE,
    ATT_CALCIFICATION,
    ATT_EDGE,
    ATT_FLUID,
    ECHO_CALCIFICATION,
    ECHO_DEEP,
    ECHO_FAT,
    ECHO_FLUID,
    ECHO_MUSCLE,
    ECHO_SKIN,
    Box,
    Canvas,
    clipped_box,
    ellipse_radius,
    pixel_centres,
    soft_step,
)


def render_layers(canvas: Canvas, patient: Patient, view: View) -> None:
    """Skin, fat, strap muscles (with fascia lines and striations) over deep tissue."""
    size, echo = canvas.size, canvas.echo
    cols = pixel_centres(size)
    xw = view.x0 + cols / view.px_per_mm  # (S,) world x of each column
    ripple = patient.ripple[0] * np.sin(xw * 0.25 + patient.ripple[1])
    curve = patient.curve * (xw / 25.0) ** 2
    slope = (cols - size / 2) * view.tilt  # small-angle tilt of horizontal layers
    # (1, S) boundary rows of skin, fat and strap muscles; deeper layers follow curve more.
    skin, fat, strap = [((d + curve * k + ripple * k - view.y0) * view.px_per_mm + slope)[None, :]
                        for d, k in ((patient.skin, 0.2), (patient.fat, 0.6), (patient.strap, 1.0))]
    ymax = min(size, int(max(float(x.max()) for x in (skin, fat, strap))) + 4)
    echo[:] = ECHO_DEEP
    if ymax <= 0:
        return
    rows = pixel_centres(size)[:ymax, None]  # (ymax, 1)
    w = max(0.8, 0.6 * view.px_per_mm)  # width of the layer boundaries (px)
    top = (ECHO_DEEP + (ECHO_MUSCLE - ECHO_DEEP) * soft_step(strap - rows, w)
           + (ECHO_FAT - ECHO_MUSCLE) * soft_step(fat - rows, w)
           + (ECHO_SKIN - ECHO_FAT) * soft_step(skin - rows, w))  # (ymax, S)
    fascia = (np.clip(1.0 - np.abs(rows - fat) / w, 0, None)
              + np.clip(1.0 - np.abs(rows - strap) / w, 0, None))
    box = (slice(0, ymax), slice(0, size))
    echo[:ymax] = top * (1.0 + 0.3 * canvas.noise("streak", box)) + 0.3 * fascia
    echo[: max(1, int(0.3 * view.px_per_mm))] = 0.9  # the skin entry echo


def render_muscle(canvas: Canvas, view: View, muscle: Ellipse, level: float, texture: str,
                  amount: float) -> None:
    """A textured soft-tissue ellipse (sternocleidomastoid, longus colli).

    Args:
        canvas, view: where to draw.
        muscle: the ellipse (mm, rad).
        level: echo level.
        texture: noise field of the striations (a name in ``ultrasound.NOISE_FIELDS``).
        amount: texture strength.
    """
    cx, cy = view.to_pixel(muscle.cx, muscle.cy)
    ppm = view.px_per_mm
    res = ellipse_radius(cx, cy, muscle.a * ppm, muscle.b * ppm, muscle.angle + view.tilt,
                         canvas.size)
    if res is None:
        return
    box, r, _, _ = res
    radius_px = math.sqrt(muscle.a * muscle.b) * ppm
    canvas.paint(box, soft_step((1.0 - r) * radius_px, 1.5),
                 level * (1.0 + amount * canvas.noise(texture, box)))


def render_gland(canvas: Canvas, patient: Patient, view: View) -> None:
    """Lobes with their capsule. The trachea and oesophagus painters carve their discs out of
    the lobes afterwards (crescent shape) and draw the isthmus."""
    ppm = view.px_per_mm
    w = max(0.7, 0.35 * ppm)  # width of the lobe boundary (px)
    for lobe in patient.lobes.values():
        cx, cy = view.to_pixel(lobe.cx, lobe.cy)
        a, b = lobe.a * ppm, lobe.b * ppm
        res = ellipse_radius(cx, cy, a, b, lobe.angle + view.tilt, canvas.size)
        if res is None:
            continue
        box, r, _, _ = res
        radius_px = math.sqrt(a * b)
        canvas.gland[box] |= r < 1.0
        level = patient.gland_level * (1.0 + 0.2 * canvas.noise("fine", box))
        if patient.thyroiditis:
            level = level * (1.0 - patient.thyroiditis
                             * np.clip(canvas.noise("coarse", box) - 0.3, 0, None))
        canvas.paint(box, soft_step((1.0 - r) * radius_px, w), level)
        capsule = 1.0 - np.abs(r - 1.0) * (radius_px / max(1.0, 0.4 * ppm))  # thin bright line
        np.maximum(canvas.echo[box], 0.72 * capsule, out=canvas.echo[box])


def render_trachea(canvas: Canvas, patient: Patient, view: View) -> None:
    """Isthmus (anterior ring sector), cartilage (hypoechoic C), bright air-mucosa interface,
    air shadow; queues the reverberations. Carves the trachea + cartilage disc out of the lobes."""
    size, ppm = canvas.size, view.px_per_mm
    ty, tr = patient.trachea
    xc, yc = view.to_pixel(0.0, ty)
    air_radius, cartilage_radius = tr * ppm, (tr + patient.cartilage) * ppm
    outer = cartilage_radius + patient.isthmus[0] * ppm
    box = clipped_box(xc, yc, outer + 2, outer + 2, size)
    if box is None:
        return
    coords = pixel_centres(size)
    dx, dy = (coords[box[1]] - xc)[None, :], (coords[box[0]] - yc)[:, None]
    d = np.sqrt(dx * dx + dy * dy)  # (h, w)
    w = max(0.8, 0.3 * ppm)  # width of the tracheal boundaries (px)
    echo = canvas.echo[box]
    if patient.lobes:
        sector = -dy - math.cos(patient.isthmus[1]) * d  # > 0 inside the anterior sector
        isthmus = (soft_step(d - cartilage_radius, w) * soft_step(outer - d, w)
                   * soft_step(sector, 2.0 * w))
        canvas.gland[box] |= isthmus >= 0.5
        canvas.paint(box, isthmus, patient.gland_level * (1.0 + 0.2 * canvas.noise("fine", box)))
    disc = d < cartilage_radius
    canvas.gland[box] &= ~disc
    echo[disc] = np.where(dy < 0.35 * d, 0.12, ECHO_DEEP)[disc]  # cartilage in front, soft behind
    air = d < air_radius - 0.5 * w
    echo[air] = 0.05
    interface = (1.0 - np.abs(d - air_radius) * (1.0 / w)) * (dy < 0)
    np.maximum(echo, interface, out=echo)
    canvas.add_attenuation(box, (ATT_AIR * view.width / size) * air)
    canvas.late_artifacts.append(("reverb", xc, yc, air_radius))


def render_vessel(canvas: Canvas, view: View, kind: str, cx_mm: float, cy_mm: float,
                  a_mm: float, b_mm: float) -> None:
    """Carotid / jugular: anechoic lumen, bright wall, posterior enhancement, edge shadows.

    Args:
        canvas, view: where to draw.
        kind: "carotid" (thick bright wall, edge shadows) or "jugular".
        cx_mm, cy_mm, a_mm, b_mm: lumen centre and semi-axes (mm).
    """
    size, ppm, mm_per_px = canvas.size, view.px_per_mm, canvas.mm_per_px
    cx, cy = view.to_pixel(cx_mm, cy_mm)
    wall = (1.0 if kind == "carotid" else 0.5) * ppm
    res = ellipse_radius(cx, cy, a_mm * ppm + wall, b_mm * ppm + wall, view.tilt, size)
    if res is None:
        return
    box, r, _, _ = res
    lumen_px = math.sqrt(a_mm * b_mm) * ppm
    lumen = r < lumen_px / (lumen_px + wall)  # lumen radius in r units
    canvas.vessel[box] |= r < 1.0
    inside = soft_step((1.0 - r) * (a_mm * ppm + wall), 1.0)
    level = np.where(lumen, ECHO_FLUID, 0.85 if kind == "carotid" else 0.5)  # lumen, wall
    canvas.paint(box, inside, level)
    canvas.add_attenuation(box, (ATT_BLOOD * mm_per_px) * lumen)
    # Refraction at the carotid's curved lateral walls: thin shadows straight down from the edges.
    for sx in ((-1, 1) if kind == "carotid" else ()):
        col, row = int(round(cx + sx * a_mm * ppm)), int(round(cy))
        if 0 <= col < size and 0 <= row < size:
            canvas.add_attenuation((slice(row, row + 1), slice(max(col - 1, 0), col + 1)), ATT_EDGE)


def render_esophagus(canvas: Canvas, patient: Patient, view: View) -> None:
    """Target sign: hypoechoic muscular wall around echogenic mucosa; carved out of the gland."""
    ex, ey, er = patient.esophagus
    cx, cy = view.to_pixel(ex, ey)
    radius_px = er * view.px_per_mm
    res = ellipse_radius(cx, cy, radius_px, radius_px * 0.85, view.tilt, canvas.size)
    if res is None:
        return
    box, r, _, _ = res
    canvas.gland[box] &= r >= 1.0
    level = np.where(r < 0.5, 0.55 * (1.0 + 0.5 * canvas.noise("fine", box)), 0.14)
    canvas.paint(box, soft_step((1.0 - r) * er * view.px_per_mm, 1.0), level)


def render_vertebra(canvas: Canvas, patient: Patient, view: View) -> None:
    """Anterior surface of the vertebral body: bright arc with a bone shadow below."""
    vy, va, vb = patient.vertebra
    cx, cy = view.to_pixel(0.0, vy)
    res = ellipse_radius(cx, cy, va * view.px_per_mm, vb * view.px_per_mm, view.tilt, canvas.size)
    if res is None:
        return
    box, r, _, v = res
    rim = np.clip(1.0 - np.abs(r - 1.0) * vb * view.px_per_mm / 1.5, 0, None) * (v < 0)
    echo = canvas.echo[box]
    np.maximum(echo, 0.9 * rim, out=echo)
    cortex = (r < 0.97) & (r > 0.8) & (v < 0)  # the anterior cortex shadows what lies behind
    canvas.add_attenuation(box, (ATT_BONE * view.width / canvas.size) * cortex)


def render_nodule(canvas: Canvas, nodule: Nodule, view: View) -> tuple[Box, np.ndarray] | None:
    """One nodule: composition, echogenicity, margin, halo, foci and their shadows.

    Returns:
        (box, hard mask over the box), or None when the nodule is off-image.
    """
    size, ppm, mm_per_px = canvas.size, view.px_per_mm, canvas.mm_per_px
    n = nodule
    cx, cy = view.to_pixel(n.cx, n.cy)
    a, b, angle = n.a * ppm, n.b * ppm, n.angle + view.tilt
    radius_px = math.sqrt(a * b)
    res = ellipse_radius(cx, cy, a, b, angle, size,
                         pad=(n.outer_radius_factor - 1.0) * max(a, b) + 3.0)
    if res is None:
        return None
    box, r, u, v = res
    noise = canvas.noise("fine" if radius_px < 12 else "coarse", box)
    rough = r - n.margin_roughness * noise  # perturbed radius: lobulated / irregular margins
    hard = rough < 1.0
    if not hard.any():
        return None
    edge = (2.0 + 1.5 * n.margin_roughness * 10) * (size / 224.0) if n.blurred else 0.7
    inside = soft_step((1.0 - rough) * radius_px, edge)
    composition = n.features["composition"]
    solid = n.echo_level * (1.0 + n.heterogeneity * canvas.noise("fine", box))
    if composition == "cystic":
        fluid = np.ones_like(rough, dtype=bool)
    elif composition == "mixed":
        projection = (u * n.solid_direction[0] + v * n.solid_direction[1]
                      + 0.35 * canvas.noise("coarse", box))
        fluid = projection < n.solid_threshold
    elif composition == "spongiform":
        fluid = (canvas.noise("fine", box) > -0.1) & (rough < 0.9)  # many small cysts (> 50%)
    else:
        fluid = np.zeros_like(rough, dtype=bool)
    level = np.where(fluid, ECHO_FLUID + (0.06 if composition == "spongiform" else 0.0), solid)
    if n.halo:
        level = np.where(rough > 1.0 - max(1.2, 0.7 * ppm) / radius_px, level * 0.25, level)
    canvas.paint(box, inside, level)
    canvas.add_attenuation(box, (ATT_FLUID * mm_per_px) * (fluid & hard))

    # Echogenic foci (positions in the unit disk of the nodule, same for every view).
    kind = n.features["foci"]
    ca, sa = math.cos(angle), math.sin(angle)
    if kind == "peripheral":
        d0, d1 = math.cos(n.rim_arc[0]), math.sin(n.rim_arc[0])
        cos_to_arc = (u * d0 + v * d1) / np.maximum(r, 1e-3)
        rim = ((rough > 1.0 - max(1.5, 0.8 * ppm) / radius_px) & hard
               & (cos_to_arc > math.cos(n.rim_arc[1])))
        np.maximum(canvas.echo[box], 0.95 * rim, out=canvas.echo[box])
        canvas.add_attenuation(box, (ATT_CALCIFICATION * 0.7 * mm_per_px) * rim)
    elif kind != "none" and len(n.focus_points):
        pts = n.focus_points
        px = cx + a * pts[:, 0] * ca - b * pts[:, 1] * sa
        py = cy + a * pts[:, 0] * sa + b * pts[:, 1] * ca
        for x, y, focus_size in zip(px, py, pts[:, 2]):
            if kind == "macro":
                rb = max(1.3, focus_size * radius_px)
                blob_res = ellipse_radius(x, y, rb, rb * 0.8, 0.0, size, pad=1.0)
                if blob_res is None:
                    continue
                blob_box, blob_r, _, _ = blob_res
                blob = soft_step((1.0 - blob_r) * rb, 1.0)
                np.maximum(canvas.echo[blob_box], ECHO_CALCIFICATION * blob,
                           out=canvas.echo[blob_box])
                canvas.add_attenuation(blob_box, (ATT_CALCIFICATION * mm_per_px) * blob)
            else:  # punctate foci / comet-tail heads: bright specks added after attenuation
                col, row = int(round(x)), int(round(y))
                if 0 <= row < size and 0 <= col < size:
                    canvas.late_artifacts.append(("dot", col, row, 0.0))
                    if kind == "comet_tail":
                        length = max(3.0, 0.35 * radius_px)
                        canvas.late_artifacts.append(("comet", col, row, length))
    return box, hard


def render_scene(canvas: Canvas, patient: Patient,
                 view: View) -> list[tuple[Nodule, tuple[Box, np.ndarray]]]:
    """Paint every tissue of the view, back to front, and the nodule and gland masks.

    Returns:
        (nodule, (box, hard mask)) for each nodule drawn on the image.
    """
    render_layers(canvas, patient, view)
    for muscle in patient.sternocleidomastoid:
        render_muscle(canvas, view, muscle, ECHO_MUSCLE, "streak", 0.45)
    for muscle in patient.longus_colli:
        render_muscle(canvas, view, muscle, 0.18, "streak", 0.4)
    render_vertebra(canvas, patient, view)
    render_gland(canvas, patient, view)
    render_esophagus(canvas, patient, view)
    render_trachea(canvas, patient, view)
    for vessel in patient.vessels:
        render_vessel(canvas, view, *vessel)
    drawn = []
    for nodule in patient.nodules:
        out = render_nodule(canvas, nodule, view)
        if out is not None:
            canvas.nodule[out[0]] |= out[1]
            drawn.append((nodule, out))
    canvas.gland |= canvas.nodule  # a nodule is part of the gland
    return drawn
