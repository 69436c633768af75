"""Radiomics target vs phantom nodules whose TI-RADS features are forced (phantom.sample overrides)."""
import math

import numpy as np
import pytest

from ssmt_lib.data import phantom
from ssmt_lib.radiomics import FEATURE_NAMES, Standardizer, feature_vector, tirads_radiomics

CFG = phantom.PhantomConfig(image_size=128)
SOLID = {"composition": "solid", "echogenicity": "hypo", "shape": "wider_than_tall", "margin": "smooth",
         "foci": "none", "diameter_mm": 16}


def feats(index: int = 0, **over) -> dict:
    s = phantom.sample(index, seed=1, config=CFG, nodule_overrides=[{**SOLID, **over}])  # one nodule
    return tirads_radiomics(s["image"], s["nodule_mask"])


@pytest.mark.parametrize("index", [0, 13])
def test_composition_and_echogenicity(index):
    cyst = feats(index, composition="cystic", echogenicity="anechoic")
    solid = feats(index, echogenicity="hyper_iso")
    assert cyst["composition_anechoic_share"] > 0.7 > 0.05 > solid["composition_anechoic_share"]
    assert cyst["composition_cystic_components"] >= 1 and solid["composition_cystic_components"] == 0
    assert cyst["echogenicity_ratio"] < 0.3 < 0.8 < solid["echogenicity_ratio"]
    very = feats(index, echogenicity="very_hypo")
    hypo = feats(index, echogenicity="hypo")
    assert very["echogenicity_ratio"] < hypo["echogenicity_ratio"] < solid["echogenicity_ratio"]
    assert very["echogenicity_very_dark_share"] > hypo["echogenicity_very_dark_share"]


@pytest.mark.parametrize("index", [0, 13, 40])
def test_shape_taller_than_wide(index):
    assert feats(index, shape="taller_than_wide")["shape_taller_than_wide"] > 1.0
    assert feats(index, shape="wider_than_tall")["shape_taller_than_wide"] < 1.0


@pytest.mark.parametrize("index", [13, 40, 77])
def test_margin(index):
    smooth, lobulated = feats(index), feats(index, margin="lobulated_irregular")
    assert smooth["margin_circularity"] > lobulated["margin_circularity"]
    assert smooth["margin_roughness"] < lobulated["margin_roughness"]
    assert smooth["margin_solidity"] >= lobulated["margin_solidity"]
    assert 0 < lobulated["margin_convexity"] <= smooth["margin_convexity"] <= 1.05
    sharp, blurred = feats(index), feats(index, blurred=True)
    assert sharp["margin_gradient_sharpness"] > blurred["margin_gradient_sharpness"]


@pytest.mark.parametrize("index", [0, 13, 40])
def test_punctate_foci(index):
    none, punctate = feats(index), feats(index, foci="punctate")
    assert punctate["foci_count"] > none["foci_count"] + 2
    assert punctate["foci_area_share"] > none["foci_area_share"]


def test_vector_empty_mask_and_bad_input():
    s = phantom.sample(0, seed=1, config=CFG, nodule_overrides=[SOLID])
    v = feature_vector(s["image"], s["nodule_mask"])
    assert v.shape == (len(FEATURE_NAMES),) and np.isfinite(v).all()
    assert np.isnan(feature_vector(s["image"], np.zeros_like(s["nodule_mask"]))).all()
    u8 = (s["image"] * 255).astype(np.uint8)  # uint8 images are read as /255
    assert math.isclose(tirads_radiomics(u8, s["nodule_mask"])["shape_taller_than_wide"],
                        tirads_radiomics(s["image"], s["nodule_mask"])["shape_taller_than_wide"])
    with pytest.raises(ValueError, match="one size"):
        tirads_radiomics(s["image"], s["nodule_mask"][:10])
    with pytest.raises(ValueError, match="unknown feature"):
        feature_vector(s["image"], s["nodule_mask"], names=("shape",))


def test_standardizer():
    rows = np.array([[1.0, 5.0], [3.0, 5.0], [np.nan, 1.0]])
    z = Standardizer(rows)(rows)
    assert np.allclose(z[:2, 0], [-1, 1]) and np.allclose(z[:2, 1], 0) and np.isnan(z[2, 0])
    with pytest.raises(ValueError, match=">= 2 rows"):
        Standardizer(rows[2:])
