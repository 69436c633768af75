"""DDTI as its publishers release it: case XMLs (TI-RADS, nodule polygons) + JPEGs, as a dataset.

Pedraza, Vargas, Narvaez, Duran, Munoz, Romero, "An open access thyroid ultrasound image database"
(SPIE 10th International Symposium on Medical Information Processing and Analysis, 2015). The
dual-stage paper (benign/malignant classification, then segmentation) trains its classifiers on
image-level labels; this loader gives DDTI's images such a label, derived from TI-RADS (the XML
format, the descriptor vocabulary and the label convention: ``ddti_tirads_xml``). Layouts
(``layout="auto"`` tells them apart):

    flat:     root/1.xml, root/1_1.jpg, root/1_2.jpg, root/2.xml, ...
    folders:  root/annotations/1.xml, root/images/1_1.jpg, optional root/masks/1_1_mask.png

The nodule mask is the union of the mark's region polygons; ``instance_masks(i)`` keeps one mask
per region. Descriptor values outside the vocabulary are reported in a warning
(``dataset.unknown_values``).

**Known quirks of the public release, loaded with the default settings.** Marks whose ``<svg>`` is
empty, and svg JSON cut off at ``SVG_TRUNCATED_AT`` = 2,500 characters (the list of polygons is
truncated and does not parse): the image uses ``masks/`` where that folder has its mask, otherwise
it stays for classification without a nodule mask (``has_nodule`` False); one warning counts them
and names the cases. Regions with fewer than 3 points are dropped and counted in that warning. A
valid empty list ``[]`` is an annotated image without a nodule (empty mask, a label). Images without
a TI-RADS value stay for segmentation (``malignant`` item value -1). Splits are by case
(``patient_split``): the images of one case are never in two splits.

**Bad input that is not a known quirk** (an XML file that does not parse, a mark naming a missing
image, an image no XML names, a mask with no image, svg JSON that is malformed without being cut)
raises :class:`~ssmt_lib.data.reading.DatasetError` naming the file, or with ``skip_bad=True`` is
skipped and counted in ``dataset.skipped``.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssmt_lib.data.datasets import SegmentationDataset
from ssmt_lib.data.ddti_tirads_xml import (
    DESCRIPTORS,
    SVG_TRUNCATED_AT,
    TIRADS_CATEGORIES,
    CaseAnnotation,
    Polygon,
    acr_points,
    malignant_from_tirads,
    parse_case_xml,
    rasterize,
)
from ssmt_lib.data.reading import (
    IMAGE_EXTENSIONS,
    DatasetError,
    Skipper,
    dataset_root,
    header_size,
    natural_key,
    read_image,
    read_mask,
    sorted_files,
)
from ssmt_lib.data.splitting import fraction_split


@dataclass
class TiradsRecord:
    """One image of the DDTI-TI-RADS set, with its case's labels (reused by the TI-RADS tasks)."""

    image: Path  # image file
    id: str  # "ddti_tirads/{case}_{k}"
    case: str  # case id = patient id
    image_index: int  # k
    regions: list[Polygon]  # nodule polygons (empty when none or unusable)
    mask_file: Path | None  # masks/{case}_{k}_mask.png when present
    mask_source: str | None  # "svg", "masks" or None (no nodule mask: classification only)
    svg_status: str  # "ok", "empty", "truncated"
    tirads: str | None  # TI-RADS category or None
    malignant: bool | None  # TI-RADS-derived label (4a-5), None without a category
    descriptors: dict[str, str | None]  # canonical descriptor values
    acr_points: int | None  # ACR points of the recorded fields (no shape in DDTI), see module doc
    annotation: CaseAnnotation  # the whole case XML

    @property
    def patient(self) -> str:
        """The case: ``splitting.fraction_split`` keeps a case's images in one split."""
        return self.case


def _split_stem(stem: str) -> tuple[str, int] | None:
    """``"12_3"`` -> ("12", 3); None for stems that are not ``{case}_{k}``."""
    m = re.fullmatch(r"(.+)_(\d+)", stem)
    return (m.group(1), int(m.group(2))) if m else None


def _layout(root: Path, layout: str) -> tuple[str, Path, Path, Path | None]:
    """(layout, xml folder, image folder, mask folder or None)."""
    if layout not in ("auto", "flat", "folders"):
        raise ValueError(f"option layout must be 'auto', 'flat' or 'folders', got {layout!r}")
    has_folders = (root / "annotations").is_dir() or (root / "images").is_dir()
    has_flat = any(p.suffix.lower() == ".xml" for p in root.iterdir() if p.is_file())
    if layout == "auto":
        if has_folders and has_flat:
            raise DatasetError(f"{root} has both case XML files and annotations/ or images/; "
                               f"pass layout='flat' or layout='folders'", root)
        if not (has_folders or has_flat):
            raise DatasetError(f"no DDTI case XML files in {root} (flat layout) and no annotations/ and "
                               f"images/ folders (folders layout)", root)
        layout = "folders" if has_folders else "flat"
    if layout == "flat":
        return layout, root, root, None
    for sub in ("annotations", "images"):
        if not (root / sub).is_dir():
            raise DatasetError(f"folders layout needs {root / sub}/", root / sub)
    return layout, root / "annotations", root / "images", (root / "masks") if (root / "masks").is_dir() else None


class DDTITiradsDataset(SegmentationDataset):
    """DDTI original release: images with nodule masks (where usable) and TI-RADS labels.

    Items are the common segmentation items (``has_nodule`` per image here) plus collatable
    TI-RADS fields: ``case`` (str), ``image_index`` (int), ``tirads`` (str, "" = none),
    ``tirads_index`` (index into ``TIRADS_CATEGORIES``, -1 = none), ``malignant`` (1, 0, -1 = no
    TI-RADS value), the four descriptors (canonical str, "" = missing or unknown) and
    ``acr_points`` (-1 = not computable). The same values, with None, are in ``records``.
    """

    def __init__(self, split: str, records: list[TiradsRecord], image_size: int, augment: bool, channels: int,
                 stitch_prob: float | None, skip_bad: bool, skipped: list, layout: str):
        super().__init__("ddti_tirads", split, image_size, augment, channels, stitch_prob,
                         has_nodule=True, has_gland=False, skip_bad=skip_bad)
        self.layout = layout
        self.skipped.extend(skipped)
        self.records = records
        if not records:
            raise DatasetError(f"ddti_tirads ({split}): no usable images"
                               + (f"; {len(self.skipped)} skipped, first: {self.skipped[0][1]}" if self.skipped else ""),
                               self.skipped[0][0] if self.skipped else None)
        self.quirks = self._quirks()
        self.unknown_values = self._unknown()
        self._warn_skipped()
        self._warn_quirks()

    def _quirks(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for status in ("empty", "truncated"):
            recs = [r for r in self.records if r.svg_status == status]
            out[status] = {"images": len(recs), "cases": sorted({r.case for r in recs}, key=natural_key),
                           "from_masks": sum(r.mask_source == "masks" for r in recs)}
        dropped = [(r.case, r.annotation.marks[r.image_index].dropped) for r in self.records
                   if r.annotation.marks[r.image_index].dropped]
        out["dropped_regions"] = {"regions": sum(d for _, d in dropped), "cases": sorted({c for c, _ in dropped}, key=natural_key)}
        out["without_mask"] = sum(r.mask_source is None for r in self.records)
        return out

    def _unknown(self) -> dict[str, dict[str, list[str]]]:
        out: dict[str, dict[str, list[str]]] = {}
        for ann in {r.case: r.annotation for r in self.records}.values():
            for f, value in ann.unknown:
                out.setdefault(f, {}).setdefault(value, []).append(ann.case)
        return out

    def _warn_quirks(self) -> None:
        q = self.quirks
        parts = [f"{q[s]['images']} image(s) with {label} (cases {', '.join(q[s]['cases'])})"
                 for s, label in (("empty", "an empty <svg>"), ("truncated", f"svg JSON cut at {SVG_TRUNCATED_AT} chars"))
                 if q[s]["images"]]
        if q["dropped_regions"]["regions"]:
            parts.append(f"{q['dropped_regions']['regions']} region(s) with < 3 points dropped "
                         f"(cases {', '.join(q['dropped_regions']['cases'])})")
        if parts:
            used = q["empty"]["from_masks"] + q["truncated"]["from_masks"]
            warnings.warn(f"ddti_tirads ({self.split}): known quirks of the release: {'; '.join(parts)}. "
                          f"{used} of those images use their masks/ file; {q['without_mask']} image(s) have no "
                          f"nodule mask and serve classification only (has_nodule False)", stacklevel=4)
        if self.unknown_values:
            listed = "; ".join(f"{f}={v!r} (cases {', '.join(cs)})" for f, vals in self.unknown_values.items()
                               for v, cs in vals.items())
            warnings.warn(f"ddti_tirads ({self.split}): values outside the vocabulary, kept as None (not guessed): "
                          f"{listed}", stacklevel=4)

    def __len__(self) -> int:
        return len(self.records)

    def load_raw(self, i: int) -> dict:
        r = self.records[i]
        image = read_image(r.image)
        h, w = image.shape
        mask = None
        if not self._unlabeled and r.mask_source == "svg":
            mask = rasterize(r.regions, w, h)
        elif not self._unlabeled and r.mask_source == "masks":
            mask = read_mask(r.mask_file)
            if mask.shape != image.shape:
                raise DatasetError(f"image/mask size mismatch: {r.image} is {w}x{h} but {r.mask_file} is "
                                   f"{mask.shape[1]}x{mask.shape[0]} (width x height)", r.mask_file)
        d = r.descriptors
        extras = {
            "has_nodule": r.mask_source is not None, "case": r.case, "image_index": r.image_index,
            "tirads": r.tirads or "", "tirads_index": TIRADS_CATEGORIES.index(r.tirads) if r.tirads else -1,
            "malignant": -1 if r.malignant is None else int(r.malignant),
            **{f: d[f] or "" for f in DESCRIPTORS}, "acr_points": -1 if r.acr_points is None else r.acr_points,
        }
        return {"image": image, "nodule_mask": mask, "gland_mask": None, "id": r.id, "patient": r.case,
                "extras": extras}

    def instance_masks(self, i: int) -> np.ndarray:
        """One mask per nodule region of record ``i`` at the image's own size, (K, H, W) uint8."""
        r = self.records[i]
        w, h = header_size(r.image)
        return np.stack([rasterize([poly], w, h) for poly in r.regions]) if r.regions else np.zeros((0, h, w), np.uint8)

    def labels(self, key: str = "malignant") -> np.ndarray:
        """Per-record label without reading images: ``malignant`` (1/0/-1) or ``tirads_index``."""
        if key == "malignant":
            return np.array([-1 if r.malignant is None else int(r.malignant) for r in self.records])
        if key == "tirads_index":
            return np.array([TIRADS_CATEGORIES.index(r.tirads) if r.tirads else -1 for r in self.records])
        raise ValueError(f"labels: key must be 'malignant' or 'tirads_index', got {key!r}")


def build_ddti_tirads(root, split, fold, image_size, augment, skip_bad, *, layout: str = "auto",
                      mask_source: str = "svg", val_fraction: float = 0.1, test_fraction: float = 0.2,
                      split_seed: int = 0, channels: int = 3, stitch_prob: float | None = 0.0,
                      verify: str = "header") -> DDTITiradsDataset:
    """``build_dataset("ddti_tirads", root=...)``: see the module docstring.

    Args:
        root, split, fold, image_size, augment, skip_bad: as in ``build_dataset``.
        layout: "auto", "flat" or "folders".
        mask_source: "svg" (polygons; ``masks/`` only for images whose svg is unusable) or "masks"
            (``masks/`` files first, polygons where an image has none).
        val_fraction, test_fraction, split_seed: case-wise split, as for ``ddti``.
        channels, stitch_prob: as in ``build_dataset``; stitching is off by default here because
            the labels are per image (a stitched pair would carry the worse of two labels).
        verify: "header" (read image headers eagerly) or "full" (decode every image).
    """
    root = dataset_root(root, "ddti_tirads")
    if mask_source not in ("svg", "masks"):
        raise ValueError(f"option mask_source must be 'svg' or 'masks', got {mask_source!r}")
    if verify not in ("header", "full"):
        raise ValueError(f"option verify must be 'header' or 'full', got {verify!r}")
    skip = Skipper(skip_bad)
    layout, xml_dir, image_dir, mask_dir = _layout(root, layout)
    xmls = sorted_files(xml_dir, (".xml",))
    if not xmls:
        raise DatasetError(f"no case XML files in {xml_dir}", xml_dir)
    files = sorted_files(image_dir, IMAGE_EXTENSIONS)
    masks: dict[str, Path] = {}
    if layout == "flat":  # flat exports may put {case}_{k}_mask.png beside the images
        masks = {p.stem[:-5]: p for p in files if p.stem.endswith("_mask")}
        files = [p for p in files if not p.stem.endswith("_mask")]
    elif mask_dir is not None:
        for p in sorted_files(mask_dir, IMAGE_EXTENSIONS):
            if not p.stem.endswith("_mask"):
                skip(f"mask file {p} is not named {{case}}_{{k}}_mask", p)
            else:
                masks[p.stem[:-5]] = p
    images: dict[str, Path] = {}
    for p in files:
        if p.stem in images:
            raise DatasetError(f"two images share the stem {p.stem!r}: {images[p.stem]} and {p}", p)
        images[p.stem] = p
    records, named = [], set()
    for xml in xmls:
        try:
            ann = parse_case_xml(xml)
        except DatasetError as e:
            skip(str(e), xml)
            continue
        for k, mark in sorted(ann.marks.items()):
            stem = f"{ann.case}_{k}"
            if stem not in images:
                skip(f"mark for image {k} in {xml} names a missing image: no {stem}.jpg (or other image "
                     f"extension) in {image_dir}", xml)
                continue
            named.add(stem)
            mask_file = masks.get(stem)
            usable_svg = mark.status == "ok"
            if mask_source == "masks" and mask_file is not None:
                source = "masks"
            else:
                source = "svg" if usable_svg else "masks" if mask_file is not None else None
            records.append(TiradsRecord(
                image=images[stem], id=f"ddti_tirads/{stem}", case=ann.case, image_index=k,
                regions=mark.regions, mask_file=mask_file, mask_source=source, svg_status=mark.status,
                tirads=ann.tirads, malignant=malignant_from_tirads(ann.tirads), descriptors=dict(ann.descriptors),
                acr_points=acr_points(ann.descriptors), annotation=ann))
    for stem, p in images.items():
        if stem not in named:
            parsed = _split_stem(stem)
            why = "its name is not {case}_{k}" if parsed is None else f"no mark of case {parsed[0]!r} names image {parsed[1]}"
            skip(f"image {p} is named by no case XML ({why})", p)
    for stem, p in sorted(masks.items()):
        if stem not in images:
            skip(f"mask {p} has no image {stem} in {image_dir}", p)
    records = [r for r in records if _readable(r, verify, skip)]
    records = fraction_split(records, split, val_fraction, test_fraction, split_seed, "ddti_tirads")
    return DDTITiradsDataset(split, records, image_size, augment, channels, stitch_prob, skip_bad, skip.items, layout)


def _readable(r: TiradsRecord, verify: str, skip: Skipper) -> bool:
    """Eager check of the image (header or full decode) and of the mask file's size."""
    try:
        w, h = read_image(r.image).shape[::-1] if verify == "full" else header_size(r.image)
        if r.mask_source == "masks":
            mw, mh = header_size(r.mask_file)
            if (mw, mh) != (w, h):
                skip(f"image/mask size mismatch: {r.image} is {w}x{h} but {r.mask_file} is {mw}x{mh} "
                     f"(width x height)", r.mask_file)
                return False
    except DatasetError as e:
        skip(str(e), e.path)
        return False
    return True
