"""Combining datasets for SSMT-Net's two training phases, and the samplers that mix their tasks.

SSMT-Net (Farooq et al., arXiv 2512.12662, Sec. 2.6) pre-trains the reconstructor on every
unlabeled training image (phase 1: :func:`unlabeled_pool`), then trains the nodule decoder on
nodule-labelled images (TN3K) and the gland decoder on gland-labelled images (TG3K) together
(phase 2: :func:`build_training_set`), after TRFE-Net. Each combined item keeps only the common
keys (``datasets.ITEM_KEYS``) so items from different sets collate; its ``has_nodule`` /
``has_gland`` flags say which losses it feeds. Two samplers mix the tasks:
:func:`task_balanced_sampler` (each label kind equally often, with replacement) and
:class:`TaskPairSampler` (TRFE-Net's alternating nodule / gland batches). Test splits are refused.
"""
from __future__ import annotations

import bisect
from collections import Counter
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Sampler, Subset, WeightedRandomSampler

from ssmt_lib.data.datasets import ITEM_KEYS, SegmentationDataset


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


def _training_leaves(datasets: Sequence[Dataset], caller: str, use: str) -> list[SegmentationDataset]:
    """The leaves of ``datasets``, refusing an empty list and any test split (``use``: for what)."""
    leaves = _leaves(datasets)
    if not leaves:
        raise ValueError(f"{caller}: no datasets given")
    for ds in leaves:
        if ds.split == "test":
            raise ValueError(f"{caller}: {ds.name} split 'test' must never be {use}")
    return leaves


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
    leaves = _training_leaves(sources, "build_training_set", "trained on")
    for ds in leaves:
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
    leaves = _training_leaves(datasets, "unlabeled_pool", "used for pre-training")
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
