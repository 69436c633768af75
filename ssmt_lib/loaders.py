"""The data of a training run: its datasets (:func:`build_data`) and their loaders.

:func:`build_data` assembles the splits that SSMT-Net's two phases use (Farooq et al.,
*Anatomy-Guided Representation Learning Using a Transformer-Based Network for Thyroid Nodule
Segmentation in Ultrasound Images*, Sec. 2.6 and 3.1): a multi-task training set (nodule images and
gland images in one set), the unlabeled pool of phase 1 (every training image, never a test image),
and validation and test sets. :func:`make_loader` gives a loader whose order depends only on its
seed (and, under DDP, the rank), so a resumed run sees the same batches as an unbroken one
(DESIGN.md section 6).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ssmt_lib.distributed import RANK_SEED_STRIDE, rank_and_world


def build_data(data: str = "phantom", data_root: str | Path | None = None, image_size: int = 128, fold: int = 0,
               phantom_n: int = 256, phantom_profile: str = "default", unlabeled_dir: str | Path | None = None,
               seed: int = 0, label_fraction: float = 1.0, intensity_aug: bool = True) -> dict[str, Dataset]:
    """Datasets of one run: ``train`` (multi-task, augmented), ``val``, ``test``, ``unlabeled`` (phase 1).

    Args:
        data: "phantom", one file set ("tn3k", "tg3k", "ddti") or several joined by "+" ("tn3k+tg3k",
            the paper's setting: nodule images and gland images in one training set). The first set
            with nodule masks provides ``val`` and ``test``.
        data_root: the set's folder (one set) or the parent of ``tn3k/``, ``tg3k/`` ... (several).
        image_size: training/eval side in pixels.
        fold: TN3K fold.
        phantom_n: phantom training images (val and test get a quarter each).
        phantom_profile: phantom scanner profile name.
        unlabeled_dir: optional extra folder of unlabeled images for phase 1.
        seed: phantom seed and seed of the labelled subset.
        label_fraction: keep the masks of this share of training images (a seeded subset); all of
            them stay in the phase-1 pool.
        intensity_aug: the brightness/contrast and gamma jitter of ``train_transform`` (beyond the
            paper, whose Sec. 3.1 lists flipping, rotation, zoom-out and stitching); False drops it.
    """
    from ssmt_lib.data import DATASET_NAMES, build_dataset, build_training_set, unlabeled_pool

    names = [n.strip() for n in data.split("+") if n.strip()]
    if not names:
        raise ValueError(f"data={data!r} names no dataset")
    known = [n for n in DATASET_NAMES if n != "unlabeled"]  # "unlabeled" images come in as unlabeled_dir
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown dataset {unknown[0]!r} in data={data!r}; choose from {known} "
                         f"(several joined by '+', e.g. 'tn3k+tg3k')")
    train_sets, evals = [], {}
    for name in names:
        if name == "phantom":
            kw = dict(image_size=image_size, seed=seed, profile=phantom_profile)
            train_sets.append(build_dataset("phantom", split="train", n=phantom_n, augment=True, **kw))
            if not evals:
                evals = {s: build_dataset("phantom", split=s, n=max(phantom_n // 4, 8), **kw) for s in ("val", "test")}
            continue
        if data_root is None:
            raise ValueError(f"data={data!r} needs data_root (the folder holding {name})")
        root = Path(data_root) / name if len(names) > 1 else Path(data_root)
        train_sets.append(build_dataset(name, root=root, split="train", fold=fold, image_size=image_size, augment=True))
        if not evals and name != "tg3k":
            evals = {s: build_dataset(name, root=root, split=s, fold=fold, image_size=image_size) for s in ("val", "test")}
    if not evals:
        raise ValueError(f"data={data!r} has no nodule-labelled set to validate and test on")
    pools = list(train_sets)
    if unlabeled_dir is not None:
        pools.append(build_dataset("unlabeled", image_dir=unlabeled_dir, image_size=image_size, augment=True))
    if not intensity_aug:  # the paper's augmentations only: flip, rotation, zoom-out (and stitching)
        from ssmt_lib.data import train_transform

        for ds in pools:
            ds.transform = train_transform(image_size, ds.channels, p_intensity=0.0)
    train = build_training_set(train_sets)
    if label_fraction < 1.0:
        keep = max(1, round(label_fraction * len(train)))
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        train = Subset(train, sorted(order[:keep].tolist()))
    return {"train": train, "unlabeled": unlabeled_pool(pools), **evals}


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                device: torch.device | None = None, drop_last: bool = False, shard: bool = False,
                task_pairs: bool = False) -> DataLoader:
    """A DataLoader whose order depends only on ``seed`` (and, under DDP, the rank).

    Args:
        dataset: the data.
        batch_size: images per batch (per process under DDP).
        shuffle: random order (training).
        seed: order seed; every rank uses the same one, so DDP ranks split one permutation.
        num_workers: DataLoader worker processes.
        device: pinned memory when CUDA.
        drop_last: drop a last incomplete batch.
        shard: under DDP (a process group exists) give each rank its share through a
            ``DistributedSampler``; for training loaders only. Evaluation loaders leave it False,
            so every rank sees the whole set and validation/test metrics cover all of it.
        task_pairs: batches of alternating nodule- and gland-labelled images (TRFE-Net's batches,
            :class:`~ssmt_lib.data.TaskPairSampler`; ``shuffle`` is implied), sharded by pairs
            when ``shard``.

    The loader's generator, which seeds its worker processes (and so their augmentation), is
    seeded with ``seed + RANK_SEED_STRIDE * rank``: ranks draw different augmentations.
    """
    from ssmt_lib.data import TaskPairSampler

    cuda = device is not None and device.type == "cuda"
    rank, world = rank_and_world()
    sampler = None
    if task_pairs:
        sampler = TaskPairSampler(dataset, seed, rank=rank if shard else 0, world=world if shard else 1)
        shuffle = False
    elif shard and world > 1:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed,
                                     drop_last=drop_last)
        shuffle = False
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=num_workers,
                      pin_memory=cuda, drop_last=drop_last, persistent_workers=False,
                      generator=torch.Generator().manual_seed(seed + RANK_SEED_STRIDE * rank))


def to_device(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    """Move tensors of a batch to ``device`` (float sizes, optional channels_last images).

    Args:
        batch: a collated batch; non-tensor entries (ids) are kept as they are.
        device: where the tensors go.
        channels_last: store ``image`` in channels_last memory format.
    """
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device, non_blocking=True)
            if k == "size":
                v = v.float()
            if k == "image" and channels_last:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out
