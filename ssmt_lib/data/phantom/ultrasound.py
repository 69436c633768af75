"""How the phantom forms a B-mode image: tissue constants, noise banks, the canvas, transmission.

Physics-flavoured, and cheap (one pass per step over the image, everything else in bounding
boxes). The image is

    echo level map x multiplicative speckle x transmission x depth gain (+ late artefacts),

where speckle is the magnitude of a complex Gaussian field filtered with an anisotropic
point-spread function (Rayleigh statistics, laterally elongated grains) and transmission is
``exp(-cumsum(alpha) along depth)``: fluid has a lower and calcification, air and bone a much
higher attenuation than tissue, so posterior enhancement and acoustic shadows come out of the same
sum. The noise fields are a cached bank (per image size and scanner profile) from which each
sample cuts a window at a random offset: no filtering per sample, > 200 images/s at 224 px on one
core. Artefacts that attenuation must not dim (tracheal reverberations, echogenic specks, comet
tails) are queued on the canvas and added after it; scanner overlays come last.

What each tissue looks like is drawn onto the canvas by ``render``; this module is the scanner.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:  # only for type hints: anatomy imports this module's constants
    from ssmt_lib.data.phantom.anatomy import View
    from ssmt_lib.data.phantom.config import PhantomConfig

# Echo levels (display units before speckle; the gland is drawn per patient around 0.58).
ECHO_SKIN, ECHO_FAT, ECHO_MUSCLE, ECHO_DEEP, ECHO_FLUID, ECHO_CALCIFICATION = (
    0.55, 0.30, 0.20, 0.27, 0.02, 0.97)
# Attenuation deviations from soft tissue, nepers per mm (TGC compensates plain tissue). EDGE is
# the refraction shadow below a vessel's curved wall.
ATT_FLUID, ATT_BLOOD, ATT_CALCIFICATION, ATT_AIR, ATT_BONE, ATT_EDGE = (
    -0.035, -0.02, 1.6, 3.0, 0.8, 0.15)
NOISE_BANK_SEED = 20240531  # the noise banks are fixed; samples differ by where they cut them
GAMMA_LEVELS = 4096  # entries of the display-gamma lookup table


@functools.lru_cache(maxsize=None)
def pixel_centres(n: int) -> np.ndarray:
    """Pixel-centre coordinates 0..n-1 (float32), shared by every sample.

    Args:
        n: number of pixels.
    """
    return np.arange(n, dtype=np.float32)


def _normal_field(rng: np.random.Generator, n: int, sigma: tuple[float, float]) -> np.ndarray:
    """Periodic Gaussian-correlated noise, zero mean, unit std, clipped to +-2.5."""
    f = ndimage.gaussian_filter(rng.standard_normal((n, n)).astype(np.float32), sigma, mode="wrap")
    f = (f - f.mean()) / f.std()
    return np.clip(f, -2.5, 2.5).astype(np.float32)


@dataclass
class NoiseBank:
    """Noise fields twice the image side, (2 * size, 2 * size) each."""

    speckle: np.ndarray  # speckle x mild tissue heterogeneity, mean ~1
    fine: np.ndarray  # fine granular texture (gland, nodules), unit std
    coarse: np.ndarray  # coarse texture (lobulation, heterogeneity), unit std
    streak: np.ndarray  # laterally elongated texture (muscle striations, fat septa), unit std


NOISE_FIELDS = ("speckle", "fine", "coarse", "streak")  # order of the window offsets per sample


@functools.lru_cache(maxsize=8)
def noise_bank(size: int, speckle: bool, speckle_size: float, contrast: float) -> NoiseBank:
    """The scanner profile's noise fields; a sample cuts (size, size) windows at random offsets.

    Args:
        size: image side (pixels); grain sizes scale with size / 224.
        speckle: False gives a speckle field of ones (the "clean" profile).
        speckle_size: speckle correlation length multiplier.
        contrast: speckle contrast after log compression.
    """
    rng = np.random.default_rng(NOISE_BANK_SEED)
    n, scale = 2 * size, size / 224.0
    coarse = _normal_field(rng, n, (5.0 * scale, 5.0 * scale))
    if speckle:
        # Speckle = |PSF * complex scatterers|: Rayleigh amplitude; the PSF is wider laterally.
        psf_sigma = (0.55 * scale * speckle_size, 1.25 * scale * speckle_size)
        real = ndimage.gaussian_filter(rng.standard_normal((n, n)).astype(np.float32), psf_sigma,
                                       mode="wrap")
        imag = ndimage.gaussian_filter(rng.standard_normal((n, n)).astype(np.float32), psf_sigma,
                                       mode="wrap")
        amplitude = np.hypot(real, imag)
        speckle_field = np.clip(1.0 + contrast * (amplitude / amplitude.mean() - 1.0), 0.03, None)
    else:
        speckle_field = np.ones((n, n), np.float32)
    return NoiseBank(
        speckle=(speckle_field * (1.0 + 0.12 * coarse)).astype(np.float32),
        fine=_normal_field(rng, n, (1.3 * scale, 1.6 * scale)),
        coarse=coarse,
        streak=_normal_field(rng, n, (0.6 * scale, 6.0 * scale)),
    )


@functools.lru_cache(maxsize=32)
def depth_profile(size: int, attenuation: float, focus: float, gain: float) -> np.ndarray:
    """Per-row gain: overall gain, residual attenuation, mild transmit-focus brightening.

    Args:
        size: image side (rows).
        attenuation: the bottom row's gain is exp(-attenuation) (before the focus bump).
        focus: focus depth as a fraction of the image depth.
        gain: overall gain.

    Returns:
        (size, 1) float32.
    """
    z = pixel_centres(size) / size
    profile = gain * np.exp(-attenuation * z) * (1.0 + 0.15 * np.exp(-(((z - focus) / 0.15) ** 2)))
    return profile.astype(np.float32)[:, None]  # (S, 1)


@functools.lru_cache(maxsize=8)
def gamma_lut(gamma: float) -> np.ndarray:
    """x ** gamma on ``GAMMA_LEVELS`` levels of [0, 1] (a lookup is cheaper than np.power).

    Args:
        gamma: display gamma.
    """
    return (np.linspace(0.0, 1.0, GAMMA_LEVELS, dtype=np.float64) ** gamma).astype(np.float32)


# ---------------------------------------------------------------------------- rasterisation

Box = tuple[slice, slice]  # (rows, cols) of a bounding box


def clipped_box(cx: float, cy: float, half_width: float, half_height: float,
                size: int) -> Box | None:
    """Clipped (rows, cols) slices around a centre, or None if off-image.

    Args:
        cx, cy: centre (column, row) in pixels.
        half_width, half_height: half extents in pixels.
        size: image side.
    """
    x0, x1 = max(int(cx - half_width), 0), min(int(cx + half_width) + 2, size)
    y0, y1 = max(int(cy - half_height), 0), min(int(cy + half_height) + 2, size)
    if x0 >= x1 or y0 >= y1:
        return None
    return slice(y0, y1), slice(x0, x1)


def ellipse_radius(cx: float, cy: float, a: float, b: float, angle: float, size: int,
                   pad: float = 2.0):
    """Normalised radius of a rotated ellipse over its bounding box (pixel units).

    Args:
        cx, cy: centre (column, row); a, b: semi-axes; angle: rotation (rad); size: image side;
        pad: extra pixels around the bounding box.

    Returns:
        (box, r, u, v): box = (rows, cols) slices; r = sqrt(u^2 + v^2), 1 on the outline; u, v =
        coordinates in the ellipse frame divided by the semi-axes; or None if off-image.
    """
    c, s = math.cos(angle), math.sin(angle)
    half_width = math.sqrt((a * c) ** 2 + (b * s) ** 2) + pad
    half_height = math.sqrt((a * s) ** 2 + (b * c) ** 2) + pad
    box = clipped_box(cx, cy, half_width, half_height, size)
    if box is None:
        return None
    coords = pixel_centres(size)
    dx = (coords[box[1]] - cx)[None, :]  # (1, w)
    dy = (coords[box[0]] - cy)[:, None]  # (h, 1)
    u = dx * (c / a) + dy * (s / a)  # (h, w)
    v = dy * (c / b) - dx * (s / b)  # (h, w)
    return box, np.sqrt(u * u + v * v), u, v


def soft_step(z: np.ndarray, width: float) -> np.ndarray:
    """Soft step 0 -> 1 around z = 0 over ``width`` (a clipped ramp: cheaper than a sigmoid).

    Args:
        z: signed distance (pixels), > 0 inside.
        width: ramp width (pixels).
    """
    return np.clip(z * (1.0 / width) + 0.5, 0.0, 1.0)


class Canvas:
    """Per-sample render state: echo map, attenuation map (nepers per pixel), label masks, noise
    windows and the artefacts queued for after attenuation.

    Args:
        size: image side.
        bank: the profile's noise bank.
        offsets: 8 window offsets into the bank, (row, col) per field of ``NOISE_FIELDS``.
        mm_per_px: millimetres per pixel of this view.
    """

    def __init__(self, size: int, bank: NoiseBank, offsets: np.ndarray, mm_per_px: float):
        self.size, self.mm_per_px = size, mm_per_px
        self.echo = np.empty((size, size), np.float32)
        self.attenuation = np.zeros((size, size), np.float32)
        self.gland = np.zeros((size, size), bool)
        self.nodule = np.zeros((size, size), bool)
        self.vessel = np.zeros((size, size), bool)
        o = [int(x) for x in offsets]
        self.fields = {name: getattr(bank, name)[o[2 * i]:o[2 * i] + size,
                                                 o[2 * i + 1]:o[2 * i + 1] + size]
                       for i, name in enumerate(NOISE_FIELDS)}
        # ("reverb", x, y, radius), ("dot", col, row, 0) or ("comet", col, row, length); in order
        self.late_artifacts: list[tuple] = []
        # First row and column span where attenuation != 0: the depth integral covers only these.
        self.attenuated_from_row, self.attenuated_cols = size, (size, 0)

    def noise(self, name: str, box: Box) -> np.ndarray:
        """Window of a noise field (a name in ``NOISE_FIELDS``) over ``box``."""
        return self.fields[name][box]

    def add_attenuation(self, box: Box, alpha: np.ndarray | float) -> None:
        """Add attenuation over ``box`` and grow the region that needs the depth integral."""
        self.attenuation[box] += alpha
        rows, cols = box
        self.attenuated_from_row = min(self.attenuated_from_row, rows.start)
        self.attenuated_cols = (min(self.attenuated_cols[0], cols.start),
                                max(self.attenuated_cols[1], cols.stop))

    def paint(self, box: Box, weight: np.ndarray, level: np.ndarray | float) -> None:
        """Blend ``level`` into the echo map with soft mask ``weight`` (both over ``box``)."""
        echo = self.echo[box]
        echo += (level - echo) * weight


def form_image(canvas: Canvas, view: View, config: PhantomConfig) -> np.ndarray:
    """Echo x transmission x speckle x depth gain, then late artefacts, clipping and gamma.

    Args:
        canvas: the drawn canvas (its echo map is used in place).
        view: the view (for the skin row of the reverberations).
        config: scanner profile.

    Returns:
        (size, size) float32 image in [0, 1].
    """
    size, image = canvas.size, canvas.echo
    if canvas.attenuated_from_row < size:  # exp(-integral of alpha over depth), where alpha != 0
        region = (slice(canvas.attenuated_from_row, size), slice(*canvas.attenuated_cols))
        alpha = canvas.attenuation[region]
        transmission = np.cumsum(alpha, axis=0)
        transmission -= 0.5 * alpha  # half-exclusive: a reflector is not hidden by its own shadow
        np.exp(-transmission, out=transmission)
        image[region] *= transmission
    image += 0.03  # noise floor: shadows are dark, not empty
    image *= canvas.fields["speckle"]
    image *= depth_profile(size, float(config.attenuation), float(config.focus_depth),
                           float(config.gain))
    add_late_artifacts(canvas, image, view)
    np.clip(image, 0.0, 1.0, out=image)
    if config.gamma != 1.0:
        image = gamma_lut(float(config.gamma))[(image * 4095.0 + 0.5).astype(np.int32)]
    return image


def add_late_artifacts(canvas: Canvas, image: np.ndarray, view: View) -> None:
    """Artefacts added after attenuation: tracheal reverberations, echogenic specks, comet tails.

    Args:
        canvas: holds the queue ``late_artifacts``.
        image: (size, size) image, changed in place.
        view: the view (skin row).
    """
    size = canvas.size
    for item in canvas.late_artifacts:
        if item[0] == "reverb":
            _, xc, yc, radius = item
            c0, c1 = max(int(xc - 0.85 * radius), 0), min(int(xc + 0.85 * radius) + 1, size)
            if c0 >= c1:
                continue
            dx = pixel_centres(size)[c0:c1] - xc
            yi = yc - np.sqrt(np.maximum(radius * radius - dx * dx, 0.0))  # (w,) interface row
            top = -view.y0 * view.px_per_mm  # skin row
            d0 = np.maximum(yi - top, 2.0)  # (w,) probe-to-interface distance
            r0 = max(int(1.5 * d0.min() + top), 0)
            r1 = min(int(4.5 * d0.max() + top) + 1, size)
            if r0 >= r1:
                continue
            rows = pixel_centres(size)[r0:r1, None]  # (h, 1)
            phase = (rows - top) * (1.0 / d0)[None, :]  # (h, w) multiples of the distance
            ring = np.clip(1.0 - np.abs(phase - np.round(phase))
                           * (d0[None, :] / max(1.0, 0.02 * size)), 0, None)
            fade = 0.35 * np.cos(np.clip(dx / radius, -1, 1) * 1.3)[None, :] ** 2  # (1, w) lateral
            image[r0:r1, c0:c1] += ring * fade * np.exp(-0.5 * (phase - 1.0)) * (phase > 1.5)
        elif item[0] == "dot":
            _, col, row, _ = item
            image[row:row + 2, col:col + 2] += 0.7  # ~0.5 mm speck
        elif item[0] == "comet":
            _, col, row, length = item
            r1 = min(size, row + int(length) + 1)
            if row + 1 < r1:
                tail = 0.8 * np.linspace(1.0, 0.1, r1 - row - 1, dtype=np.float32)
                image[row + 1:r1, col] += tail
                if col + 1 < size:
                    image[row + 1:r1, col + 1] += 0.4 * tail


def add_scanner_overlays(image: np.ndarray, masks: list[np.ndarray], view: View,
                         rng: np.random.Generator) -> None:
    """Scanner overlays: black borders (labels cleared there too), depth ticks, focus marker,
    text-like glyph strings.

    Args:
        image: (S, S) image, changed in place.
        masks: label masks cleared under the borders, changed in place.
        view: the view (depth scale).
        rng: the view's stream (glyphs).
    """
    S = image.shape[0]
    top, bottom, left, right = int(0.08 * S), int(0.03 * S), int(0.05 * S), int(0.09 * S)
    for arr in [image] + masks:
        arr[:top], arr[S - bottom:], arr[:, :left], arr[:, S - right:] = 0, 0, 0, 0
    tick, long, short = S - right + 1, max(2, right // 3), max(1, right // 6)
    for mm in np.arange(5.0, view.width, 5.0):  # depth scale: long ticks every cm
        row = int((mm - view.y0) * view.px_per_mm)
        if top <= row < S - bottom:
            image[row, tick:tick + (long if mm % 10 == 0 else short)] = 0.85
    focus_row, focus_col = int(top + 0.45 * (S - top - bottom)), min(tick + long + 1, S - 3)
    for k in range(3):  # focus marker (a small triangle)
        image[focus_row - k:focus_row + k + 1, focus_col + k] = 0.9
    # Text-like marks: one line of random 3x5 glyphs (4 columns per slot, some slots blank).
    cell = max(1, S // 150)  # glyph cell size in pixels
    slots = max(1, int((S - left - right) * (0.3 + 0.4 * rng.random())) // (4 * cell))
    bits = rng.random((5, slots, 4)) < 0.55  # (5, slots, 4)
    bits[:, :, 3] = False  # spacing column
    bits[:, rng.random(slots) < 0.3] = False  # word gaps
    line = bits.reshape(5, slots * 4).repeat(cell, 0).repeat(cell, 1)  # (5c, 4c*slots)
    y0 = max(1, top // 2 - line.shape[0] // 2)
    height = min(line.shape[0], top - y0)
    if height > 0:
        image[y0:y0 + height, left:left + line.shape[1]] = 0.8 * line[:height]
