"""``build_dataset``: one builder per public dataset layout, chosen by name.

Each builder reads one layout (data/README.md has the table) and returns a dataset whose items
are those of ``datasets.SegmentationDataset``:

    phantom      generated on the fly, no files; patient-wise split (``PhantomDataset``)
    tn3k         trainval-image/, trainval-mask/, test-image/, test-mask/ and TRFE-Net's
                 tn3k-trainval-fold{0..4}.json (5 cross-validation folds): nodule masks
    tg3k         thyroid-image/, thyroid-mask/, tg3k-trainval.json: gland masks, no test split
    ddti         image/, mask/ (the PNG release TRFE-Net uses): nodule masks; no patient ids, so
                 splits are image-wise unless ``patient_regex`` finds the patient (warned)
    ddti_tirads  DDTI's original XML release with TI-RADS (``ddti_tirads.build_ddti_tirads``)
    folder       any images/ + masks/ pair of folders, ``mask_kind`` "nodule" or "gland"
    unlabeled    any image folder (phase-1 pre-training), optionally recursive

Every builder takes ``(root, split, fold, image_size, augment, skip_bad)`` and keyword-only
options; :func:`dataset_options` reads those options from the builder's signature, so a
builder's keyword defaults are the documented defaults.
"""
from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any, Callable

from ssmt_lib.data.datasets import FileDataset, PhantomDataset, SegmentationDataset
from ssmt_lib.data.ddti_tirads import build_ddti_tirads
from ssmt_lib.data.reading import Record, Skipper, dataset_root, int_sorted, list_images, pair_records
from ssmt_lib.data.splitting import fraction_split, select_by_split_file


def _file_dataset(name, split, records, mask_kind, image_size, augment, skip_bad, skipped,
                  channels, stitch_prob, verify) -> FileDataset:
    """``FileDataset`` from the builders' argument order."""
    return FileDataset(name, split, records, mask_kind, image_size, augment, channels, stitch_prob,
                       skip_bad, verify, skipped)


def _split_file_records(root: Path, split: str, image_dir: str, mask_dir: str, split_file: str,
                        name: str, prefix: str, skip: Skipper) -> list[Record]:
    """TRFE-Net's layout (TN3K, TG3K): train/val are picked by the split file's indices into the
    image folder sorted by integer stem, other splits take the whole folder; masks pair by stem."""
    folder = images = int_sorted(list_images(root / image_dir))
    if split in ("train", "val"):
        images = select_by_split_file(root / split_file, split, folder, skip)
    return pair_records(images, root / mask_dir, name, prefix, skip, folder_images=folder)


def _build_phantom(root, split, fold, image_size, augment, skip_bad, *, n: int = 512, seed: int = 0,
                   profile: Any = "default", channels: int = 3, stitch_prob: float | None = None):
    """The generated phantom; ``n`` samples of the split, ``profile`` a name or a PhantomConfig."""
    if root is not None:
        raise ValueError("'phantom' is generated, it takes no root; to read an exported phantom use "
                         "build_dataset('tn3k'|'tg3k'|'ddti', root=...)")
    return PhantomDataset(split, n=n, seed=seed, profile=profile, image_size=image_size, augment=augment,
                          channels=channels, stitch_prob=stitch_prob, skip_bad=skip_bad)


def _build_tn3k(root, split, fold, image_size, augment, skip_bad, *, channels: int = 3,
                stitch_prob: float | None = None, verify: str = "header"):
    """TN3K: fold json for train/val, the test folders for test."""
    root = dataset_root(root, "tn3k")
    splits = ("train", "val", "test", "trainval")
    if split not in splits:
        raise ValueError(f"unknown split {split!r} for 'tn3k'; choose from {splits}")
    if fold not in range(5):
        raise ValueError(f"fold must be 0..4 for 'tn3k', got {fold!r}")
    skip = Skipper(skip_bad)
    part = "test" if split == "test" else "trainval"
    records = _split_file_records(root, split, f"{part}-image", f"{part}-mask", f"tn3k-trainval-fold{fold}.json",
                                  "tn3k", f"tn3k/{part}", skip)
    return _file_dataset("tn3k", split, records, "nodule", image_size, augment, skip_bad, skip.items,
                         channels, stitch_prob, verify)


def _build_tg3k(root, split, fold, image_size, augment, skip_bad, *, channels: int = 3,
                stitch_prob: float | None = None, verify: str = "header"):
    """TG3K: json for train/val, every file for trainval/all."""
    root = dataset_root(root, "tg3k")
    splits = ("train", "val", "trainval", "all")
    if split not in splits:
        raise ValueError(f"unknown split {split!r} for 'tg3k' (it has no test split); choose from {splits}")
    skip = Skipper(skip_bad)
    records = _split_file_records(root, split, "thyroid-image", "thyroid-mask", "tg3k-trainval.json",
                                  "tg3k", "tg3k", skip)
    return _file_dataset("tg3k", split, records, "gland", image_size, augment, skip_bad, skip.items,
                         channels, stitch_prob, verify)


def _build_ddti(root, split, fold, image_size, augment, skip_bad, *, val_fraction: float = 0.1,
                test_fraction: float = 0.2, split_seed: int = 0, patient_regex: str | None = None,
                channels: int = 3, stitch_prob: float | None = None, verify: str = "header"):
    """DDTI (PNG release): images paired with masks, split by fractions."""
    root = dataset_root(root, "ddti")
    skip = Skipper(skip_bad)
    records = pair_records(list_images(root / "image"), root / "mask", "ddti", "ddti", skip, patient_regex)
    if patient_regex is None and split != "all":
        warnings.warn(f"DDTI ({root}) has no patient ids: its {split!r} split is made image-wise (every image its "
                      f"own patient), so views of one patient can land in train and test; pass patient_regex= "
                      f"when the file names encode the patient", UserWarning, stacklevel=3)
    records = fraction_split(records, split, val_fraction, test_fraction, split_seed, "ddti")
    return _file_dataset("ddti", split, records, "nodule", image_size, augment, skip_bad, skip.items,
                         channels, stitch_prob, verify)


def _build_folder(root, split, fold, image_size, augment, skip_bad, *, image_dir: str | Path | None = None,
                  mask_dir: str | Path | None = None, mask_kind: str = "nodule", val_fraction: float = 0.1,
                  test_fraction: float = 0.2, split_seed: int = 0, patient_regex: str | None = None,
                  channels: int = 3, stitch_prob: float | None = None, verify: str = "header"):
    """Any images/ + masks/ folders (or ``image_dir`` and ``mask_dir``)."""
    if mask_kind not in ("nodule", "gland"):
        raise ValueError(f"option mask_kind must be 'nodule' or 'gland', got {mask_kind!r}")
    if image_dir is None and mask_dir is None:
        base = dataset_root(root, "folder")
        image_dir, mask_dir = base / "images", base / "masks"
    elif image_dir is None or mask_dir is None:
        raise ValueError("'folder' needs both image_dir and mask_dir (or root with images/ and masks/); "
                         "for images without masks use 'unlabeled'")
    elif root is not None:
        raise ValueError("'folder': give either root or image_dir/mask_dir, not both")
    skip = Skipper(skip_bad)
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    records = pair_records(list_images(image_dir), mask_dir, "folder", f"folder/{image_dir.name}", skip,
                           patient_regex)
    records = fraction_split(records, split, val_fraction, test_fraction, split_seed, "folder")
    return _file_dataset("folder", split, records, mask_kind, image_size, augment, skip_bad, skip.items,
                         channels, stitch_prob, verify)


def _build_unlabeled(root, split, fold, image_size, augment, skip_bad, *, image_dir: str | Path | None = None,
                     recursive: bool = False, channels: int = 3, stitch_prob: float | None = None,
                     verify: str = "header"):
    """Any image folder without masks."""
    if split not in ("train", "all"):
        raise ValueError(f"unknown split {split!r} for 'unlabeled' (all images are used); use 'train' or 'all'")
    if (image_dir is None) == (root is None):
        raise ValueError("'unlabeled' needs exactly one of root or image_dir")
    folder = Path(image_dir if image_dir is not None else root)
    files = list_images(folder, recursive=recursive)
    records = [Record(p, None, f"unlabeled/{p.relative_to(folder).with_suffix('').as_posix()}",
                      f"unlabeled/{p.relative_to(folder).with_suffix('').as_posix()}") for p in files]
    return _file_dataset("unlabeled", split, records, None, image_size, augment, skip_bad, [],
                         channels, stitch_prob, verify)


_BUILDERS: dict[str, Callable[..., SegmentationDataset]] = {
    "phantom": _build_phantom, "tn3k": _build_tn3k, "tg3k": _build_tg3k, "ddti": _build_ddti,
    "ddti_tirads": build_ddti_tirads, "folder": _build_folder, "unlabeled": _build_unlabeled,
}
DATASET_NAMES = tuple(_BUILDERS)  # every name build_dataset accepts
_COMMON = ("root", "split", "fold", "image_size", "augment", "skip_bad")


def dataset_options(name: str) -> dict[str, Any]:
    """The extra keyword options ``build_dataset(name, ...)`` accepts, with their defaults.

    Args:
        name: one of ``DATASET_NAMES``.

    Returns:
        ``{option: default}``.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASET_NAMES}")
    params = inspect.signature(_BUILDERS[name]).parameters
    return {k: p.default for k, p in params.items() if k not in _COMMON}


def build_dataset(name: str, root: str | Path | None = None, split: str = "train", fold: int = 0,
                  image_size: int = 224, augment: bool = False, skip_bad: bool = False,
                  **options: Any) -> SegmentationDataset:
    """The single entry point for every dataset.

    Args:
        name: "phantom", "tn3k", "tg3k", "ddti", "folder" or "unlabeled".
        root: dataset folder (``data/tn3k`` ...); ``None`` for the phantom.
        split: "train", "val", "test", "trainval" or "all" (which ones exist depends on the set).
        fold: TN3K cross-validation fold 0..4 (``tn3k-trainval-fold{fold}.json``); 0 elsewhere.
        image_size: output side in pixels (images and masks are resized to a square).
        augment: training augmentation (flip, rotation, zoom-out, intensity, stitching).
        skip_bad: skip and count bad files (``dataset.skipped``) instead of raising.
        **options: per-dataset options, see :func:`dataset_options` and data/README.md
            (phantom: n, seed, profile; ddti/folder: val_fraction, test_fraction, split_seed,
            patient_regex; folder: image_dir, mask_dir, mask_kind; unlabeled: image_dir, recursive;
            all: channels, stitch_prob; file sets: verify = "header" | "full").

    Returns:
        A ``SegmentationDataset`` whose items are the dicts described in this module's docstring.

    Raises:
        ValueError: unknown name, split or option value. TypeError: unknown option.
        DatasetError: missing/unreadable/inconsistent files (the message names the path).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASET_NAMES}")
    allowed = dataset_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for dataset {name!r}; valid options: {sorted(allowed)}")
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
    if fold != 0 and name != "tn3k":
        raise ValueError(f"fold={fold!r} only applies to 'tn3k' (its 5 cross-validation folds)")
    return _BUILDERS[name](root, split, fold, image_size, bool(augment), bool(skip_bad), **options)
