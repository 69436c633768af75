"""Splitting datasets into train / val / test without a patient in two splits.

- TN3K and TG3K ship their splits as json files (TRFE-Net's ``tn3k-trainval-fold{k}.json`` for the
  5 cross-validation folds, ``tg3k-trainval.json``): ``{"train": [...], "val": [...]}`` whose
  integers index the image folder sorted by integer stem (strings are stems);
  :func:`select_by_split_file` reads them, and refuses a file that puts one image in both lists.
- DDTI, its XML release and plain folders have no split files: :func:`fraction_split` draws
  train/val/test by ``val_fraction`` / ``test_fraction`` with :func:`patient_split`, so all images
  of one patient (or DDTI case) land in one split, deterministically from ``split_seed``.

The phantom's patient-wise split lives with ``PhantomDataset`` (it needs no files).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from ssmt_lib.data.reading import DatasetError

SampleRecord = TypeVar("SampleRecord")  # any record with ``id`` and ``patient`` attributes


def patient_split(ids: Sequence[str], patients: Sequence[str] | None,
                  fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0) -> list[list[int]]:
    """Split sample positions into groups so that no patient is in two groups.

    Patients are shuffled with ``seed`` and assigned in turn to the group whose share of the
    samples is not yet filled, so group sizes approximate ``fractions`` (in samples).

    Args:
        ids: sample ids (only their number and order matter).
        patients: patient id per sample; ``None`` treats every sample as its own patient.
        fractions: non-negative shares summing to 1, e.g. (train, val, test).
        seed: shuffling seed.

    Returns:
        One sorted list of positions into ``ids`` per fraction.
    """
    n = len(ids)
    patients = list(ids) if patients is None else list(patients)
    if len(patients) != n:
        raise ValueError(f"patient_split: {len(patients)} patients for {n} ids")
    fr = np.asarray(fractions, dtype=float)
    if fr.ndim != 1 or len(fr) == 0 or (fr < 0).any() or abs(fr.sum() - 1.0) > 1e-6:
        raise ValueError(f"patient_split: fractions must be >= 0 and sum to 1, got {tuple(fractions)}")
    by_patient: dict[str, list[int]] = {}
    for pos, p in enumerate(patients):
        by_patient.setdefault(str(p), []).append(pos)
    order = sorted(by_patient)  # sorted first: the result does not depend on input order of patients
    order = [order[k] for k in np.random.default_rng(seed).permutation(len(order))]
    bounds = np.rint(np.cumsum(fr) * n)  # cumulative sample targets (rint: 0.6+0.1 != 0.7 in floats)
    groups: list[list[int]] = [[] for _ in fr]
    filled = 0
    for p in order:
        g = min(int(np.searchsorted(bounds, filled, side="right")), len(fr) - 1)
        while fr[g] == 0 and g < len(fr) - 1:  # never put anything in a zero-share group
            g += 1
        groups[g].extend(by_patient[p])
        filled += len(by_patient[p])
    return [sorted(g) for g in groups]


def fraction_split(records: list[SampleRecord], split: str, val_fraction: float, test_fraction: float,
                   split_seed: int, name: str) -> list[SampleRecord]:
    """train/val/test/all of a folder without split files, patient-wise and deterministic.

    Args:
        records: the samples (each with ``id`` and ``patient``), in a fixed order.
        split: "train", "val", "test", "trainval" or "all".
        val_fraction, test_fraction: shares of the samples in val and test (train: the rest).
        split_seed: :func:`patient_split` seed.
        name: dataset name, for the messages.

    Returns:
        The records of ``split``, in their input order.
    """
    splits = ("train", "val", "test", "trainval", "all")
    if split not in splits:
        raise ValueError(f"unknown split {split!r} for {name!r}; choose from {splits}")
    if split == "all":
        return records
    for key, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= v < 1.0:
            raise ValueError(f"option {key} must be in [0, 1), got {v!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    train, val, test = patient_split([r.id for r in records], [r.patient for r in records],
                                     (1.0 - val_fraction - test_fraction, val_fraction, test_fraction),
                                     split_seed)
    pick = {"train": train, "val": val, "test": test, "trainval": sorted(train + val)}[split]
    return [records[k] for k in pick]


def select_by_split_file(json_path: Path, key: str, images: list[Path],
                         skip: Callable[[str, Path], None]) -> list[Path]:
    """Files named by ``json[key]``: integers index ``images`` (sorted by integer stem), strings are stems.

    Args:
        json_path: the split file (``tn3k-trainval-fold{k}.json``, ``tg3k-trainval.json``).
        key: "train" or "val".
        images: the image folder's files sorted by integer stem (``reading.int_sorted``).
        skip: a ``reading.Skipper``: duplicate, out-of-range or unknown entries go through it.

    Returns:
        The selected files, in the file's order.

    Raises:
        DatasetError: the file is missing or malformed, or puts an image in both train and val.
    """
    if not json_path.is_file():
        raise DatasetError(f"split file not found: {json_path}", json_path)
    try:
        spec = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"cannot parse split file {json_path}: {e}", json_path) from e
    if not isinstance(spec, dict) or not isinstance(spec.get(key), list):
        raise DatasetError(f"split file {json_path} has no list {key!r} (keys: "
                           f"{sorted(spec) if isinstance(spec, dict) else type(spec).__name__})", json_path)
    by_stem = {p.stem: p for p in images}

    def resolve(entry: Any) -> Path | None:
        if isinstance(entry, int) and not isinstance(entry, bool):
            return images[entry] if 0 <= entry < len(images) else None
        return by_stem.get(entry) if isinstance(entry, str) else None

    out, first = [], {}
    for entry in spec[key]:
        path = resolve(entry)
        if path is not None and path in first:
            skip(f"split file {json_path} [{key!r}] lists {path.name} twice (entries {first[path]!r} and "
                 f"{entry!r})", json_path)
        elif path is not None:
            first[path] = entry
            out.append(path)
        elif isinstance(entry, int) and not isinstance(entry, bool):
            skip(f"split index {entry} in {json_path} [{key!r}] is out of range: "
                 f"{len(images)} images in {images[0].parent}", json_path)
        elif isinstance(entry, str):
            skip(f"split entry {entry!r} in {json_path} [{key!r}] names no image in {images[0].parent}",
                 json_path)
        else:
            skip(f"split entry {entry!r} in {json_path} [{key!r}] is neither an index nor a stem", json_path)
    other = {"train": "val", "val": "train"}.get(key)
    if other is not None and isinstance(spec.get(other), list):  # a leak of training images into validation
        both = sorted({resolve(e) for e in spec[other]} & set(out) - {None}, key=lambda p: p.name)
        if both:
            raise DatasetError(f"split file {json_path}: {len(both)} image(s) are in both 'train' and 'val' "
                               f"(e.g. {[p.name for p in both[:5]]}); validation must not hold training "
                               f"images", json_path)
    return out
