"""Dataset loaders for SSMT-Net: the phantom, TN3K, TG3K, DDTI and generic folders.

SSMT-Net (Farooq et al., arXiv 2512.12662) trains the nodule decoder on TN3K nodule masks and the
gland decoder on TG3K gland masks (multi-task, after TRFE-Net), pre-trains the reconstructor on
all unlabeled training images (phase 1), and regresses the nodule area fraction (size estimator)
of the mask the network actually sees. Every dataset here therefore returns the same item:

    image        float32 (C, H, W), grey replicated to C channels, ImageNet-normalised
    nodule_mask  float32 (1, H, W) in {0, 1}   (zeros when the sample has no nodule label)
    gland_mask   float32 (1, H, W) in {0, 1}   (zeros when the sample has no gland label)
    has_nodule   bool   the nodule mask is a label (an empty one is still a label: size 0)
    has_gland    bool   the gland mask is a label
    size         float  nodule area fraction AFTER resize/augmentation; 0.0 when empty/absent
    id           str    unique sample id, e.g. "tn3k/trainval/0012"
    patient      str    patient id where known, else the sample id

The phantom adds ``tirads_level`` (int) and ``malignant`` (bool). ``build_training_set`` and
``unlabeled_pool`` keep only the keys above so mixed batches collate. Note that torch's default
collate turns ``size`` into a float64 tensor: cast it (``.float()``) before a loss.

Bad input is reported with the file's path (:class:`DatasetError`); ``skip_bad=True`` skips and
counts the bad files instead (``dataset.skipped``). Folder/JSON structure errors always raise.
"""
from __future__ import annotations

import bisect
import copy
import dataclasses
import errno
import inspect
import json
import os
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Sampler, Subset, WeightedRandomSampler

from ssmt_lib.data.transforms import eval_transform, seed_transform, stitch, train_transform

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # matched case-insensitively
ITEM_KEYS = ("image", "nodule_mask", "gland_mask", "has_nodule", "has_gland", "size", "id", "patient")
DATASET_NAMES = ("phantom", "tn3k", "tg3k", "ddti", "ddti_tirads", "folder", "unlabeled")  # ddti_tirads: data/ddti_tirads.py
MASK_CHECKS = 8  # masks a file dataset decodes at construction to catch all-empty / all-full masks
PHANTOM_SPLIT_BLOCK = (7, 1, 2)  # train/val/test patients in every block of 10 phantom patients


class MaskWarning(UserWarning):
    """Every checked mask of a dataset is empty (or full): the masks are probably misread or wrong."""


class DatasetError(ValueError):
    """A dataset file or folder is missing, unreadable or inconsistent; ``path`` names it."""

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)


# ----------------------------------------------------------------------------- reading files

def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to grey uint8.

    Args:
        path: image file (any PIL format; colour is converted to luminance, 16-bit/float images
            are scaled by their maximum).

    Returns:
        (H, W) uint8 array.

    Raises:
        DatasetError: the file is missing, unreadable or truncated (message names ``path``).
    """
    try:
        with Image.open(path) as im:
            im.load()  # full decode: truncated files fail here
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                arr = np.asarray(im, dtype=np.float32)
                arr = arr * (255.0 / max(float(arr.max()), 1e-8))
                return np.clip(arr + 0.5, 0, 255).astype(np.uint8)
            return np.asarray(im.convert("L"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot read image {path}: {_os_reason(path, e)}", path) from e


def read_mask(path: str | Path) -> np.ndarray:
    """Decode a mask file to {0, 1} uint8, by a rule that fits the file.

    Rule (:func:`binarise_mask`): a lossless mask (PNG, BMP, TIFF ...) holds exact label values,
    so it is cut halfway between its smallest and largest value: 0/1, 0/100 (16-bit), 0/255 and
    anti-aliased 0..255 masks all come out right. A JPEG mask (detected from the file content, not
    the extension) has compression artefacts around its two levels, so Otsu's method splits its
    values into a dark and a bright cluster and the cut lies halfway between the two cluster means:
    {0, 1} and 0/255 JPEG masks both work, and artefacts never become foreground. A uniform mask is
    empty when its value is 0 and full otherwise. Colour masks use the brightest channel, palette
    masks the palette index; a mask with an alpha channel whose colour is the same everywhere (drawn
    in alpha only) uses the alpha channel.

    Args:
        path: mask file.

    Returns:
        (H, W) uint8 array with values in {0, 1}.

    Raises:
        DatasetError: the file is missing, unreadable or truncated (message names ``path``).
    """
    try:
        with Image.open(path) as im:
            im.load()
            is_jpeg = im.format == "JPEG"
            alpha = np.asarray(im.getchannel("A")) if im.mode in ("RGBA", "LA", "PA") else None
            if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
                arr = np.asarray(im.convert("RGB")).max(axis=-1)  # (H, W): brightest channel
            elif im.mode in ("LA", "PA"):
                arr = np.asarray(im.getchannel(0))  # (H, W): grey value or palette index
            else:  # "1", "L", "P" (indices), "I;16", "I", "F"
                arr = np.asarray(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot read mask {path}: {_os_reason(path, e)}", path) from e
    if alpha is not None and arr.size and arr.min() == arr.max() and alpha.min() != alpha.max():
        arr = alpha  # colour carries nothing: the mask is drawn in the alpha channel
    return binarise_mask(arr, jpeg=is_jpeg)


def binarise_mask(values: np.ndarray, jpeg: bool = False) -> np.ndarray:
    """{0, 1} uint8 from a mask's values: cut halfway between its two levels (see :func:`read_mask`).

    Args:
        values: (H, W) decoded mask values (any integer or float dtype; bool allowed).
        jpeg: the values come from a JPEG file (levels found with Otsu's method, robust to artefacts).

    Returns:
        (H, W) uint8 in {0, 1}.
    """
    v = np.asarray(values)
    if v.dtype == bool:
        return v.astype(np.uint8)
    if v.size == 0:
        return np.zeros(v.shape, np.uint8)
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:  # uniform: empty when 0, full otherwise
        return np.full(v.shape, 1 if hi > 0 else 0, np.uint8)
    cut = (lo + hi) / 2
    if jpeg and v.dtype == np.uint8:
        otsu, _ = cv2.threshold(v, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)  # dark/bright clusters
        dark, bright = v[v <= otsu], v[v > otsu]
        if dark.size and bright.size:
            cut = (float(dark.mean()) + float(bright.mean())) / 2
    return (v > cut).astype(np.uint8)


def _os_reason(path: str | Path, err: BaseException) -> str:
    """The error text, saying plainly when ``path`` is a symbolic link loop or a dangling link."""
    path = Path(path)
    if path.is_symlink():
        try:
            os.stat(path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                return "it is a symbolic link loop"
            return f"it is a dangling symbolic link to {os.readlink(path)} (the target does not exist)"
    return str(err)


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header only; PIL's ``open`` does not decode pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot read image header of {path}: {_os_reason(path, e)}", path) from e


def _natural_key(path: Path) -> tuple:
    """Integer stems sort numerically (2 < 10), others alphabetically after them."""
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.stem)


def _list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files (by extension, any case) in ``folder``, naturally sorted; files with other
    extensions (README.txt, Thumbs.db) are not images and are ignored. Broken symbolic links
    (loops, missing targets) with an image extension are listed, so that reading them fails with
    a message naming them (or ``skip_bad`` counts them) like any unreadable file."""
    if not folder.exists():
        raise DatasetError(f"folder not found: {folder}", folder)
    if not folder.is_dir():
        raise DatasetError(f"not a folder: {folder}", folder)
    pattern = "**/*" if recursive else "*"
    files = [p for p in folder.glob(pattern)
             if (p.is_file() or p.is_symlink() and not p.exists())
             and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
    if not files:
        raise DatasetError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {folder}", folder)
    return sorted(files, key=lambda p: (_natural_key(p), str(p)))


def _index_by_stem(files: list[Path]) -> dict[str, Path]:
    """Map stem -> file; two files with one stem (1.png and 1.PNG) are ambiguous."""
    index: dict[str, Path] = {}
    for p in files:
        if p.stem in index:
            raise DatasetError(f"two files share the stem {p.stem!r}: {index[p.stem]} and {p}", p)
        index[p.stem] = p
    return index


def _int_sorted(files: list[Path]) -> list[Path]:
    """Sort by integer stem, as the TN3K/TG3K split json files index them."""
    for p in files:
        if not p.stem.isdigit():
            raise DatasetError(f"expected an integer file stem (split json files index files sorted "
                               f"by integer stem): {p}", p)
    return sorted(files, key=lambda p: int(p.stem))


# ----------------------------------------------------------------------------- base dataset

class SegmentationDataset(Dataset):
    """Common item assembly: load raw arrays, optional stitching, albumentations, tensors.

    Subclasses implement ``__len__`` and ``load_raw(i)`` returning ``image`` (H, W) uint8,
    ``nodule_mask`` / ``gland_mask`` (H, W) uint8 or ``None``, ``id``, ``patient``, ``extras``.
    """

    def __init__(self, name: str, split: str, image_size: int, augment: bool, channels: int,
                 stitch_prob: float | None, has_nodule: bool, has_gland: bool, skip_bad: bool):
        if channels not in (1, 3):
            raise ValueError(f"option channels must be 1 or 3, got {channels!r}")
        if stitch_prob is None:  # paper augmentation includes stitching; off for evaluation
            stitch_prob = 0.2 if augment else 0.0
        if not 0.0 <= float(stitch_prob) <= 1.0:
            raise ValueError(f"option stitch_prob must be in [0, 1], got {stitch_prob!r}")
        self.name, self.split, self.image_size, self.augment = name, split, image_size, augment
        self.channels, self.stitch_prob = channels, float(stitch_prob)
        self.has_nodule, self.has_gland, self.skip_bad = has_nodule, has_gland, skip_bad
        self.transform = (train_transform if augment else eval_transform)(image_size, channels)
        self.skipped: list[tuple[str, str]] = []  # (path, reason) of every skipped item
        self._unlabeled = False
        self.replaced: dict[int, int] = {}  # load-time skip_bad: bad item -> the item standing in for it

    # -- bookkeeping for skip_bad
    @property
    def num_skipped(self) -> int:
        """Number of bad items skipped (construction and load time)."""
        return len(self.skipped)

    def _bad(self, message: str, path: str | Path) -> None:
        """Raise, or record and continue when ``skip_bad``."""
        if not self.skip_bad:
            raise DatasetError(message, path)
        self.skipped.append((str(path), message))

    def _warn_skipped(self) -> None:
        if self.skipped:
            warnings.warn(f"{self.name} ({self.split}): skipped {len(self.skipped)} bad item(s); "
                          f"see dataset.skipped", stacklevel=3)

    # -- to implement
    def __len__(self) -> int:
        raise NotImplementedError

    def load_raw(self, i: int) -> dict:
        raise NotImplementedError

    # -- item assembly
    def as_unlabeled(self) -> "SegmentationDataset":
        """A view of the same images with masks dropped (phase-1 pool); never decodes masks."""
        view = copy.copy(self)  # shares skipped list and records
        view._unlabeled, view.has_nodule, view.has_gland = True, False, False
        return view

    def _load_checked(self, i: int) -> dict:
        """``load_raw`` with load-time ``skip_bad``: a bad file is recorded once in ``skipped``
        (distinct files, however many epochs meet it) and its item is replaced by the next readable
        one, deterministically. Each replacement is warned about once, naming the stand-in, which
        then appears twice per epoch (``len`` cannot shrink under a running sampler or a
        ``ConcatDataset``; ``verify="full"`` finds bad files before ``len`` is fixed)."""
        n = len(self)
        first_error = None
        for k in range(n):
            j = (i + k) % n
            try:
                raw = self.load_raw(j)
            except DatasetError as e:
                if not self.skip_bad:
                    raise
                first_error = first_error or e
                if (e.path or "?") not in {p for p, _ in self.skipped}:
                    self.skipped.append((e.path or "?", str(e)))
                continue
            if k and i not in self.replaced:
                self.replaced[i] = j
                warnings.warn(f"{self.name} ({self.split}): item {i} is unreadable ({first_error}); item {j} "
                              f"({raw['id']}) stands in for it, so that item appears twice per epoch. Fix or "
                              f"remove the file (see dataset.skipped and dataset.replaced)", stacklevel=3)
            return raw
        raise DatasetError(f"{self.name} ({self.split}): no readable item left", None)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {self.name} ({self.split}) of length {len(self)}")
        raw = self._load_checked(i % len(self))
        # random draws from torch: follows torch.manual_seed and DataLoader worker seeds
        if self.stitch_prob > 0 and len(self) > 1 and torch.rand(()).item() < self.stitch_prob:
            j = (i + 1 + int(torch.randint(len(self) - 1, ()))) % len(self)  # any other item
            other = self._load_checked(j)
            extras = {k: (v or other["extras"].get(k, v)) if isinstance(v, bool)
                      else max(v, other["extras"].get(k, v)) for k, v in raw["extras"].items()}
            raw = stitch(raw, other, vertical=torch.rand(()).item() < 0.5, size=self.image_size)
            raw["extras"] = extras  # stitched: worst TI-RADS level, malignant if either is
        return self._finish(raw)

    def _finish(self, raw: dict) -> dict[str, Any]:
        img = raw["image"]  # (H, W) uint8
        h, w = img.shape
        zeros = np.zeros((h, w), np.uint8)
        nod = raw["nodule_mask"] if raw["nodule_mask"] is not None and not self._unlabeled else zeros
        gla = raw["gland_mask"] if raw["gland_mask"] is not None and not self._unlabeled else zeros
        if self.augment:
            seed_transform(self.transform, int(torch.randint(2**31 - 1, ())))
        out = self.transform(image=np.repeat(img[..., None], self.channels, axis=-1),  # (H, W, C)
                             mask=np.stack([nod, gla], axis=-1))  # (H, W, 2)
        # numpy, not torch, for the small per-item ops: torch's intra-op threads cost ms per call here
        image = np.ascontiguousarray(out["image"].transpose(2, 0, 1), dtype=np.float32)  # (C, H, W)
        masks = np.ascontiguousarray(out["mask"].transpose(2, 0, 1), dtype=np.float32)  # (2, H, W)
        item = {
            "image": torch.from_numpy(image),
            "nodule_mask": torch.from_numpy(masks[0:1]),  # (1, H, W)
            "gland_mask": torch.from_numpy(masks[1:2]),  # (1, H, W)
            "has_nodule": bool(self.has_nodule),
            "has_gland": bool(self.has_gland),
            "size": float(masks[0].mean()) if self.has_nodule else 0.0,
            "id": raw["id"],
            "patient": raw["patient"],
        }
        if not self._unlabeled:
            item.update(raw["extras"])
        return item

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"image_size={self.image_size}, augment={self.augment}, skipped={self.num_skipped})")


class PhantomDataset(SegmentationDataset):
    """The built-in synthetic thyroid ultrasound, rendered on the fly at ``image_size``.

    Splits are patient-wise: phantom patients are grouped in blocks of 10 and a seeded
    permutation of each block sends 7 patients to "train", 1 to "val", 2 to "test", so no patient
    (and none of its views) is in two splits. ``n`` is the length of the requested split; its
    items are the first generator indices whose patient belongs to the split.
    """

    def __init__(self, split: str = "train", n: int = 512, seed: int = 0, profile: Any = "default",
                 image_size: int = 224, augment: bool = False, channels: int = 3,
                 stitch_prob: float | None = None, skip_bad: bool = False):
        splits = ("train", "val", "test", "trainval", "all")
        if split not in splits:
            raise ValueError(f"unknown split {split!r} for 'phantom'; choose from {splits}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"option n must be a positive int, got {n!r}")
        from ssmt_lib.data import phantom  # the generator module, imported only when used

        if isinstance(profile, str):
            if profile not in phantom.PROFILES:
                raise ValueError(f"unknown phantom profile {profile!r}; choose from {sorted(phantom.PROFILES)}")
            config = phantom.PROFILES[profile]
        elif isinstance(profile, phantom.PhantomConfig):
            config = profile
        else:
            raise ValueError(f"option profile must be a name in phantom.PROFILES or a PhantomConfig, got {profile!r}")
        super().__init__("phantom", split, image_size, augment, channels, stitch_prob,
                         has_nodule=True, has_gland=True, skip_bad=skip_bad)
        self.seed = seed
        self.config = dataclasses.replace(config, image_size=image_size)  # render at the input size
        self.indices = self._split_indices(split, n, seed, self.config.views_per_patient)

    @staticmethod
    def patient_role(patient: int, seed: int) -> str:
        """Split ("train"/"val"/"test") of a phantom patient number, deterministic from seed."""
        block, slot = divmod(patient, 10)
        perm = np.random.default_rng([seed, block, 7412]).permutation(10)
        pos = int(np.flatnonzero(perm == slot)[0])
        n_train, n_val, _ = PHANTOM_SPLIT_BLOCK
        return "train" if pos < n_train else "val" if pos < n_train + n_val else "test"

    @classmethod
    def _split_indices(cls, split: str, n: int, seed: int, views: int) -> list[int]:
        if split == "all":
            return list(range(n))
        wanted = {"trainval": ("train", "val")}.get(split, (split,))
        out: list[int] = []
        patient = 0
        while len(out) < n:
            if cls.patient_role(patient, seed) in wanted:
                out.extend(range(patient * views, (patient + 1) * views))
            patient += 1
        return out[:n]

    def __len__(self) -> int:
        return len(self.indices)

    def load_raw(self, i: int) -> dict:
        from ssmt_lib.data import phantom  # not stored on self: modules do not pickle (spawned workers)

        s = phantom.sample(self.indices[i], seed=self.seed, config=self.config)
        image = np.clip(s["image"] * 255.0 + 0.5, 0, 255).astype(np.uint8)  # (H, W)
        return {"image": image, "nodule_mask": s["nodule_mask"].astype(np.uint8),
                "gland_mask": s["gland_mask"].astype(np.uint8), "id": str(s["id"]),
                "patient": str(s["patient"]),
                "extras": {"tirads_level": int(s["tirads_level"]), "malignant": bool(s["malignant"])}}


@dataclasses.dataclass
class Record:
    """One file-backed sample."""

    image: Path  # image file
    mask: Path | None  # mask file, None for unlabeled images
    id: str  # unique sample id
    patient: str  # patient id (the sample id when unknown)


class FileDataset(SegmentationDataset):
    """Images (and masks) read from disk; ``mask_kind`` says which task the mask labels."""

    def __init__(self, name: str, split: str, records: list[Record], mask_kind: str | None,
                 image_size: int, augment: bool, channels: int, stitch_prob: float | None,
                 skip_bad: bool, verify: str = "header", skipped: list | None = None):
        if mask_kind not in ("nodule", "gland", None):
            raise ValueError(f"option mask_kind must be 'nodule' or 'gland', got {mask_kind!r}")
        if verify not in ("header", "full"):
            raise ValueError(f"option verify must be 'header' or 'full', got {verify!r}")
        super().__init__(name, split, image_size, augment, channels, stitch_prob,
                         has_nodule=mask_kind == "nodule", has_gland=mask_kind == "gland",
                         skip_bad=skip_bad)
        self.mask_kind = mask_kind
        self.skipped.extend(skipped or [])
        self.records = [r for r in records if self._valid(r, verify)]
        if not self.records:
            raise DatasetError(f"{name} ({split}): no usable samples"
                               + (f"; {len(self.skipped)} skipped, first: {self.skipped[0][1]}"
                                  if self.skipped else ""),
                               self.skipped[0][0] if self.skipped else None)
        self._warn_skipped()
        self._check_mask_content()

    def _check_mask_content(self) -> None:
        """Warn (:class:`MaskWarning`) when every checked mask comes out empty, or every one full:
        a wrong mask folder, or files the binarisation rule (:func:`read_mask`) does not fit.
        Up to ``MASK_CHECKS`` masks, spread over the set, are decoded."""
        masked = [r for r in self.records if r.mask is not None]
        if not masked:
            return
        picks = np.unique(np.linspace(0, len(masked) - 1, min(MASK_CHECKS, len(masked))).round().astype(int))
        fills = []
        for k in picks:
            try:
                fills.append(float(read_mask(masked[k].mask).mean()))
            except DatasetError:
                continue  # reported when the item is loaded
        for kind, value in (("empty", 0.0), ("full (foreground everywhere)", 1.0)):
            if fills and all(f == value for f in fills):
                warnings.warn(f"{self.name} ({self.split}): all {len(fills)} checked masks are {kind} after "
                              f"binarisation, e.g. {masked[picks[0]].mask}. Check the mask folder and files (the "
                              f"rule: ssmt_lib.data.read_mask); training on them teaches nothing", MaskWarning,
                              stacklevel=4)

    def _valid(self, r: Record, verify: str) -> bool:
        """Cheap eager checks (headers only) or a full decode when ``verify == "full"``."""
        try:
            if verify == "full":
                img_hw = read_image(r.image).shape
                mask_hw = read_mask(r.mask).shape if r.mask is not None else img_hw
            else:
                img_hw = _header_size(r.image)[::-1]
                mask_hw = _header_size(r.mask)[::-1] if r.mask is not None else img_hw
        except DatasetError as e:
            self._bad(str(e), e.path)
            return False
        if tuple(img_hw) != tuple(mask_hw):
            self._bad(f"image/mask size mismatch: {r.image} is {img_hw[1]}x{img_hw[0]} but "
                      f"{r.mask} is {mask_hw[1]}x{mask_hw[0]} (width x height)", r.image)
            return False
        return True

    def __len__(self) -> int:
        return len(self.records)

    def load_raw(self, i: int) -> dict:
        r = self.records[i]
        image = read_image(r.image)
        mask = None
        if r.mask is not None and not self._unlabeled:
            mask = read_mask(r.mask)
            if mask.shape != image.shape:
                raise DatasetError(f"image/mask size mismatch: {r.image} is {image.shape[::-1]} but "
                                   f"{r.mask} is {mask.shape[::-1]} (width, height)", r.image)
        return {"image": image,
                "nodule_mask": mask if self.mask_kind == "nodule" else None,
                "gland_mask": mask if self.mask_kind == "gland" else None,
                "id": r.id, "patient": r.patient, "extras": {}}


# ----------------------------------------------------------------------------- splits

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


def _fraction_split(records: list[Record], split: str, val_fraction: float, test_fraction: float,
                    split_seed: int, name: str) -> list[Record]:
    """train/val/test/all of a folder without split files, patient-wise and deterministic."""
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


# ----------------------------------------------------------------------------- builders

def _pair_records(images: list[Path], mask_dir: Path | None, name: str, prefix: str,
                  skip: Callable[[str, Path], None], patient_regex: str | None = None,
                  folder_images: list[Path] | None = None) -> list[Record]:
    """Pair images with masks by stem; missing masks and masks without an image (among
    ``folder_images``, the whole image folder when ``images`` is a split of it) go through ``skip``."""
    masks = _index_by_stem(_list_images(mask_dir)) if mask_dir is not None else {}
    _index_by_stem(images)  # duplicate image stems are an error too
    records = []
    for p in images:
        mask = masks.get(p.stem) if mask_dir is not None else None
        if mask_dir is not None and mask is None:
            skip(f"missing mask for image {p}: no file with stem {p.stem!r} in {mask_dir}", p)
            continue
        sid = f"{prefix}/{p.stem}"
        patient = sid
        if patient_regex is not None:
            m = re.search(patient_regex, p.stem)
            if m is None:
                raise DatasetError(f"patient_regex {patient_regex!r} does not match the stem of {p}", p)
            patient = f"{name}/{m.group(1) if m.groups() else m.group(0)}"
        records.append(Record(p, mask, sid, patient))
    image_stems = {p.stem for p in (images if folder_images is None else folder_images)}
    for stem, mask in sorted(masks.items()):
        if stem not in image_stems:  # an orphan mask means a missing or misnamed image: say so
            skip(f"mask {mask} has no image with stem {stem!r} among the images next to it", mask)
    return records


def _select_by_json(json_path: Path, key: str, images: list[Path], skip: Callable[[str, Path], None]) -> list[Path]:
    """Files named by ``json[key]``: integers index ``images`` (sorted by integer stem), strings are stems."""
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


def _root(root: str | Path | None, name: str) -> Path:
    if root is None:
        raise ValueError(f"root is required for {name!r}, e.g. build_dataset({name!r}, root='data/{name}') "
                         f"(see data/README.md)")
    path = Path(root)
    if not path.is_dir():
        raise DatasetError(f"dataset root not found: {path}", path)
    return path


def _file_dataset(name, split, records, mask_kind, image_size, augment, skip_bad, skipped,
                  channels, stitch_prob, verify) -> FileDataset:
    return FileDataset(name, split, records, mask_kind, image_size, augment, channels, stitch_prob,
                       skip_bad, verify, skipped)


class _Skipper:
    """Collects per-file problems during construction (raises unless ``skip_bad``)."""

    def __init__(self, skip_bad: bool):
        self.skip_bad, self.items = skip_bad, []

    def __call__(self, message: str, path: Path) -> None:
        if not self.skip_bad:
            raise DatasetError(message, path)
        self.items.append((str(path), message))


def _build_phantom(root, split, fold, image_size, augment, skip_bad, *, n: int = 512, seed: int = 0,
                   profile: Any = "default", channels: int = 3, stitch_prob: float | None = None):
    if root is not None:
        raise ValueError("'phantom' is generated, it takes no root; to read an exported phantom use "
                         "build_dataset('tn3k'|'tg3k'|'ddti', root=...)")
    return PhantomDataset(split, n=n, seed=seed, profile=profile, image_size=image_size, augment=augment,
                          channels=channels, stitch_prob=stitch_prob, skip_bad=skip_bad)


def _build_tn3k(root, split, fold, image_size, augment, skip_bad, *, channels: int = 3,
                stitch_prob: float | None = None, verify: str = "header"):
    root = _root(root, "tn3k")
    splits = ("train", "val", "test", "trainval")
    if split not in splits:
        raise ValueError(f"unknown split {split!r} for 'tn3k'; choose from {splits}")
    if fold not in range(5):
        raise ValueError(f"fold must be 0..4 for 'tn3k', got {fold!r}")
    skip = _Skipper(skip_bad)
    part = "test" if split == "test" else "trainval"
    folder = images = _int_sorted(_list_images(root / f"{part}-image"))
    if split in ("train", "val"):
        images = _select_by_json(root / f"tn3k-trainval-fold{fold}.json", split, folder, skip)
    records = _pair_records(images, root / f"{part}-mask", "tn3k", f"tn3k/{part}", skip, folder_images=folder)
    return _file_dataset("tn3k", split, records, "nodule", image_size, augment, skip_bad, skip.items,
                         channels, stitch_prob, verify)


def _build_tg3k(root, split, fold, image_size, augment, skip_bad, *, channels: int = 3,
                stitch_prob: float | None = None, verify: str = "header"):
    root = _root(root, "tg3k")
    splits = ("train", "val", "trainval", "all")
    if split not in splits:
        raise ValueError(f"unknown split {split!r} for 'tg3k' (it has no test split); choose from {splits}")
    skip = _Skipper(skip_bad)
    folder = images = _int_sorted(_list_images(root / "thyroid-image"))
    if split in ("train", "val"):
        images = _select_by_json(root / "tg3k-trainval.json", split, folder, skip)
    records = _pair_records(images, root / "thyroid-mask", "tg3k", "tg3k", skip, folder_images=folder)
    return _file_dataset("tg3k", split, records, "gland", image_size, augment, skip_bad, skip.items,
                         channels, stitch_prob, verify)


def _build_ddti(root, split, fold, image_size, augment, skip_bad, *, val_fraction: float = 0.1,
                test_fraction: float = 0.2, split_seed: int = 0, patient_regex: str | None = None,
                channels: int = 3, stitch_prob: float | None = None, verify: str = "header"):
    root = _root(root, "ddti")
    skip = _Skipper(skip_bad)
    records = _pair_records(_list_images(root / "image"), root / "mask", "ddti", "ddti", skip, patient_regex)
    if patient_regex is None and split != "all":
        warnings.warn(f"DDTI ({root}) has no patient ids: its {split!r} split is made image-wise (every image its "
                      f"own patient), so views of one patient can land in train and test; pass patient_regex= "
                      f"when the file names encode the patient", UserWarning, stacklevel=3)
    records = _fraction_split(records, split, val_fraction, test_fraction, split_seed, "ddti")
    return _file_dataset("ddti", split, records, "nodule", image_size, augment, skip_bad, skip.items,
                         channels, stitch_prob, verify)


def _build_folder(root, split, fold, image_size, augment, skip_bad, *, image_dir: str | Path | None = None,
                  mask_dir: str | Path | None = None, mask_kind: str = "nodule", val_fraction: float = 0.1,
                  test_fraction: float = 0.2, split_seed: int = 0, patient_regex: str | None = None,
                  channels: int = 3, stitch_prob: float | None = None, verify: str = "header"):
    if mask_kind not in ("nodule", "gland"):
        raise ValueError(f"option mask_kind must be 'nodule' or 'gland', got {mask_kind!r}")
    if image_dir is None and mask_dir is None:
        base = _root(root, "folder")
        image_dir, mask_dir = base / "images", base / "masks"
    elif image_dir is None or mask_dir is None:
        raise ValueError("'folder' needs both image_dir and mask_dir (or root with images/ and masks/); "
                         "for images without masks use 'unlabeled'")
    elif root is not None:
        raise ValueError("'folder': give either root or image_dir/mask_dir, not both")
    skip = _Skipper(skip_bad)
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    records = _pair_records(_list_images(image_dir), mask_dir, "folder", f"folder/{image_dir.name}", skip,
                            patient_regex)
    records = _fraction_split(records, split, val_fraction, test_fraction, split_seed, "folder")
    return _file_dataset("folder", split, records, mask_kind, image_size, augment, skip_bad, skip.items,
                         channels, stitch_prob, verify)


def _build_unlabeled(root, split, fold, image_size, augment, skip_bad, *, image_dir: str | Path | None = None,
                     recursive: bool = False, channels: int = 3, stitch_prob: float | None = None,
                     verify: str = "header"):
    if split not in ("train", "all"):
        raise ValueError(f"unknown split {split!r} for 'unlabeled' (all images are used); use 'train' or 'all'")
    if (image_dir is None) == (root is None):
        raise ValueError("'unlabeled' needs exactly one of root or image_dir")
    folder = Path(image_dir if image_dir is not None else root)
    files = _list_images(folder, recursive=recursive)
    records = [Record(p, None, f"unlabeled/{p.relative_to(folder).with_suffix('').as_posix()}",
                      f"unlabeled/{p.relative_to(folder).with_suffix('').as_posix()}") for p in files]
    return _file_dataset("unlabeled", split, records, None, image_size, augment, skip_bad, [],
                         channels, stitch_prob, verify)


_BUILDERS: dict[str, Callable[..., SegmentationDataset]] = {
    "phantom": _build_phantom, "tn3k": _build_tn3k, "tg3k": _build_tg3k, "ddti": _build_ddti,
    "folder": _build_folder, "unlabeled": _build_unlabeled,
}
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


# ----------------------------------------------------------------------------- combining

def _leaves(datasets: Sequence[Dataset]) -> list[SegmentationDataset]:
    """Flatten ConcatDatasets; every leaf must be one of our datasets."""
    out: list[SegmentationDataset] = []
    for ds in datasets:
        if isinstance(ds, ConcatDataset):
            out.extend(_leaves(ds.datasets))
        elif isinstance(ds, SegmentationDataset):
            out.append(ds)
        else:
            raise TypeError(f"expected datasets from build_dataset (or ConcatDatasets of them), got {type(ds).__name__}")
    return out


class _KeyedConcat(ConcatDataset):
    """ConcatDataset that keeps only ``ITEM_KEYS`` so items from different sources collate."""

    def __getitem__(self, idx: int) -> dict[str, Any]:
        item = super().__getitem__(idx)
        return {k: item[k] for k in ITEM_KEYS}

    def sample_tasks(self) -> np.ndarray:
        """(N, 2) bool: ``has_nodule``, ``has_gland`` per sample, without loading any image."""
        rows = [np.tile([ds.has_nodule, ds.has_gland], (len(ds), 1)) for ds in self.datasets]  # (len_k, 2)
        return np.concatenate(rows).astype(bool) if rows else np.zeros((0, 2), bool)  # (N, 2)

    def source_of(self, idx: int) -> SegmentationDataset:
        """The dataset sample ``idx`` comes from."""
        return self.datasets[bisect.bisect_right(self.cumulative_sizes, idx)]


class MultiTaskDataset(_KeyedConcat):
    """Phase-2 training set: nodule-labelled and gland-labelled images in one set (TRFE-Net style);
    each item's ``has_nodule`` / ``has_gland`` flags say which losses it feeds."""

    @property
    def task_counts(self) -> dict[str, int]:
        """Number of samples with a nodule label and with a gland label."""
        t = self.sample_tasks()
        return {"nodule": int(t[:, 0].sum()), "gland": int(t[:, 1].sum())}


class UnlabeledPool(_KeyedConcat):
    """Phase-1 pool: training images of several sets, masks dropped (flags False)."""


def build_training_set(sources: Sequence[Dataset]) -> MultiTaskDataset:
    """Mix labelled training sets (e.g. TN3K nodules + TG3K glands) into one dataset.

    Args:
        sources: datasets from :func:`build_dataset` (train/trainval/all splits) with at least
            one label kind each.

    Returns:
        A :class:`MultiTaskDataset` (a ``ConcatDataset``) yielding only ``ITEM_KEYS``; use
        :func:`task_balanced_sampler` to draw both tasks equally often.

    Raises:
        ValueError: no sources, a test split, or a source without labels.
    """
    leaves = _leaves(sources)
    if not leaves:
        raise ValueError("build_training_set: no sources given")
    for ds in leaves:
        if ds.split == "test":
            raise ValueError(f"build_training_set: {ds.name} split 'test' must never be trained on")
        if not (ds.has_nodule or ds.has_gland):
            raise ValueError(f"build_training_set: {ds.name} ({ds.split}) has no labels; "
                             f"use unlabeled_pool for phase 1")
    return MultiTaskDataset(leaves)


def unlabeled_pool(datasets: Sequence[Dataset]) -> UnlabeledPool:
    """All images of the given training sets, masks ignored, for phase 1 (reconstruction).

    Args:
        datasets: datasets from :func:`build_dataset` (any label kind; "unlabeled" folders too).
            Test splits are refused; pass training splits only.

    Returns:
        An :class:`UnlabeledPool` whose items have zero masks, ``has_nodule = has_gland = False``
        and ``size = 0``; masks are never decoded.
    """
    leaves = _leaves(datasets)
    if not leaves:
        raise ValueError("unlabeled_pool: no datasets given")
    for ds in leaves:
        if ds.split == "test":
            raise ValueError(f"unlabeled_pool: {ds.name} split 'test' must never be used for pre-training")
    return UnlabeledPool([ds.as_unlabeled() for ds in leaves])


def task_balanced_sampler(dataset: _KeyedConcat, num_samples: int | None = None,
                          generator: torch.Generator | None = None) -> WeightedRandomSampler:
    """Sampler drawing each label kind ((nodule), (gland), ...) equally often, with replacement,
    so every batch mixes nodule and gland images like TRFE-Net's paired batches.

    Args:
        dataset: a :class:`MultiTaskDataset` (or :class:`UnlabeledPool`).
        num_samples: draws per epoch; default ``len(dataset)``.
        generator: torch generator for reproducible draws.

    Returns:
        A ``WeightedRandomSampler`` for ``DataLoader(sampler=...)``.
    """
    tasks = [tuple(r) for r in dataset.sample_tasks()]
    counts = Counter(tasks)
    weights = torch.tensor([1.0 / counts[t] for t in tasks], dtype=torch.double)  # (N,)
    return WeightedRandomSampler(weights, num_samples or len(dataset), replacement=True, generator=generator)


def _sample_tasks(dataset: Dataset) -> np.ndarray:
    """(N, 2) bool ``has_nodule``, ``has_gland`` of a combined set or a ``Subset`` of one, no image loaded."""
    if isinstance(dataset, Subset):
        return _sample_tasks(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, _KeyedConcat):
        return dataset.sample_tasks()
    if isinstance(dataset, SegmentationDataset):
        return np.tile([dataset.has_nodule, dataset.has_gland], (len(dataset), 1)).astype(bool)
    raise TypeError(f"cannot tell the labels of a {type(dataset).__name__} without loading it; "
                    f"use build_training_set / build_dataset datasets (or a Subset of one)")


class TaskPairSampler(Sampler[int]):
    """Indices alternating a nodule-labelled and a gland-labelled image: ``n0, g0, n1, g1, ...``.

    TRFE-Net (Gong et al., "Multi-task learning for thyroid nodule segmentation with thyroid region
    prior", ISBI 2021, Sec. 2.1 and eq. 4) takes images from the nodule set and the gland set "one
    by one" into a batch, so with an even batch size half of every batch are nodule images and half
    gland images. One epoch takes every nodule image once, in a seeded order, each paired with the
    next image of a seeded permutation of the gland images (cycled when there are fewer gland than
    nodule images). Gland images are those with a gland label and no nodule label; when every
    image has both (the phantom) the gland images are all gland-labelled ones.

    Under DDP each rank takes every ``world``-th pair (the pair list padded by repeating its start
    to a multiple of ``world``, as ``DistributedSampler`` pads), so all ranks run the same number of
    steps and each batch stays half and half.

    Args:
        dataset: a :class:`MultiTaskDataset` (or a ``Subset`` of one).
        seed: order seed (the same on every rank).
        rank: this process's rank.
        world: number of processes.
    """

    def __init__(self, dataset: Dataset, seed: int, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"TaskPairSampler: rank {rank} is not in [0, {world})")
        tasks = _sample_tasks(dataset)  # (N, 2)
        nodule = np.flatnonzero(tasks[:, 0])
        gland = np.flatnonzero(tasks[:, 1] & ~tasks[:, 0])
        if len(gland) == 0:
            gland = np.flatnonzero(tasks[:, 1])
        if len(nodule) == 0 or len(gland) == 0:
            raise ValueError(f"TaskPairSampler (train.task_pairs, TRFE-Net batches) needs nodule- and gland-"
                             f"labelled images; this set has {len(nodule)} and {len(gland)} "
                             f"(train on nodule + gland sets, e.g. data='tn3k+tg3k')")
        rng = np.random.default_rng([seed, 4099])
        nod = rng.permutation(nodule)
        reps = -(-len(nod) // len(gland))  # ceil: enough gland permutations to pair every nodule image
        gla = np.concatenate([rng.permutation(gland) for _ in range(reps)])[:len(nod)]
        pairs = np.stack([nod, gla], axis=1)  # (P, 2)
        padded = -(-len(pairs) // world) * world
        pairs = np.concatenate([pairs] * -(-padded // len(pairs)))[:padded]  # (padded, 2)
        self.indices = pairs[rank::world].reshape(-1).tolist()  # (2 * P / world,) n, g, n, g, ...

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)
