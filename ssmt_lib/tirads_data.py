"""The data of the joint nodule-mask + TI-RADS model: images with a TI-RADS label and a radiomics target.

Liu et al., *Representation-Level Adversarial Regularization for Clinically Aligned Multitask
Thyroid Ultrasound Assessment* (RLAR, arXiv 2603.21095; abstract only) trains a nodule mask and a
TI-RADS category together, with a TI-RADS-aligned radiomics target for the classification
embedding. The labels here: the phantom's ACR level of the most suspicious visible nodule (TR1-TR5;
images without a nodule have no TI-RADS label and train the mask only); DDTI-TI-RADS's category (six,
or grouped, ``TiradsConfig.labels``). The radiomics target is computed once per training image from
the unaugmented image and its ground-truth mask (:mod:`ssmt_lib.radiomics`), standardised with the
training split's mean and std.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ssmt_lib.radiomics import Standardizer, feature_vector

TIRADS_DATA = {"phantom": ("acr",), "ddti_tirads": ("ddti", "ddti_grouped")}  # data -> label sets it has
_GROUPED = np.array([0, 0, 1, 2, 3, 3])  # DDTI 2, 3, 4a, 4b, 4c, 5 -> 2-3, 4a, 4b, 4c-5


def check_data(data: str, labels: str) -> None:
    """Raise before any work when ``data`` has no TI-RADS labels of the set ``labels``."""
    if data not in TIRADS_DATA:
        raise ValueError(f"the TI-RADS head needs TI-RADS labels, and data {data!r} has none: use data='phantom' "
                         f"(ACR levels TR1-TR5) or data='ddti_tirads' (DDTI's original XML release)")
    if labels not in TIRADS_DATA[data]:
        raise ValueError(f"TiradsConfig.labels={labels!r} does not fit data {data!r}; use one of {TIRADS_DATA[data]}")


def _raw_labels(source: Dataset, labels: str) -> np.ndarray:
    """(N,) class index per image, -1 without a TI-RADS label."""
    if labels == "acr":  # phantom: level 1..5 of the worst visible nodule, 0 = no nodule
        return np.array([int(source.load_raw(i)["extras"]["tirads_level"]) - 1 for i in range(len(source))])
    idx = np.asarray(source.labels("tirads_index"))  # ddti_tirads: from the XML, no image read
    return np.where(idx < 0, -1, _GROUPED[np.clip(idx, 0, 5)]) if labels == "ddti_grouped" else idx


class TiradsSet(Dataset):
    """Items of a ``build_dataset`` split with ``label`` (-1 = none) and the radiomics target.

    Args:
        source: a phantom or ddti_tirads dataset.
        labels: label set ("acr", "ddti", "ddti_grouped").
        radiomics_names: the target's features; None = no target (evaluation splits).
    """

    def __init__(self, source: Dataset, labels: str, radiomics_names: tuple[str, ...] | None = None) -> None:
        self.source, self.names = source, radiomics_names
        self.labels = _raw_labels(source, labels)  # (N,)
        if not (self.labels >= 0).any():
            raise ValueError(f"{getattr(source, 'name', 'dataset')} ({getattr(source, 'split', '?')}): no image has a "
                             f"TI-RADS label, so the TI-RADS head cannot be trained or evaluated on it")
        r = len(radiomics_names or ())
        self.raw_radiomics = np.full((len(source), r), np.nan, np.float32)  # (N, R)
        if radiomics_names:
            for i in range(len(source)):
                raw = source.load_raw(i)
                if raw["nodule_mask"] is not None and raw["nodule_mask"].any():
                    self.raw_radiomics[i] = feature_vector(raw["image"], raw["nodule_mask"], radiomics_names)
        self.targets = self.raw_radiomics.copy()

    def standardize(self, standardizer: Standardizer) -> None:
        """Replace the targets by their standardised values (fit the standardizer on training rows)."""
        self.targets = standardizer(self.raw_radiomics)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.source[i]
        target = self.targets[i]
        ok = bool(np.isfinite(target).all()) and target.size > 0
        return {"image": item["image"], "nodule_mask": item["nodule_mask"], "has_nodule": bool(item["has_nodule"]),
                "label": int(self.labels[i]), "radiomics": torch.from_numpy(np.nan_to_num(target)),
                "has_radiomics": ok, "id": item["id"], "patient": item["patient"]}


def tirads_data(data: str = "phantom", data_root: str | Path | None = None, image_size: int = 128, seed: int = 0,
                phantom_n: int = 256, phantom_profile: Any = "default", phantom_eval_n: int | None = None,
                labels: str = "acr",
                radiomics_features: tuple[str, ...] | None = None, **options: Any) -> dict[str, TiradsSet]:
    """``train`` (augmented, with the standardised radiomics target), ``val`` and ``test`` :class:`TiradsSet`.

    Args:
        data: "phantom" or "ddti_tirads".
        data_root: the DDTI-TI-RADS folder (None for the phantom).
        image_size: side in pixels.
        seed: phantom seed.
        phantom_n: phantom training images.
        phantom_profile: phantom scanner profile (a name in ``phantom.PROFILES`` or a ``PhantomConfig``).
        phantom_eval_n: phantom val and test images each (default a quarter of ``phantom_n``, at least 8).
        labels: label set (must fit ``data``).
        radiomics_features: the target's features (default all of ``radiomics.FEATURE_NAMES``).
        **options: more ``build_dataset`` options for ddti_tirads.
    """
    from ssmt_lib.data import build_dataset
    from ssmt_lib.radiomics import FEATURE_NAMES

    check_data(data, labels)
    names = tuple(radiomics_features or FEATURE_NAMES)
    if data == "phantom":
        if data_root is not None or options:
            raise ValueError(f"the phantom takes no data_root or options here, got {data_root!r}, {sorted(options)}")
        kw = dict(image_size=image_size, seed=seed, profile=phantom_profile, stitch_prob=0.0)
        n_eval = max(phantom_n // 4, 8) if phantom_eval_n is None else phantom_eval_n
        srcs = {s: build_dataset("phantom", split=s, n=phantom_n if s == "train" else n_eval,
                                 augment=s == "train", **kw) for s in ("train", "val", "test")}
    else:
        if data_root is None:
            raise ValueError("data='ddti_tirads' needs data_root (the folder of the case XML files)")
        srcs = {s: build_dataset("ddti_tirads", root=data_root, split=s, image_size=image_size, augment=s == "train",
                                 **options) for s in ("train", "val", "test")}
    sets = {s: TiradsSet(ds, labels, names if s == "train" else None) for s, ds in srcs.items()}
    sets["train"].standardize(Standardizer(sets["train"].raw_radiomics))
    return sets
