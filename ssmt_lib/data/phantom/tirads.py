"""ACR TI-RADS scoring of a thyroid nodule: the white paper's point tables, points and levels.

Tessler et al., "ACR Thyroid Imaging, Reporting and Data System (TI-RADS): White Paper of the ACR
TI-RADS Committee", J Am Coll Radiol 14:587-595, 2017. Points per feature:

    composition   cystic 0, spongiform 0, mixed cystic-solid 1, solid 2
    echogenicity  anechoic 0, hyper-/isoechoic 1, hypoechoic 2, very hypoechoic 3
    shape         wider-than-tall 0, taller-than-wide 3
    margin        smooth 0, ill-defined 0, lobulated/irregular 2, extra-thyroidal extension 3
    echogenic foci  none 0, comet-tail 0, macrocalcification 1, peripheral (rim) 2, punctate 3

A spongiform nodule scores 0 in total ("do not add further points for other categories"). The sum
gives the level (0-1 points TR1, 2 TR2, 3 TR3, 4-6 TR4, >= 7 TR5); each level has the malignancy
rate the white paper observed (``ACR_MALIGNANCY_RISK``), from which the phantom draws a nodule's
benign/malignant label. The phantom's feature names are the keys of ``FEATURE_POINTS``.
"""
from __future__ import annotations

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


def tirads_points(features: dict[str, str]) -> tuple[int, dict[str, int]]:
    """ACR TI-RADS points of one nodule.

    Args:
        features: {"composition", "echogenicity", "shape", "margin", "foci"} -> category name.

    Returns:
        (total points, points per feature). A spongiform nodule totals 0 (ACR rule).
    """
    per_feature = {}
    for name, table in FEATURE_POINTS.items():
        value = features[name]
        if value not in table:
            raise ValueError(f"unknown {name} {value!r}; choose one of {sorted(table)}")
        per_feature[name] = table[value]
    total = 0 if features["composition"] == "spongiform" else sum(per_feature.values())
    return total, per_feature


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
