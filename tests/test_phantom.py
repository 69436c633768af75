"""Tests for the built-in synthetic thyroid ultrasound generator (ssmt_lib.data.phantom)."""
from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from ssmt_lib.data import phantom as ph

S = 96  # small side keeps the distribution tests fast
CFG = ph.PhantomConfig(image_size=S)
N = 320


@pytest.fixture(scope="module")
def many() -> list[dict]:
    """N samples at S px with the auxiliary vessel mask, shared by the distribution tests."""
    return [ph.sample(i, seed=0, config=CFG, return_aux=True) for i in range(N)]


def _same(a: dict, b: dict) -> bool:
    return (np.array_equal(a["image"], b["image"]) and np.array_equal(a["nodule_mask"], b["nodule_mask"])
            and np.array_equal(a["gland_mask"], b["gland_mask"]) and a["nodules"] == b["nodules"])


def test_deterministic_and_index_dependent():
    a = ph.sample(7, seed=3, config=CFG)
    ph.sample(6, seed=3, config=CFG)  # a neighbour in between must not change anything
    b = ph.sample(7, seed=3, config=CFG)
    assert _same(a, b)
    # Caches (noise bank, patients) are pure: clearing them gives the same sample.
    ph.anatomy.patient_anatomy.cache_clear()
    ph.ultrasound.noise_bank.cache_clear()
    assert _same(a, ph.sample(7, seed=3, config=CFG))
    assert not np.array_equal(a["image"], ph.sample(8, seed=3, config=CFG)["image"])
    assert not np.array_equal(a["image"], ph.sample(7, seed=4, config=CFG)["image"])
    # The global numpy state is neither used nor touched.
    np.random.seed(0)
    before = np.random.random()
    np.random.seed(0)
    ph.sample(11, seed=3, config=CFG)
    assert np.random.random() == before


def test_shapes_dtypes_ranges(many):
    for s in many[:60]:
        assert s["image"].shape == (S, S) and s["image"].dtype == np.float32
        assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
        for key in ("nodule_mask", "gland_mask"):
            assert s[key].shape == (S, S) and s[key].dtype == np.uint8
            assert set(np.unique(s[key])) <= {0, 1}
        assert isinstance(s["size"], float) and s["size"] == float(s["nodule_mask"].mean())
        assert (s["size"] > 0) == bool(s["nodules"]) == (s["tirads_level"] > 0)
        assert s["gland_mask"].any()  # every view shows thyroid
        assert s["id"].startswith("phantom_s0_") and s["patient"].startswith("P")
    assert any(s["image"].std() > 0.05 for s in many[:10])


def test_nodules_inside_gland_vessels_outside(many):
    for s in many:
        nod, gland, vessel = s["nodule_mask"].astype(bool), s["gland_mask"].astype(bool), s["aux"]["vessel_mask"]
        assert not (nod & ~gland).any(), s["id"]
        assert vessel.any() or s["view"] == "nodule", s["id"]  # look-alikes are present
        assert not (vessel.astype(bool) & gland).any(), s["id"]
    # the same holds for the other scanner, whose overlays clear the borders
    cfg_b = dataclasses.replace(ph.PROFILES["scanner_b"], image_size=S)
    for i in range(40):
        s = ph.sample(i, 0, cfg_b, return_aux=True)
        assert not (s["nodule_mask"].astype(bool) & ~s["gland_mask"].astype(bool)).any()
        assert not (s["aux"]["vessel_mask"] & s["gland_mask"]).any()
        assert s["image"][0].max() == 0 and s["image"][-1].max() == 0  # black border rows
        assert s["gland_mask"][0].sum() == 0 and s["nodule_mask"][:, -1].sum() == 0  # no labels there


def test_nodules_are_placed_inside_their_lobe():
    """Stronger than the mask check (the gland mask includes the nodules by definition): the
    geometry itself keeps every nodule inside its lobe ellipse (ETE nodules: the deep half),
    clear of trachea, oesophagus and the other nodules."""
    cfg = ph.PhantomConfig()
    n_checked = 0
    for pt in range(400):
        p = ph.anatomy.patient_anatomy(5, pt, 3, 0.0, tuple(cfg.nodule_mm), tuple(cfg.malignancy_risk), "null")
        for n in p.nodules:
            others = [o for o in p.nodules if o is not n]
            assert ph.anatomy.nodule_fits(n, np.array([n.cx]), np.array([n.cy]), p, p.lobes[n.side], others)[0], pt
            n_checked += 1
    assert n_checked > 400


def test_size_distribution_covers_empty_tiny_large(many):
    sizes = np.array([s["size"] for s in many])
    empty, tiny, large = (sizes == 0).mean(), ((sizes > 0) & (sizes < 0.01)).sum(), (sizes > 0.3).sum()
    assert 0.05 <= empty <= 0.35
    assert tiny >= 10 and large >= 3, (tiny, large)
    counts = [len(s["nodules"]) for s in many]
    assert max(counts) >= 3 and 0 in counts and 1 in counts


def test_tirads_points_and_levels(many):
    assert [ph.tirads_level(p) for p in range(10)] == [1, 1, 2, 3, 4, 4, 4, 5, 5, 5]
    seen = {k: set() for k in ph.FEATURE_POINTS}
    for s in many:
        for n in s["nodules"]:
            feats = {k: n[k] for k in ph.FEATURE_POINTS}
            total, per = ph.tirads_points(feats)
            assert per == {k: ph.FEATURE_POINTS[k][n[k]] for k in ph.FEATURE_POINTS}
            expected = 0 if n["composition"] == "spongiform" else sum(per.values())
            assert n["points"] == total == expected and n["level"] == ph.tirads_level(total)
            for k in seen:
                seen[k].add(n[k])
        if s["nodules"]:
            assert s["tirads_points"] == max(n["points"] for n in s["nodules"])
            assert s["tirads_level"] == ph.tirads_level(s["tirads_points"])
            assert s["malignant"] == any(n["malignant"] for n in s["nodules"])
        else:
            assert s["tirads_points"] == 0 and s["tirads_level"] == 0 and not s["malignant"]
    for k, cats in seen.items():  # every ACR category occurs
        assert cats == set(ph.FEATURE_POINTS[k]), (k, cats)
    assert {0, 1, 4, 5} <= {s["tirads_level"] for s in many}
    # every level occurs among the nodules of a few hundred patients (anatomy only, no rendering)
    cfg = ph.PhantomConfig()
    levels = {n.tirads_level for pt in range(300)
              for n in ph.anatomy.patient_anatomy(1, pt, 3, 0.0, tuple(cfg.nodule_mm), tuple(cfg.malignancy_risk), "null").nodules}
    assert levels == {1, 2, 3, 4, 5}


def test_malignancy_follows_risk_table():
    always = dataclasses.replace(CFG, malignancy_risk=(1.0,) * 5, empty_fraction=0.0)
    never = dataclasses.replace(CFG, malignancy_risk=(0.0,) * 5, empty_fraction=0.0)
    assert all(ph.sample(i, 0, always)["malignant"] for i in range(0, 40, 4))
    assert not any(ph.sample(i, 0, never)["malignant"] for i in range(0, 40, 4))
    none = dataclasses.replace(CFG, max_nodules=0)
    s = ph.sample(3, 0, none)
    assert s["size"] == 0 and s["nodules"] == [] and not s["malignant"]


def test_views_share_patient_anatomy():
    cfg = dataclasses.replace(CFG, empty_fraction=0.0)
    views = [ph.sample(i, 0, cfg) for i in range(8)]
    assert [v["patient"] for v in views] == ["P000000"] * 4 + ["P000001"] * 4
    kinds = lambda v: sorted((n["composition"], n["echogenicity"], round(n["diameter_mm"], 6)) for n in v["nodules"])
    main = kinds(views[0])
    for v in views[1:4]:
        assert set(kinds(v)) <= set(main) or set(main) <= set(kinds(v))
        assert v["nodules"] and not np.array_equal(v["image"], views[0]["image"])
    assert kinds(views[4]) != main
    cfg2 = dataclasses.replace(CFG, views_per_patient=2)
    assert ph.sample(5, 0, cfg2)["patient"] == "P000002"


def test_overrides_render_the_requested_features():
    def mean_inside(s):
        m = s["nodule_mask"].astype(bool)
        return float(s["image"][m].mean())

    base = {"diameter_mm": 14.0, "foci": "none", "halo": False, "margin": "smooth"}
    for i in (0, 5, 9):
        bright = ph.sample(i, 0, CFG, nodule_overrides={**base, "composition": "solid", "echogenicity": "hyper_iso"})
        dark = ph.sample(i, 0, CFG, nodule_overrides={**base, "composition": "solid", "echogenicity": "very_hypo"})
        cyst = ph.sample(i, 0, CFG, nodule_overrides={**base, "composition": "cystic"})
        assert mean_inside(cyst) < mean_inside(dark) < mean_inside(bright)
        assert bright["nodules"][0]["echogenicity"] == "hyper_iso" and cyst["tirads_level"] == 1
    # Shape: taller-than-wide nodules are taller than wide in the mask, and vice versa.
    checked = 0
    for i in range(6):
        for shape in ("taller_than_wide", "wider_than_tall"):
            s = ph.sample(i, 0, CFG, nodule_overrides={"shape": shape, "margin": "smooth", "diameter_mm": 10.0})
            ys, xs = np.nonzero(s["nodule_mask"])
            h, w = np.ptp(ys) + 1, np.ptp(xs) + 1
            if 0 < ys.min() and ys.max() < S - 1 and 0 < xs.min() and xs.max() < S - 1:
                assert (h > w) if shape == "taller_than_wide" else (w > h), (i, shape, h, w)
                checked += 1
    assert checked >= 6
    two = ph.sample(2, 0, CFG, nodule_overrides=[{"composition": "cystic"}, {"foci": "macro"}])
    assert len(two["nodules"]) <= 2 and two["nodules"]
    g = ph.gallery(seed=0, config=CFG, feature="foci", diameter_mm=12.0)
    assert list(g) == list(ph.FOCI_POINTS) and all(v["nodules"][0]["foci"] == k for k, v in g.items())
    with pytest.raises(ValueError, match="colour"):
        ph.sample(0, 0, CFG, nodule_overrides={"colour": "red"})
    with pytest.raises(ValueError, match="echogenicity"):
        ph.sample(0, 0, CFG, nodule_overrides={"echogenicity": "bright"})


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="image_size"):
        ph.PhantomConfig(image_size=8)
    with pytest.raises(ValueError, match="empty_fraction"):
        ph.PhantomConfig(empty_fraction=1.5)
    with pytest.raises(ValueError, match="index"):
        ph.sample(-1)
    with pytest.raises(ValueError, match="seed"):
        ph.sample(0, seed=-2)
    with pytest.raises(TypeError, match="PhantomConfig"):
        ph.sample(0, config={"image_size": 64})
    assert {"default", "scanner_b"} <= set(ph.PROFILES)


def test_batch_stacks_samples():
    b = ph.batch([3, 1, 4], seed=2, config=CFG)
    assert b["image"].shape == (3, S, S) and b["image"].dtype == np.float32
    assert b["nodule_mask"].shape == (3, S, S) and b["gland_mask"].dtype == np.uint8
    assert b["size"].shape == (3,) and b["tirads_level"].shape == (3,) and b["malignant"].dtype == bool
    one = ph.sample(1, 2, CFG)
    assert np.array_equal(b["image"][1], one["image"]) and b["id"][1] == one["id"]
    assert b["patient"] == [ph.sample(i, 2, CFG)["patient"] for i in (3, 1, 4)]
    assert b["size"][1] == np.float32(one["size"]) and b["nodules"][1] == one["nodules"]
    assert ph.batch(2, config=CFG)["id"] == ["phantom_s0_000000", "phantom_s0_000001"]


def _meta(root):
    with open(root / "phantom-meta.csv") as fh:
        return list(csv.DictReader(fh))


def test_export_tn3k(tmp_path):
    cfg = ph.PhantomConfig(image_size=64)
    root = ph.export(tmp_path / "tn3k", "tn3k", n=48, seed=1, config=cfg)
    tv = sorted((root / "trainval-image").iterdir(), key=lambda p: int(p.stem))
    te = sorted((root / "test-image").iterdir(), key=lambda p: int(p.stem))
    assert len(tv) + len(te) == 48 and 0.1 <= len(te) / 48 <= 0.35
    assert [p.name for p in tv[:2]] == ["0000.jpg", "0001.jpg"]
    meta = _meta(root)
    by_file = {r["file"]: r for r in meta}
    for k, r in enumerate(meta[:12]):  # JPEG masks binarize back exactly at 127
        s = ph.sample(k, 1, cfg)
        mask = np.asarray(Image.open(root / r["file"].replace("-image", "-mask")))
        assert mask.shape == (64, 64) and np.array_equal(mask > 127, s["nodule_mask"].astype(bool))
        img = np.asarray(Image.open(root / r["file"]), dtype=np.float32) / 255
        assert np.abs(img - s["image"]).mean() < 0.03
    tv_pat = [by_file[f"trainval-image/{p.name}"]["patient"] for p in tv]
    te_pat = {by_file[f"test-image/{p.name}"]["patient"] for p in te}
    assert not set(tv_pat) & te_pat
    vals = []
    for f in range(5):
        split = json.loads((root / f"tn3k-trainval-fold{f}.json").read_text())
        train, val = split["train"], split["val"]
        assert sorted(train + val) == list(range(len(tv)))
        assert not {tv_pat[i] for i in train} & {tv_pat[i] for i in val}
        vals += val
    assert sorted(vals) == list(range(len(tv)))  # each trainval image validated once
    with pytest.raises(FileExistsError, match="trainval-image"):
        ph.export(root, "tn3k", n=8, seed=1, config=cfg)
    ph.export(root, "tn3k", n=8, seed=1, config=cfg, overwrite=True)
    assert sum(1 for _ in (root / "trainval-image").iterdir()) + sum(1 for _ in (root / "test-image").iterdir()) == 8


def test_export_tg3k_and_ddti(tmp_path):
    cfg = ph.PhantomConfig(image_size=64)
    root = ph.export(tmp_path / "tg3k", "tg3k", n=24, seed=2, config=cfg)
    files = sorted((root / "thyroid-image").iterdir(), key=lambda p: int(p.stem))
    split = json.loads((root / "tg3k-trainval.json").read_text())
    assert sorted(split["train"] + split["val"]) == list(range(24)) and split["val"]
    pats = [r["patient"] for r in _meta(root)]
    assert not {pats[i] for i in split["train"]} & {pats[i] for i in split["val"]}
    gm = np.asarray(Image.open(root / "thyroid-mask" / files[5].name)) > 127
    assert np.array_equal(gm, ph.sample(5, 2, cfg)["gland_mask"].astype(bool))
    root = ph.export(tmp_path / "ddti", "ddti", n=5, seed=2, config=cfg)
    assert sorted(p.name for p in (root / "image").iterdir()) == [f"{i}.PNG" for i in range(1, 6)]
    m = np.asarray(Image.open(root / "mask" / "3.PNG"))
    assert np.array_equal(m > 127, ph.sample(2, 2, cfg)["nodule_mask"].astype(bool))
    with pytest.raises(ValueError, match="layout"):
        ph.export(tmp_path / "x", "busi", n=3)
    with pytest.raises(ValueError, match="n must be"):
        ph.export(tmp_path / "y", "ddti", n=0)


def test_export_refusal_touches_nothing(tmp_path):
    """Without overwrite, a layout with one non-empty sub-folder is refused before any folder is
    created or emptied (all folders are checked first)."""
    (tmp_path / "test-mask").mkdir()
    (tmp_path / "test-mask" / "keep.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="test-mask"):
        ph.export(tmp_path, "tn3k", n=4, config=ph.PhantomConfig(image_size=64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test-mask"]
    assert (tmp_path / "test-mask" / "keep.jpg").read_bytes() == b"x"


def test_package_modules_share_only_public_names():
    """The phantom package's modules import each other's public names only (no ``_helper``), each
    opens with a docstring, and every name callers use is re-exported by the package."""
    import ast
    from pathlib import Path

    folder = Path(ph.__file__).parent
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{path.name} has no module docstring"
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ssmt_lib.data.phantom"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports private {private} from {node.module}"
    used = ("sample", "batch", "gallery", "export", "export_ddti_tirads", "PhantomConfig", "PROFILES",
            "tirads_points", "tirads_level", "FEATURE_POINTS", "SHAPE_POINTS", "FOCI_POINTS",
            "ACR_MALIGNANCY_RISK", "VIEW_KINDS", "OVERRIDE_KEYS", "ddti_tirads_category")
    assert set(used) <= set(ph.__all__) and all(hasattr(ph, name) for name in ph.__all__)
