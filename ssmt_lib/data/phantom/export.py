"""Writing phantom samples in the public data sets' folder layouts, so the file loaders read them.

``export`` writes TN3K, TG3K or DDTI (images, masks and the split files those releases ship, with
patient-wise splits); ``export_ddti_tirads`` writes DDTI's original release: one XML per case
with its TI-RADS descriptors spelled as DDTI spells them and the nodule outlines as polygons, and
the images ``{case}_{k}.jpg``. Every layout also gets ``phantom-meta.csv`` with the phantom's own
labels per file. Tests and notebooks use these folders to run the real-data code paths offline.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from scipy import ndimage

from ssmt_lib.data.phantom.config import PhantomConfig
from ssmt_lib.data.phantom.generate import sample

# Sub-folders each layout writes (and, with overwrite=True, replaces).
LAYOUT_FOLDERS = {
    "tn3k": ("trainval-image", "trainval-mask", "test-image", "test-mask"),
    "tg3k": ("thyroid-image", "thyroid-mask"),
    "ddti": ("image", "mask"),
}


def _save_gray(arr: np.ndarray, path: Path, scale: float) -> None:
    """Save ``arr * scale`` as an 8-bit grey image; JPEG at quality 95 without chroma
    subsampling (close to lossless, as the public releases), else PNG."""
    from PIL import Image

    im = Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8), mode="L")
    if path.suffix == ".jpg":
        im.save(path, quality=95, subsampling=0)
    else:
        im.save(path, format="PNG")


def _patient_groups(patients: list[str], k: int, rng: np.random.Generator) -> list[set[str]]:
    """Shuffle unique patients into k groups (some may be empty when there are < k patients)."""
    unique = sorted(set(patients))
    order = rng.permutation(len(unique))
    return [{unique[i] for i in part} for part in np.array_split(order, k)]


def _prepare_folders(folders: Iterable[Path], overwrite: bool, caller: str) -> None:
    """Create the output folders; one that already holds files is replaced only with
    ``overwrite`` (checked for all before anything is touched)."""
    folders = list(dict.fromkeys(folders))
    full = [d for d in folders if d.exists() and any(d.iterdir())]
    if full and not overwrite:
        raise FileExistsError(f"{caller}: {full[0]} is not empty; "
                              "pass overwrite=True to replace it")
    for d in full:
        shutil.rmtree(d)
    for d in folders:
        d.mkdir(parents=True, exist_ok=True)


def _write_meta(root: Path, rows: list[dict[str, Any]]) -> None:
    """``phantom-meta.csv``: one row per written image, the phantom's own labels."""
    with open(root / "phantom-meta.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _check_n(caller: str, n: Any) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{caller}: n must be an int >= 1, got {n!r}")


def _meta_row(s: dict[str, Any], file: str, split: str) -> dict[str, Any]:
    return {"file": file, "split": split, "patient": s["patient"], "id": s["id"],
            "size": f"{s['size']:.6f}", "tirads_points": s["tirads_points"],
            "tirads_level": s["tirads_level"], "malignant": int(s["malignant"])}


def _export_tn3k(root: Path, samples: list[dict], rng: np.random.Generator) -> list[dict]:
    """TN3K: ~20% of patients in test; five patient-wise folds over trainval."""
    unique = sorted({s["patient"] for s in samples})
    n_test = int(round(0.2 * len(unique))) if len(unique) > 1 else 0
    test_patients = set(rng.permutation(unique)[:max(n_test, 1 if len(unique) > 1 else 0)].tolist())
    counters = {"trainval": 0, "test": 0}
    trainval_patients, rows = [], []
    for s in samples:
        part = "test" if s["patient"] in test_patients else "trainval"
        stem = f"{counters[part]:04d}.jpg"
        counters[part] += 1
        _save_gray(s["image"], root / f"{part}-image" / stem, 255.0)
        _save_gray(s["nodule_mask"], root / f"{part}-mask" / stem, 255.0)
        rows.append(_meta_row(s, f"{part}-image/{stem}", part))
        if part == "trainval":
            trainval_patients.append(s["patient"])
    for k, group in enumerate(_patient_groups(trainval_patients, 5, rng)):
        (root / f"tn3k-trainval-fold{k}.json").write_text(
            json.dumps(_train_val(trainval_patients, group)))
    return rows


def _train_val(patients: list[str], val: set[str]) -> dict[str, list[int]]:
    """{"train": [...], "val": [...]} indices into ``patients`` (val = those in ``val``)."""
    return {"train": [i for i, q in enumerate(patients) if q not in val],
            "val": [i for i, q in enumerate(patients) if q in val]}


def _export_tg3k(root: Path, samples: list[dict], rng: np.random.Generator) -> list[dict]:
    """TG3K: gland masks; one patient-wise ~80/20 train/val split file."""
    patients = [s["patient"] for s in samples]
    groups = _patient_groups(patients, 5, rng)
    val = groups[0] if len(set(patients)) > 1 else set()
    rows = []
    for i, s in enumerate(samples):
        stem = f"{i:04d}.jpg"
        _save_gray(s["image"], root / "thyroid-image" / stem, 255.0)
        _save_gray(s["gland_mask"], root / "thyroid-mask" / stem, 255.0)
        rows.append(_meta_row(s, f"thyroid-image/{stem}",
                              "val" if s["patient"] in val else "train"))
    (root / "tg3k-trainval.json").write_text(json.dumps(_train_val(patients, val)))
    return rows


def _export_ddti(root: Path, samples: list[dict]) -> list[dict]:
    """DDTI (the segmentation release): 1.PNG, 2.PNG, ... with nodule masks."""
    rows = []
    for i, s in enumerate(samples):
        stem = f"{i + 1}.PNG"
        _save_gray(s["image"], root / "image" / stem, 255.0)
        _save_gray(s["nodule_mask"], root / "mask" / stem, 255.0)
        rows.append(_meta_row(s, f"image/{stem}", "all"))
    return rows


def export(root: str | Path, layout: str, n: int, seed: int = 0,
           config: PhantomConfig | None = None, *, overwrite: bool = False) -> Path:
    """Write n samples in the public folder layout of TN3K, TG3K or DDTI, so the same loaders
    read them.

    tn3k: trainval-image/, trainval-mask/, test-image/, test-mask/ (JPEG .jpg, integer stems
        0000.jpg in each part, nodule masks 0/255), ~20% of patients in test;
        tn3k-trainval-fold{0..4}.json = {"train": [...], "val": [...]} integer indices into the
        trainval files sorted by integer stem, patient-wise (with fewer than 5 trainval patients
        some val lists are empty).
    tg3k: thyroid-image/, thyroid-mask/ (gland masks, .jpg), tg3k-trainval.json with integer
        indices (like TRFE-Net's loader), patient-wise ~80/20 train/val.
    ddti: image/, mask/ (nodule masks) as 1.PNG, 2.PNG, ... (upper-case extension).
    Every layout also gets phantom-meta.csv (file, split, patient, id, size, TI-RADS, malignant).

    Args:
        root: output folder (created).
        layout: "tn3k", "tg3k" or "ddti".
        n: number of samples (indices 0..n-1).
        seed, config: as in :func:`sample`.
        overwrite: replace the layout's sub-folders if they already hold files.

    Returns:
        The root path.
    """
    if layout not in LAYOUT_FOLDERS:
        raise ValueError(f"export: unknown layout {layout!r}; "
                         f"choose one of {sorted(LAYOUT_FOLDERS)}")
    _check_n("export", n)
    root = Path(root)
    _prepare_folders([root / sub for sub in LAYOUT_FOLDERS[layout]], overwrite, "export")
    cfg = config if config is not None else PhantomConfig()
    rng = np.random.default_rng([seed, 9173])
    samples = [sample(i, seed, cfg) for i in range(int(n))]
    if layout == "tn3k":
        rows = _export_tn3k(root, samples, rng)
    elif layout == "tg3k":
        rows = _export_tg3k(root, samples, rng)
    else:
        rows = _export_ddti(root, samples)
    _write_meta(root, rows)
    return root


# ---------------------------------------------------------------------------- DDTI original (XML)

# How the export spells the phantom's categories in DDTI's vocabulary; a tuple alternates between
# spelling variants from case to case, as the public release does (the loader maps them back).
DDTI_SPELLING: dict[str, dict[str, str | tuple[str, ...]]] = {
    "composition": {"cystic": "cystic", "spongiform": "spongiform", "mixed": "predominantly solid",
                    "solid": "solid"},
    "echogenicity": {"anechoic": "anechoic", "hyper_iso": "isoechogenicity",
                     "hypo": "hypoechogenicity", "very_hypo": "marked hypoechogenicity"},
    "margin": {"smooth": "well defined", "ill_defined": ("ill defined", "ill- defined"),
               "lobulated_irregular": "microlobulated",
               "extrathyroidal": "extrathyroidal extension"},
    "foci": {"none": "non", "comet_tail": "comet tail artifacts",
             "macro": ("macrocalcification", "macrocalcifications"),
             "peripheral": "peripheral calcifications",
             "punctate": ("microcalcification", "microcalcifications")},
}
# The phantom's feature -> DDTI's XML tag.
DDTI_FIELDS = {"composition": "composition", "echogenicity": "echogenicity", "margin": "margins",
               "foci": "calcifications"}


def ddti_tirads_category(points: int) -> str:
    """The phantom's TI-RADS points as a DDTI category (our convention: DDTI's categories are not
    ACR's): 0-2 -> "2" (TR1-TR2), 3 -> "3" (TR3), 4/5/6 -> "4a"/"4b"/"4c" (TR4), >= 7 -> "5" (TR5).

    Args:
        points: total TI-RADS points (>= 0).
    """
    if points < 0:
        raise ValueError(f"TI-RADS points must be >= 0, got {points}")
    if points <= 3:
        return "2" if points <= 2 else "3"
    return {4: "4a", 5: "4b", 6: "4c"}.get(points, "5")


def _mask_polygons(mask: np.ndarray) -> list[dict[str, Any]]:
    """One freehand polygon per connected component of a mask (outer contour, DDTI's svg format)."""
    import cv2

    labels, count = ndimage.label(mask)
    out = []
    for k in range(1, count + 1):
        component = (labels == k).astype(np.uint8)
        contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        pts = max(contours, key=len)[:, 0, :]  # (P, 2) x, y
        if len(pts) < 3:  # a one- or two-pixel blob: its pixel box
            ys, xs = np.nonzero(component)
            pts = np.array([(xs.min(), ys.min()), (xs.max(), ys.min()), (xs.max(), ys.max()),
                            (xs.min(), ys.max())])
        out.append({"points": [{"x": int(x), "y": int(y)} for x, y in pts],
                    "regionType": "freehand"})
    return out


def _clear_flat(root: Path, overwrite: bool) -> None:
    """The flat layout shares ``root`` with anything else: remove only its own file types."""
    old = ([p for p in root.glob("*") if p.suffix.lower() in (".xml", ".jpg", ".png")]
           if root.exists() else [])
    if old and not overwrite:
        raise FileExistsError(f"export_ddti_tirads: {root} already holds {old[0].name}; "
                              "pass overwrite=True")
    for p in old:
        p.unlink()
    root.mkdir(parents=True, exist_ok=True)


def _case_fields(case: str, patient: int, worst: dict[str, Any] | None,
                 rng: np.random.Generator) -> dict[str, str]:
    """A case's XML fields: number, random age and sex, the worst nodule's descriptors in DDTI's
    spelling (variant by case number) and its category; empty when no view shows a nodule."""
    fields = {"number": case, "age": str(int(rng.integers(20, 86))),
              "sex": "F" if rng.random() < 0.8 else "M"}
    for key, tag in DDTI_FIELDS.items():
        spelling = DDTI_SPELLING[key][worst[key]] if worst else ""
        fields[tag] = spelling[patient % len(spelling)] if isinstance(spelling, tuple) else spelling
    fields["tirads"] = ddti_tirads_category(worst["points"]) if worst else ""
    fields.update(reportbacaf="", reporteco="")
    return fields


def export_ddti_tirads(root: str | Path, n: int, seed: int = 0,
                       config: PhantomConfig | None = None, *, layout: str = "folders",
                       masks: bool | None = None, overwrite: bool = False) -> Path:
    """Write n samples as DDTI's original release: one XML per case (patient) + ``{case}_{k}.jpg``.

    Each synthetic patient is a case (number = patient + 1) and each of its views an image k = 1,
    2, ...; the XML holds the case's TI-RADS descriptors in DDTI's spelling (variants alternate
    between cases), its category (:func:`ddti_tirads_category` of the most suspicious visible
    nodule's points; empty when no view shows a nodule), a random age and sex, and one ``<mark>``
    per image whose svg lists one polygon per connected nodule region (``[]`` for a view without
    a nodule). ``phantom-meta.csv`` adds the phantom's own labels per image (its drawn
    ``malignant`` too).

    Args:
        root: output folder (created).
        n: number of samples (indices 0..n-1; the last case may have fewer views).
        seed, config: as in :func:`sample`.
        layout: "folders" (``annotations/``, ``images/``, ``masks/``) or "flat" (all in ``root``).
        masks: also write ``{case}_{k}_mask.png`` (0/255); default True for "folders", False for
            "flat".
        overwrite: replace existing files of this layout.

    Returns:
        The root path.
    """
    import xml.etree.ElementTree as ET

    if layout not in ("folders", "flat"):
        raise ValueError(f"export_ddti_tirads: layout must be 'folders' or 'flat', got {layout!r}")
    _check_n("export_ddti_tirads", n)
    root = Path(root)
    masks = layout == "folders" if masks is None else masks
    if layout == "folders":
        dirs = {"xml": root / "annotations", "image": root / "images", "mask": root / "masks"}
        _prepare_folders(dirs.values(), overwrite, "export_ddti_tirads")
    else:
        dirs = {"xml": root, "image": root, "mask": root}
        _clear_flat(root, overwrite)
    cfg = config if config is not None else PhantomConfig()
    views = cfg.views_per_patient
    rng = np.random.default_rng([seed, 31337])
    rows: list[dict[str, Any]] = []
    for patient in range(math.ceil(int(n) / views)):
        case = str(patient + 1)
        shots = [sample(i, seed, cfg)
                 for i in range(patient * views, min((patient + 1) * views, int(n)))]
        visible = [d for s in shots for d in s["nodules"]]
        worst = max(visible, key=lambda d: d["points"]) if visible else None
        xml = ET.Element("case")
        fields = _case_fields(case, patient, worst, rng)
        for tag, text in fields.items():
            ET.SubElement(xml, tag).text = text
        for k, s in enumerate(shots, start=1):
            mark = ET.SubElement(xml, "mark")
            ET.SubElement(mark, "image").text = str(k)
            ET.SubElement(mark, "svg").text = json.dumps(_mask_polygons(s["nodule_mask"]))
            _save_gray(s["image"], dirs["image"] / f"{case}_{k}.jpg", 255.0)
            if masks:
                _save_gray(s["nodule_mask"], dirs["mask"] / f"{case}_{k}_mask.png", 255.0)
            rows.append({"file": f"{case}_{k}.jpg", "case": case, "patient": s["patient"],
                         "id": s["id"], "size": f"{s['size']:.6f}", "tirads": fields["tirads"],
                         "tirads_points": s["tirads_points"], "tirads_level": s["tirads_level"],
                         "malignant": int(s["malignant"])})
        ET.ElementTree(xml).write(dirs["xml"] / f"{case}.xml", encoding="utf-8",
                                  xml_declaration=True)
    _write_meta(root, rows)
    return root
