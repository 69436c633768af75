"""The dataset classes of SSMT-Net: one item format for the phantom and every file-backed set.

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

Here: :class:`SegmentationDataset` (item assembly: raw arrays, optional stitching,
albumentations, tensors), :class:`PhantomDataset` (the generator, split patient-wise) and
:class:`FileDataset` (records from ``reading.pair_records``). The rest of the data pipeline:
``reading`` (decode, list and pair files), ``splitting`` (patient-wise splits, split files),
``layouts`` (``build_dataset``: one builder per public layout), ``ddti_tirads`` (DDTI's XML
release) and ``combining`` (multi-task training sets, the phase-1 pool, samplers).
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ssmt_lib.data.reading import DatasetError, MaskWarning, Record, header_size, read_image, read_mask
from ssmt_lib.data.transforms import eval_transform, seed_transform, stitch, train_transform

ITEM_KEYS = ("image", "nodule_mask", "gland_mask", "has_nodule", "has_gland", "size", "id", "patient")
MASK_CHECKS = 8  # masks a file dataset decodes at construction to catch all-empty / all-full masks
PHANTOM_SPLIT_BLOCK = (7, 1, 2)  # train/val/test patients in every block of 10 phantom patients


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


class FileDataset(SegmentationDataset):
    """Images (and masks) read from disk; ``mask_kind`` says which task the mask labels.

    Args:
        name, split: dataset name and split, for ids and messages.
        records: the samples (``reading.pair_records``).
        mask_kind: "nodule", "gland" or None (unlabeled images).
        image_size, augment, channels, stitch_prob, skip_bad: as in ``build_dataset``.
        verify: "header" (read headers eagerly) or "full" (decode every file at construction).
        skipped: problems the builder already skipped (``reading.Skipper.items``).
    """

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
                img_hw = header_size(r.image)[::-1]
                mask_hw = header_size(r.mask)[::-1] if r.mask is not None else img_hw
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
