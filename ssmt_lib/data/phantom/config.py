"""The phantom's settings: one ``PhantomConfig`` is a scanner profile plus the case mix.

The scanner fields (speckle, gain, attenuation, focus, gamma, overlays, field of view) change how
the same anatomy looks, so a second profile ("scanner_b" in ``PROFILES``) gives a domain shift
without new anatomy; the case-mix fields (nodule count, size, empty share, views per patient)
change what is scanned. Change fields with ``dataclasses.replace``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ssmt_lib.data.phantom.tirads import ACR_MALIGNANCY_RISK


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
            "nodule_mm": (len(self.nodule_mm) == 2
                          and 1.0 <= self.nodule_mm[0] <= self.nodule_mm[1] <= 45.0),
            "views_per_patient": (isinstance(self.views_per_patient, int)
                                  and self.views_per_patient >= 1),
            "view_mix": (len(self.view_mix) == 3 and min(self.view_mix) >= 0
                         and sum(self.view_mix) > 0),
            "tilt_deg": 0 <= self.tilt_deg <= 15,
            "malignancy_risk": (len(self.malignancy_risk) == 5
                                and all(0 <= p <= 1 for p in self.malignancy_risk)),
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
