"""DDTI's case XML files: TI-RADS descriptors, nodule polygons, and their one vocabulary.

Pedraza, Vargas, Narvaez, Duran, Munoz, Romero, "An open access thyroid ultrasound image database"
(SPIE 10th International Symposium on Medical Information Processing and Analysis, 2015). The
publishers release one XML per case beside its JPEGs; ``ddti_tirads`` builds the dataset from the
:class:`CaseAnnotation` this module reads (:func:`parse_case_xml`).

The XML of case ``c``: ``<case><number/><age/><sex/><composition/><echogenicity/><margins/>
<calcifications/><tirads/><reportbacaf/><reporteco/><mark><image>k</image><svg>JSON</svg></mark>...
</case>``; image ``k`` of the case is the file ``c_k.jpg``; the svg text is a JSON list of regions
``{"points": [{"x": .., "y": ..}, ...], "regionType": "freehand"}``, one per nodule. The nodule mask
is the union of the region polygons, rasterised with PIL (:func:`rasterize`).

**Known quirks of the release.** An empty ``<svg>`` gives a mark of status "empty"; svg JSON cut off
at ``SVG_TRUNCATED_AT`` = 2,500 characters (the polygon list does not parse) gives "truncated";
regions with fewer than 3 points are dropped and counted (``Mark.dropped``). Other malformed svg
JSON raises :class:`~ssmt_lib.data.reading.DatasetError` naming the file.

**Vocabulary.** Descriptor spellings vary (``microcalcification``/``microcalcifications``,
``ill- defined``/``ill defined``, ``non`` for none); each is normalised (case, spaces, hyphens) and
mapped through ``ALIASES`` to one canonical name per field (``VOCABULARY``), which carries its ACR
TI-RADS points (Tessler et al., J Am Coll Radiol 14:587-595, 2017) where ACR has the category. A
value outside the vocabulary is kept raw, its canonical field is ``None`` and it is listed in
``CaseAnnotation.unknown``: never guessed. DDTI records no shape, so :func:`acr_points` (the sum of
the four recorded fields, 0 for spongiform) is a lower bound of the ACR total; ``None`` when a
field is missing or unknown.

**Label convention (TI-RADS-derived, not pathology).** ``malignant`` = TI-RADS 4a, 4b, 4c or 5;
benign = 2 or 3; ``None`` without a TI-RADS value (:func:`malignant_from_tirads`). DDTI's
categories are a radiologist's risk score, so a classifier trained on them learns the radiologist's
reading, not the biopsy; the dual-stage paper's labels (Thyroid-TNUS) are pathology labels.
"""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ssmt_lib.data.reading import DatasetError

SVG_TRUNCATED_AT = 2500  # the public release cut svg texts at this many characters
TIRADS_CATEGORIES = ("2", "3", "4a", "4b", "4c", "5")  # DDTI's TI-RADS values (plus empty)
MALIGNANT_TIRADS = frozenset({"4a", "4b", "4c", "5"})  # the documented TI-RADS-derived convention
DESCRIPTORS = ("composition", "echogenicity", "margins", "calcifications")

# Canonical value -> ACR TI-RADS points (2017 white paper). "predominantly solid/cystic" are ACR's
# "mixed cystic and solid" (1); lobulated, spiculated and irregular margins are ACR's "lobulated or
# irregular" (2); microcalcifications are ACR's punctate echogenic foci (3).
VOCABULARY: dict[str, dict[str, int]] = {
    "composition": {"cystic": 0, "spongiform": 0, "predominantly_cystic": 1, "predominantly_solid": 1,
                    "mixed": 1, "solid": 2},
    "echogenicity": {"anechoic": 0, "hyperechoic": 1, "isoechoic": 1, "hypoechoic": 2, "very_hypoechoic": 3},
    "margins": {"well_defined": 0, "ill_defined": 0, "microlobulated": 2, "macrolobulated": 2,
                "spiculated": 2, "irregular": 2, "extrathyroidal": 3},
    "calcifications": {"none": 0, "comet_tail": 0, "macrocalcification": 1, "peripheral": 2,
                       "microcalcification": 3},
}

# Normalised spelling (see ``normalize_text``) -> canonical value. Canonical names map to themselves.
ALIASES: dict[str, dict[str, str]] = {
    "composition": {"predominantly cystic": "predominantly_cystic", "predominantly solid": "predominantly_solid",
                    "mostly cystic": "predominantly_cystic", "mostly solid": "predominantly_solid",
                    "mixed cystic and solid": "mixed", "mixed cystic solid": "mixed"},
    "echogenicity": {"hyperechogenicity": "hyperechoic", "hyperechogenic": "hyperechoic",
                     "isoechogenicity": "isoechoic", "isoechogenic": "isoechoic",
                     "hypoechogenicity": "hypoechoic", "hypoechogenic": "hypoechoic",
                     "marked hypoechogenicity": "very_hypoechoic", "markedly hypoechoic": "very_hypoechoic",
                     "very hypoechoic": "very_hypoechoic", "anechogenic": "anechoic"},
    "margins": {"well defined": "well_defined", "smooth": "well_defined", "ill defined": "ill_defined",
                "micro lobulated": "microlobulated", "macro lobulated": "macrolobulated",
                "extrathyroidal extension": "extrathyroidal", "extra thyroidal extension": "extrathyroidal"},
    "calcifications": {"non": "none", "no": "none", "microcalcifications": "microcalcification",
                       "micro calcification": "microcalcification", "micro calcifications": "microcalcification",
                       "macrocalcifications": "macrocalcification", "macro calcification": "macrocalcification",
                       "macro calcifications": "macrocalcification", "rim": "peripheral",
                       "peripheral calcification": "peripheral", "peripheral calcifications": "peripheral",
                       "rim calcification": "peripheral", "rim calcifications": "peripheral",
                       "comet tail": "comet_tail", "comet tail artifact": "comet_tail",
                       "comet tail artifacts": "comet_tail"},
}
for _field, _values in VOCABULARY.items():  # canonical names (with spaces) are spellings too
    ALIASES[_field].update({v.replace("_", " "): v for v in _values})


def normalize_text(text: str) -> str:
    """Lower case, ``-``/``_`` as spaces, runs of spaces as one: ``"Ill- defined"`` -> ``"ill defined"``."""
    return re.sub(r"[\s_\-]+", " ", text.strip().lower()).strip()


def canonical_descriptor(field_name: str, raw: str | None) -> tuple[str | None, bool]:
    """Map one raw descriptor value to the vocabulary.

    Args:
        field_name: one of ``DESCRIPTORS``.
        raw: the XML text (``None`` or blank when the field is empty).

    Returns:
        ``(canonical or None, known)``: ``known`` is False only for a non-empty value outside the
        vocabulary (then canonical is None and the value must be reported).
    """
    if field_name not in VOCABULARY:
        raise ValueError(f"unknown descriptor field {field_name!r}; choose one of {DESCRIPTORS}")
    if raw is None or not raw.strip():
        return None, True
    value = ALIASES[field_name].get(normalize_text(raw))
    return value, value is not None


def canonical_tirads(raw: str | None) -> tuple[str | None, bool]:
    """``"4A"`` -> ``"4a"``; ``(None, True)`` when empty, ``(None, False)`` when not a DDTI category."""
    if raw is None or not raw.strip():
        return None, True
    value = normalize_text(raw).replace(" ", "")
    value = re.sub(r"^(tirads|tr)", "", value)
    return (value, True) if value in TIRADS_CATEGORIES else (None, False)


def malignant_from_tirads(tirads: str | None) -> bool | None:
    """The TI-RADS-derived label: 4a-5 malignant, 2-3 benign, None without a category."""
    return None if tirads is None else tirads in MALIGNANT_TIRADS


def acr_points(descriptors: dict[str, str | None]) -> int | None:
    """Sum of the ACR points of the four DDTI fields (spongiform: 0); None if any is missing."""
    if any(descriptors.get(f) is None for f in DESCRIPTORS):
        return None
    if descriptors["composition"] == "spongiform":
        return 0
    return sum(VOCABULARY[f][descriptors[f]] for f in DESCRIPTORS)


# ----------------------------------------------------------------------------- XML parsing

Polygon = list[tuple[float, float]]


@dataclass
class Mark:
    """One ``<mark>``: the regions of image ``image`` of a case."""

    image: int  # image number k (file {case}_{k}.jpg)
    regions: list[Polygon]  # usable polygons (>= 3 points), image pixel coordinates
    status: str  # "ok" (parsed; maybe no region), "empty" (<svg> empty), "truncated" (JSON cut off)
    dropped: int = 0  # regions with fewer than 3 points (dropped, reported)


@dataclass
class CaseAnnotation:
    """Everything one case XML says."""

    path: Path  # the XML file
    case: str  # case id (the XML file stem; images are named after it)
    number: str | None  # <number>
    age: int | None  # <age>, None when empty or not an integer
    sex: str | None  # <sex> upper-cased ("F", "M")
    descriptors: dict[str, str | None]  # canonical composition, echogenicity, margins, calcifications
    raw: dict[str, str | None]  # the raw text of every field above and of tirads
    tirads: str | None  # one of TIRADS_CATEGORIES or None
    reports: dict[str, str | None]  # <reportbacaf>, <reporteco>
    marks: dict[int, Mark] = field(default_factory=dict)  # by image number
    unknown: list[tuple[str, str]] = field(default_factory=list)  # (field, raw value) outside the vocabulary


def _text(root: ET.Element, tag: str) -> str | None:
    """The stripped text of ``root``'s child ``tag``; None when it is missing or blank."""
    el = root.find(tag)
    if el is None or el.text is None or not el.text.strip():
        return None
    return el.text.strip()


def _parse_regions(text: str | None, where: str, path: Path) -> Mark:
    """svg text -> Mark(image=-1, ...); the caller fills in the image number."""
    if text is None or not text.strip():
        return Mark(-1, [], "empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if len(text) >= SVG_TRUNCATED_AT:
            return Mark(-1, [], "truncated")
        raise DatasetError(f"cannot parse the svg JSON of {where} in {path} ({len(text)} characters, "
                           f"not the {SVG_TRUNCATED_AT}-character truncation of the release): {e}", path) from e
    if not isinstance(data, list):
        raise DatasetError(f"svg of {where} in {path} is not a JSON list of regions: {type(data).__name__}", path)
    regions, dropped = [], 0
    for r, region in enumerate(data):
        points = region.get("points") if isinstance(region, dict) else None
        if not isinstance(points, list):
            raise DatasetError(f"region {r} of {where} in {path} has no 'points' list", path)
        try:
            poly = [(float(p["x"]), float(p["y"])) for p in points]
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"region {r} of {where} in {path} has a point without numeric x, y: {e!r}", path) from e
        if len(poly) < 3:
            dropped += 1
        else:
            regions.append(poly)
    return Mark(-1, regions, "ok", dropped)


def parse_case_xml(path: str | Path) -> CaseAnnotation:
    """Read one DDTI case XML.

    Args:
        path: the ``{case}.xml`` file.

    Returns:
        The :class:`CaseAnnotation`; descriptors mapped to the vocabulary, unknown values listed.

    Raises:
        DatasetError: the file does not parse, its root is not ``<case>``, a mark has no integer
            ``<image>``, or an svg is malformed without being the known truncation (names the file).
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot parse XML file {path}: {e}", path) from e
    if root.tag != "case":
        raise DatasetError(f"XML file {path} has root <{root.tag}>, expected <case>", path)
    raw = {f: _text(root, f) for f in DESCRIPTORS + ("tirads",)}
    descriptors, unknown = {}, []
    for f in DESCRIPTORS:
        descriptors[f], known = canonical_descriptor(f, raw[f])
        if not known:
            unknown.append((f, raw[f]))
    tirads, known = canonical_tirads(raw["tirads"])
    if not known:
        unknown.append(("tirads", raw["tirads"]))
    age_text = _text(root, "age")
    age = int(age_text) if age_text is not None and age_text.isdigit() else None
    if age_text is not None and age is None:
        unknown.append(("age", age_text))
    sex = _text(root, "sex")
    ann = CaseAnnotation(path=path, case=path.stem, number=_text(root, "number"), age=age,
                         sex=sex.upper() if sex else None, descriptors=descriptors, raw=raw, tirads=tirads,
                         reports={t: _text(root, t) for t in ("reportbacaf", "reporteco")}, unknown=unknown)
    for m, el in enumerate(root.findall("mark")):
        k_text = _text(el, "image")
        if k_text is None or not k_text.isdigit():
            raise DatasetError(f"mark {m} in {path} has no integer <image> (got {k_text!r})", path)
        svg = el.find("svg")
        mark = _parse_regions(svg.text if svg is not None else None, f"mark {m} (image {k_text})", path)
        mark.image = int(k_text)
        if mark.image in ann.marks:  # two marks for one image: their regions add up
            prev = ann.marks[mark.image]
            mark = Mark(mark.image, prev.regions + mark.regions,
                        "ok" if "ok" in (prev.status, mark.status) else prev.status, prev.dropped + mark.dropped)
        ann.marks[mark.image] = mark
    return ann


def rasterize(regions: list[Polygon], width: int, height: int) -> np.ndarray:
    """Union of filled polygons (outline included), (height, width) uint8 in {0, 1}."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in regions:
        draw.polygon(poly, fill=1, outline=1)
    return np.asarray(canvas, dtype=np.uint8)
