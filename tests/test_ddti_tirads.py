"""DDTI original release (XML + TI-RADS): both layouts, vocabulary, known quirks, bad input, splits."""
from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ssmt_lib.data import DatasetError, build_dataset, phantom, read_image, read_mask
from ssmt_lib.data.ddti_tirads_xml import (
    SVG_TRUNCATED_AT,
    acr_points,
    canonical_descriptor,
    canonical_tirads,
    malignant_from_tirads,
    parse_case_xml,
    rasterize,
)

S = 32  # model input side in these tests
CFG = dataclasses.replace(phantom.PhantomConfig(), image_size=64)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddti_tirads")
    return {"folders": phantom.export_ddti_tirads(root / "folders", 32, seed=3, config=CFG),
            "flat": phantom.export_ddti_tirads(root / "flat", 32, seed=3, config=CFG, layout="flat")}


@pytest.fixture
def copy(exported, tmp_path) -> Path:
    """A writable copy of the folders layout."""
    return Path(shutil.copytree(exported["folders"], tmp_path / "copy"))


def _load(root, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = build_dataset("ddti_tirads", root=root, split=kw.pop("split", "all"), image_size=S, **kw)
    return ds, [str(w.message) for w in caught]


def _set_svg(xml: Path, image: int, text: str) -> None:
    """Replace the svg text of one image's mark (text written verbatim, XML-escaped by hand)."""
    body = xml.read_text()
    start = body.index(f"<image>{image}</image>")
    a, b = body.index("<svg>", start) + 5, body.index("</svg>", start)
    xml.write_text(body[:a] + text.replace("&", "&amp;").replace("<", "&lt;") + body[b:])


def _case_with_nodule(root: Path) -> tuple[str, int]:
    ds, _ = _load(root)
    r = next(r for r in ds.records if r.regions)
    return r.case, r.image_index


# ----------------------------------------------------------------------------- layouts


def test_both_layouts_load_identically(exported):
    a, wa = _load(exported["folders"])
    b, wb = _load(exported["flat"])
    assert (a.layout, b.layout) == ("folders", "flat") and not wa and not wb
    assert [r.id for r in a.records] == [r.id for r in b.records] and len(a) == 32
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert set(x) == set(y)
        for k in x:
            assert torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k], (i, k)


def test_polygons_match_the_exported_masks(exported):
    ds, _ = _load(exported["folders"])
    scores = []
    for r in ds.records:
        img = read_image(r.image)
        poly, mask = rasterize(r.regions, img.shape[1], img.shape[0]), read_mask(r.mask_file)
        if mask.any() or poly.any():
            scores.append(2 * (poly & mask).sum() / (poly.sum() + mask.sum()))
    assert len(scores) >= 8 and min(scores) > 0.97, scores


def test_items_carry_tirads_fields_and_collate(exported):
    ds, _ = _load(exported["folders"])
    batch = next(iter(DataLoader(ds, batch_size=len(ds))))
    assert batch["image"].shape == (len(ds), 3, S, S) and batch["nodule_mask"].shape == (len(ds), 1, S, S)
    labels = ds.labels()
    assert torch.equal(batch["malignant"], torch.as_tensor(labels))
    for i, r in enumerate(ds.records):
        assert batch["case"][i] == r.case == batch["patient"][i]
        assert batch["tirads"][i] == (r.tirads or "")
        assert labels[i] == (-1 if r.tirads is None else int(r.tirads in ("4a", "4b", "4c", "5")))
    assert {-1, 0, 1} <= set(labels.tolist())  # images without TI-RADS stay (segmentation only)
    assert set(ds.records[0].descriptors) == {"composition", "echogenicity", "margins", "calcifications"}


def test_instance_masks_one_per_region(exported):
    ds, _ = _load(exported["folders"])
    i = next(i for i, r in enumerate(ds.records) if r.regions)
    inst = ds.instance_masks(i)
    union = rasterize(ds.records[i].regions, inst.shape[2], inst.shape[1])
    assert inst.shape[0] == len(ds.records[i].regions) and np.array_equal(inst.max(0), union)


def test_splits_are_by_case_and_cover_everything(exported):
    cases = {s: {r.case for r in _load(exported["folders"], split=s)[0].records} for s in ("train", "val", "test")}
    assert not (cases["train"] & cases["val"] or cases["train"] & cases["test"] or cases["val"] & cases["test"])
    every = {r.case for r in _load(exported["folders"])[0].records}
    assert cases["train"] | cases["val"] | cases["test"] == every


# ----------------------------------------------------------------------------- vocabulary


@pytest.mark.parametrize("field, spellings, canonical, points", [
    ("calcifications", ["microcalcification", "Microcalcifications", " micro calcifications "], "microcalcification", 3),
    ("calcifications", ["non", "None", "no"], "none", 0),
    ("margins", ["ill- defined", "ill defined", "Ill-Defined", "ill_defined"], "ill_defined", 0),
    ("margins", ["well defined", "smooth"], "well_defined", 0),
    ("echogenicity", ["marked hypoechogenicity", "very hypoechoic"], "very_hypoechoic", 3),
    ("composition", ["predominantly solid", "Predominantly  Solid"], "predominantly_solid", 1),
])
def test_spelling_variants_map_to_one_value(field, spellings, canonical, points):
    from ssmt_lib.data.ddti_tirads_xml import VOCABULARY

    assert {canonical_descriptor(field, s) for s in spellings} == {(canonical, True)}
    assert VOCABULARY[field][canonical] == points


def test_unknown_and_empty_values_and_acr_points():
    assert canonical_descriptor("composition", "dense") == (None, False)  # unknown: reported, not guessed
    assert canonical_descriptor("composition", "  ") == (None, True)  # empty: missing, nothing to report
    assert canonical_tirads("4A") == ("4a", True) and canonical_tirads("6") == (None, False)
    assert canonical_tirads(None) == (None, True)
    assert [malignant_from_tirads(t) for t in ("2", "3", "4a", "4c", "5", None)] == [False, False, True, True, True, None]
    d = {"composition": "solid", "echogenicity": "hypoechoic", "margins": "spiculated", "calcifications": "microcalcification"}
    assert acr_points(d) == 2 + 2 + 2 + 3
    assert acr_points({**d, "composition": "spongiform"}) == 0
    assert acr_points({**d, "margins": None}) is None


def test_unknown_value_is_reported_in_a_warning(copy):
    xml = copy / "annotations" / "1.xml"
    xml.write_text(xml.read_text().replace("<composition />", "<composition>dense</composition>")
                   .replace("<composition>solid</composition>", "<composition>dense</composition>"))
    ds, messages = _load(copy)
    assert ds.unknown_values == {"composition": {"dense": ["1"]}}
    assert any("outside the vocabulary" in m and "composition='dense'" in m and "cases 1" in m for m in messages)
    assert all(r.descriptors["composition"] is None for r in ds.records if r.case == "1")


# ----------------------------------------------------------------------------- known quirks


@pytest.mark.parametrize("quirk", ["empty", "truncated"])
def test_quirk_uses_masks_folder_when_it_has_the_mask(copy, quirk):
    case, k = _case_with_nodule(copy)
    xml = copy / "annotations" / f"{case}.xml"
    regions = [{"points": [{"x": x, "y": y} for x, y in poly], "regionType": "freehand"}
               for poly in parse_case_xml(xml).marks[k].regions]
    text = "" if quirk == "empty" else json.dumps(regions * 40)[:SVG_TRUNCATED_AT]  # the release's cut
    _set_svg(xml, k, text)
    ds, messages = _load(copy)
    r = next(r for r in ds.records if (r.case, r.image_index) == (case, k))
    assert r.svg_status == quirk and r.mask_source == "masks"
    item = ds[ds.records.index(r)]
    assert item["has_nodule"] and item["nodule_mask"].sum() > 0
    assert len([m for m in messages if "known quirks" in m]) == 1
    assert f"cases {case}" in next(m for m in messages if "known quirks" in m)


@pytest.mark.parametrize("quirk", ["empty", "truncated"])
def test_quirk_without_mask_keeps_the_image_for_classification(copy, quirk):
    case, k = _case_with_nodule(copy)
    xml = copy / "annotations" / f"{case}.xml"
    _set_svg(xml, k, "" if quirk == "empty" else ('[{"points": [' + '{"x": 10, "y": 12}, ' * 200)[:SVG_TRUNCATED_AT])
    (copy / "masks" / f"{case}_{k}_mask.png").unlink()
    ds, messages = _load(copy)
    i = next(i for i, r in enumerate(ds.records) if (r.case, r.image_index) == (case, k))
    item = ds[i]
    assert not item["has_nodule"] and item["size"] == 0.0 and item["malignant"] == ds.labels()[i]
    (message,) = [m for m in messages if "known quirks" in m]
    assert f"cases {case}" in message and "1 image(s) have no nodule mask" in message
    assert ds.quirks[quirk]["images"] == 1 and ds.quirks["without_mask"] == 1


def test_degenerate_region_is_dropped_and_reported(copy):
    case, k = _case_with_nodule(copy)
    xml = copy / "annotations" / f"{case}.xml"
    regions = [{"points": [{"x": x, "y": y} for x, y in poly]} for poly in parse_case_xml(xml).marks[k].regions]
    _set_svg(xml, k, json.dumps(regions + [{"points": [{"x": 1, "y": 1}, {"x": 2, "y": 2}]}]))
    ds, messages = _load(copy)
    assert ds.quirks["dropped_regions"] == {"regions": 1, "cases": [case]}
    assert any("region(s) with < 3 points dropped" in m for m in messages)


def test_empty_list_is_an_annotated_image_without_nodule(copy):
    case, k = _case_with_nodule(copy)
    _set_svg(copy / "annotations" / f"{case}.xml", k, "[]")
    shutil.rmtree(copy / "masks")
    ds, messages = _load(copy)
    i = next(i for i, r in enumerate(ds.records) if (r.case, r.image_index) == (case, k))
    assert ds[i]["has_nodule"] and ds[i]["nodule_mask"].sum() == 0 and not messages


# ----------------------------------------------------------------------------- bad input


def test_unparseable_xml_names_the_file_or_is_skipped(copy):
    bad = copy / "annotations" / "2.xml"
    bad.write_text("<case><number>2</number><mark>")  # cut off
    with pytest.raises(DatasetError, match=r"cannot parse XML file .*2\.xml") as err:
        _load(copy)
    assert err.value.path == str(bad)
    ds, messages = _load(copy, skip_bad=True)
    assert "2" not in {r.case for r in ds.records}
    reasons = [why for _, why in ds.skipped]
    assert any("cannot parse XML" in w for w in reasons)  # and its images, which no XML names now:
    assert sum("is named by no case XML" in w for w in reasons) == len(list((copy / "images").glob("2_*.jpg")))
    assert any("skipped" in m for m in messages)


def test_mark_naming_a_missing_image(copy):
    (copy / "images" / "3_2.jpg").unlink()
    (copy / "masks" / "3_2_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"mark for image 2 in .*3\.xml names a missing image: no 3_2\.jpg"):
        _load(copy)
    ds, _ = _load(copy, skip_bad=True)
    assert ds.num_skipped == 1 and "3_2" not in {f"{r.case}_{r.image_index}" for r in ds.records}


def test_image_no_xml_names(copy):
    shutil.copy(copy / "images" / "1_1.jpg", copy / "images" / "99_1.jpg")
    with pytest.raises(DatasetError, match=r"image .*99_1\.jpg is named by no case XML \(no mark of case '99'"):
        _load(copy)
    shutil.move(copy / "images" / "99_1.jpg", copy / "images" / "scan.jpg")
    with pytest.raises(DatasetError, match=r"scan\.jpg is named by no case XML \(its name is not \{case\}_\{k\}\)"):
        _load(copy)


def test_malformed_short_svg_is_an_error_not_a_quirk(copy):
    case, k = _case_with_nodule(copy)
    _set_svg(copy / "annotations" / f"{case}.xml", k, '[{"points": [{"x": 1, "y"')
    with pytest.raises(DatasetError, match=rf"cannot parse the svg JSON of mark .* in .*{case}\.xml .*not the "
                                           rf"{SVG_TRUNCATED_AT}-character truncation"):
        _load(copy)


def test_mask_without_image_and_bad_mark(copy):
    shutil.copy(copy / "masks" / "1_1_mask.png", copy / "masks" / "77_1_mask.png")
    with pytest.raises(DatasetError, match=r"mask .*77_1_mask\.png has no image 77_1"):
        _load(copy)
    (copy / "masks" / "77_1_mask.png").unlink()
    xml = copy / "annotations" / "1.xml"
    xml.write_text(xml.read_text().replace("<image>1</image>", "<image>first</image>", 1))
    with pytest.raises(DatasetError, match=r"mark 0 in .*1\.xml has no integer <image> \(got 'first'\)"):
        _load(copy)


def test_layout_errors(copy, tmp_path):
    shutil.copy(copy / "annotations" / "1.xml", copy / "1.xml")
    with pytest.raises(DatasetError, match="both case XML files and annotations/"):
        _load(copy)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no DDTI case XML files"):
        _load(empty)
    with pytest.raises(ValueError, match="option layout"):
        _load(copy, layout="nested")
    with pytest.raises(ValueError, match="root is required"):
        build_dataset("ddti_tirads")
