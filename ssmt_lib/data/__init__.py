"""Data for SSMT-Net: one entry point, ``build_dataset``, for the built-in phantom and the public
thyroid ultrasound sets (TN3K, TG3K, DDTI; DDTI's original XML release with TI-RADS as
"ddti_tirads") or any image/mask folder; combined multi-task training sets (nodule + gland labels,
paper Sec. 2.6 and 3.1) and the unlabeled phase-1 pool; augmentation.

    >>> from ssmt_lib.data import build_dataset, build_training_set, unlabeled_pool
    >>> train = build_dataset("phantom", split="train", n=64, image_size=128, augment=True)
    >>> item = train[0]; item["image"].shape, item["nodule_mask"].shape
    (torch.Size([3, 128, 128]), torch.Size([1, 128, 128]))

The phantom generator itself lives in ``ssmt_lib.data.phantom`` (imported when first used).
Modules: ``reading`` (files), ``splitting``, ``datasets`` (item assembly), ``layouts``
(``build_dataset``), ``ddti_tirads`` + ``ddti_tirads_xml``, ``combining``, ``transforms``.
"""
from ssmt_lib.data.combining import (
    MultiTaskDataset,
    TaskPairSampler,
    UnlabeledPool,
    build_training_set,
    task_balanced_sampler,
    unlabeled_pool,
)
from ssmt_lib.data.datasets import ITEM_KEYS, FileDataset, PhantomDataset, SegmentationDataset
from ssmt_lib.data.ddti_tirads import DDTITiradsDataset, TiradsRecord
from ssmt_lib.data.layouts import DATASET_NAMES, build_dataset, dataset_options
from ssmt_lib.data.reading import IMAGE_EXTENSIONS, DatasetError, Record, read_image, read_mask
from ssmt_lib.data.splitting import patient_split
from ssmt_lib.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    denormalize,
    eval_transform,
    normalization,
    stitch,
    train_transform,
)

__all__ = [
    "DATASET_NAMES", "IMAGE_EXTENSIONS", "ITEM_KEYS", "DatasetError", "FileDataset", "MultiTaskDataset",
    "PhantomDataset", "Record", "SegmentationDataset", "TaskPairSampler", "UnlabeledPool", "build_dataset",
    "build_training_set", "dataset_options", "patient_split", "read_image", "read_mask",
    "task_balanced_sampler", "unlabeled_pool", "IMAGENET_MEAN", "IMAGENET_STD", "denormalize",
    "eval_transform", "normalization", "stitch", "train_transform", "DDTITiradsDataset", "TiradsRecord",
]
