"""Training and evaluation of the benign/malignant classifiers (dual-stage paper, Sec. 3.4.5-3.4.9).

The paper trains each classifier with cross-entropy (eq. 9) on the softmax of eq. 8 and Adam,
watching the validation set "to determine when the network has completed the learning". Here the
same run machinery as :func:`ssmt_lib.train.fit` does that (``fit(cfg, task="classify",
model_name="resnet18")`` lands in :func:`fit_classifier`): per-epoch atomic ``last.pt`` with
optimizer, schedule and RNG state (a killed run resumes where it stopped, the resume checks of
:mod:`ssmt_lib.resume` apply), ``best.pt``, ``history.csv``, ``metrics.json``, tqdm bars, the
``train.optimizer`` (Adam by default, the paper's) with ``train.lr`` annealed by the same cosine
over ``train.epochs`` (or ``train.steps``) and ``train.max_minutes``. Differences from
segmentation: one phase, cross-entropy with optional balanced class weights (``class_weight`` of
:class:`~ssmt_lib.classifiers.ClassifierConfig`; the phantom has ~11 % malignant images), no
stitching (it would merge two labels), and the checkpoint kept is the epoch with the best
validation score ``(AUC + balanced accuracy) / 2``, the two figures the majority-class reference
cannot fake (the accuracy when a small validation split holds one class only).

Labels: ``malignant`` of each item (the phantom's drawn label; DDTI-TI-RADS's TI-RADS-derived 4a-5
convention). Images without a label (DDTI cases without a TI-RADS value) are left out here and
stay in the segmentation data.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ssmt_lib.checkpoints import (BEST, CHECKPOINT, checkpoint_state, load_checkpoint, load_weights,
                                  model_from_checkpoint, save_checkpoint, set_rng_state)
from ssmt_lib.classification_metrics import with_reference
from ssmt_lib.classifiers import CLASSIFIER_NAMES, class_weights
from ssmt_lib.config import Config, to_dict
from ssmt_lib.distributed import default_device, seed_everything
from ssmt_lib.evaluation import write_history, write_metrics
from ssmt_lib.loaders import make_loader

if TYPE_CHECKING:
    from ssmt_lib.train import TrainResult

CLASSIFY_DATA = ("phantom", "ddti_tirads")


class ClassificationSet(Dataset):
    """Labelled images of a dataset from ``build_dataset``: items ``image``, ``label`` (0/1), ``id``, ``patient``.

    Args:
        source: a dataset whose items carry ``malignant`` (bool, or int with -1 = unknown).
    """

    def __init__(self, source: Dataset) -> None:
        self.source = source
        labels = self._all_labels(source)
        self.indices = np.flatnonzero(labels >= 0)  # (N,) positions with a label
        self.labels = labels[self.indices].astype(np.int64)  # (N,)
        self.unlabeled = int((labels < 0).sum())
        if not len(self.indices):
            raise ValueError(f"{getattr(source, 'name', 'dataset')} ({getattr(source, 'split', '?')}) has no image "
                             f"with a benign/malignant label")

    @staticmethod
    def _all_labels(source: Dataset) -> np.ndarray:
        if hasattr(source, "labels") and callable(source.labels):  # ddti_tirads: from the XML, no image read
            return np.asarray(source.labels("malignant"))
        if hasattr(source, "load_raw"):  # phantom: the generator's label (renders, but skips augmentation)
            out = [source.load_raw(i)["extras"].get("malignant", -1) for i in range(len(source))]
            return np.asarray([int(v) for v in out])
        raise TypeError(f"cannot read labels of {type(source).__name__}; use build_dataset('phantom'|'ddti_tirads')")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.source[int(self.indices[i])]
        label = int(item["malignant"])
        if label != self.labels[i]:  # augmentation never changes a label; a mismatch is a bug
            raise RuntimeError(f"label of {item['id']} changed between indexing and loading")
        return {"image": item["image"], "label": label, "id": item["id"], "patient": item["patient"]}


def classification_data(data: str = "phantom", data_root: str | Path | None = None, image_size: int = 128,
                        seed: int = 0, phantom_n: int = 256, phantom_profile: str = "default",
                        **options: Any) -> dict[str, ClassificationSet]:
    """``train`` (augmented), ``val`` and ``test`` :class:`ClassificationSet` of one dataset.

    Args:
        data: "phantom" (its ``malignant`` label) or "ddti_tirads" (TI-RADS-derived label).
        data_root: the DDTI-TI-RADS folder (None for the phantom).
        image_size: side in pixels.
        seed: phantom seed.
        phantom_n: phantom training images (val and test get a quarter each, at least 8).
        phantom_profile: phantom scanner profile.
        **options: more ``build_dataset`` options for ddti_tirads (``layout``, ``val_fraction`` ...).
    """
    from ssmt_lib.data import build_dataset

    if data not in CLASSIFY_DATA:
        raise ValueError(f"classification data must be one of {CLASSIFY_DATA}, got {data!r}")
    if data == "phantom":
        if data_root is not None or options:
            raise ValueError(f"the phantom takes no data_root or options for classification, got {data_root!r}, "
                             f"{sorted(options)}")
        kw = dict(image_size=image_size, seed=seed, profile=phantom_profile, stitch_prob=0.0)
        sets = {s: build_dataset("phantom", split=s, n=phantom_n if s == "train" else max(phantom_n // 4, 8),
                                 augment=s == "train", **kw) for s in ("train", "val", "test")}
    else:
        if data_root is None:
            raise ValueError("data='ddti_tirads' needs data_root (the folder of the case XML files)")
        sets = {s: build_dataset("ddti_tirads", root=data_root, split=s, image_size=image_size, augment=s == "train",
                                 **options) for s in ("train", "val", "test")}
    return {s: ClassificationSet(ds) for s, ds in sets.items()}


@torch.no_grad()
def predict_proba(model: nn.Module, loader: DataLoader, device: torch.device | None = None,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(labels, P(malignant), ids)`` of a classifier over a loader of :class:`ClassificationSet` items."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    ys, ps, ids = [], [], []
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
        logits = model(batch["image"].to(device)).float()  # (B, K)
        ps.append(logits.softmax(-1)[:, 1].cpu().numpy())
        ys.append(batch["label"].numpy())
        ids.extend(batch["id"])
    model.train(was_training)
    return np.concatenate(ys), np.concatenate(ps), ids


def evaluate_classifier(model: nn.Module, loader: DataLoader, device: torch.device | None = None,
                        train_labels: np.ndarray | None = None, progress: bool = False) -> dict[str, Any]:
    """Classification metrics with the majority-class reference (:func:`~ssmt_lib.classification_metrics.with_reference`).

    Args:
        model: a classifier (logits (B, K)).
        loader: batches of :class:`ClassificationSet` items.
        device: default the model's.
        train_labels: labels the majority class is taken from (the training split); None = these.
        progress: tqdm bar.

    Returns:
        ``accuracy``, ``balanced_accuracy``, ``precision``, ``recall``, ``f1``, ``auc``,
        ``confusion_matrix``, ``n``, ``positives``, ``majority`` {the same keys}, ``beats_majority``.
    """
    y, p, _ = predict_proba(model, loader, device, progress)
    return with_reference(y, p, train_labels)


def _check(model_name: str | None) -> None:
    if model_name not in CLASSIFIER_NAMES:
        raise ValueError(f"task='classify' needs a classifier model_name, one of {list(CLASSIFIER_NAMES)}; "
                         f"got {model_name!r}")


def fit_classifier(cfg: Config, data: str = "phantom", data_root: str | Path | None = None,
                   out_dir: str | Path | None = None, model_name: str | None = "resnet18",
                   model_options: dict[str, Any] | None = None, datasets: dict[str, Dataset] | None = None,
                   callbacks: tuple[Callable[[dict[str, Any]], None], ...] = (), device: torch.device | None = None,
                   progress: bool = True, evaluate_test: bool = True, **data_options: Any) -> TrainResult:
    """Train a classifier; resume from ``out_dir/last.pt`` when it exists. Called by ``fit(task="classify")``.

    Args:
        cfg: validated configuration; uses ``train.*`` (epochs/steps, batch size, lr, optimizer,
            seed, max_minutes, grad_clip, num_workers), ``model.image_size``, ``model.baseline_size``
            (the classifier's size, "tiny" / "paper") and ``model.pretrained_file`` (local weights).
        data, data_root, **data_options: passed to :func:`classification_data` (ignored with ``datasets``).
        out_dir: run folder; None keeps everything in memory.
        model_name: one of ``CLASSIFIER_NAMES``.
        model_options: more :class:`~ssmt_lib.classifiers.ClassifierConfig` fields
            (``class_weight="none"``, ``dropout=0.2`` ...); stored in the checkpoint.
        datasets: ready :class:`ClassificationSet` splits ``train``, ``val`` (and ``test``).
        callbacks: called with each epoch's record.
        device: default CUDA when available, else CPU.
        progress: tqdm bars.
        evaluate_test: evaluate ``best.pt`` on the test split at the end.

    Returns:
        :class:`ssmt_lib.train.TrainResult` (``test`` holds :func:`evaluate_classifier`'s dict).
    """
    from ssmt_lib.model import build_model
    from ssmt_lib.resume import check_resume, data_settings, reopened_position
    from ssmt_lib.train import TrainResult, make_optimizer, phase_plan

    _check(model_name)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would write the same run folder
        raise ValueError("fit(task='classify') runs in one process; torchrun/DDP is supported for segmentation only")
    t_cfg = cfg.train
    device = device or default_device()
    seed_everything(t_cfg.seed)
    options = dict(model_options or {})
    if cfg.model.pretrained_file is not None:
        options.setdefault("pretrained_file", cfg.model.pretrained_file)
    model = build_model(model_name, preset=cfg.model.baseline_size, image_size=cfg.model.image_size, **options).to(device)
    run_data = None
    if datasets is None:
        run_data = data_settings(classification_data, data, data_root, data_options)
        datasets = classification_data(data, data_root, image_size=cfg.model.image_size, seed=t_cfg.seed,
                                       **data_options)
    train_labels = np.asarray(datasets["train"].labels)
    weight = class_weights(train_labels).to(device) if model.config.class_weight == "balanced" else None
    out = Path(out_dir) if out_dir is not None else None
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": -1, "val_score": -1.0, "val_auc": float("nan"), "val_balanced_accuracy": float("nan")}
    plan = phase_plan(cfg, {1: 0, 2: len(datasets["train"])}, has_recon=False)[2]  # one phase: "phase 2"
    start, resume = 0, None
    if out is not None and (out / CHECKPOINT).is_file():
        resume = load_checkpoint(out / CHECKPOINT, map_location=device)
        if resume.get("task") != "classify":
            raise ValueError(f"{out / CHECKPOINT} is a segmentation run; use another run folder for a classifier")
        check_resume(resume, out / CHECKPOINT, to_dict(cfg), model_name, run_data)
        load_weights(model, resume["model"], out / CHECKPOINT)
        history, best = resume["history"], resume["best"]
        next_phase, next_epoch = reopened_position(resume, plan["epochs"])  # more epochs extend a finished run
        start = plan["epochs"] if next_phase == 3 else next_epoch
        set_rng_state(resume["rng"])
    opt, sched = make_optimizer(model, cfg, plan["steps"], device,
                                None if t_cfg.max_minutes is None else 60.0 * t_cfg.max_minutes)
    if resume is not None and 0 < start < plan["epochs"] and "optimizer" in resume:
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
    extra = {"task": "classify", "model_config": dataclasses.asdict(model.config)}
    stopped_early = False
    for epoch in range(start, plan["epochs"]):
        loader = make_loader(datasets["train"], t_cfg.batch_size, True, seed=t_cfg.seed * 100_003 + 2 * 1009 + epoch,
                             num_workers=t_cfg.num_workers, device=device)
        record = train_classifier_epoch(model, loader, opt, sched, weight, cfg, epoch, device, progress, out)
        val = evaluate_classifier(model, make_loader(datasets["val"], t_cfg.batch_size, False, 0, t_cfg.num_workers,
                                                     device), device, train_labels)
        record.update({f"val_{k}": val[k] for k in ("accuracy", "balanced_accuracy", "auc", "f1")})
        pair = np.array([val["auc"], val["balanced_accuracy"]])  # NaN when the val split has one class only
        record["val_score"] = float(pair[np.isfinite(pair)].mean()) if np.isfinite(pair).any() else val["accuracy"]
        if record["val_score"] > best["val_score"]:
            best = {"epoch": epoch, "val_score": record["val_score"], "val_auc": val["auc"],
                    "val_balanced_accuracy": val["balanced_accuracy"]}
            if out is not None:
                save_checkpoint(out / BEST, {**checkpoint_state(model, cfg, model_name, history + [record], best,
                                                          data=run_data), **extra})
        history.append(record)
        last = epoch == plan["epochs"] - 1 or sched.done
        if out is not None:
            state = checkpoint_state(model, cfg, model_name, history, best, phase=2, next_phase=3 if last else 2,
                                     next_epoch=0 if last else epoch + 1, opt=opt, sched=sched, data=run_data)
            save_checkpoint(out / CHECKPOINT, {**state, **extra})
            write_history(out, history)
        for cb in callbacks:
            cb(record)
        if last:
            stopped_early = sched.steps < plan["steps"]
            break
    result = TrainResult(model=model, history=history, best=best, out_dir=out, stopped_early=stopped_early)
    if evaluate_test and "test" in datasets:
        eval_model = model
        if out is not None and (out / BEST).is_file():
            eval_model, _, _ = model_from_checkpoint(out / BEST, device)
        result.test = evaluate_classifier(eval_model, make_loader(datasets["test"], t_cfg.batch_size, False, 0,
                                                                  t_cfg.num_workers, device), device, train_labels)
    if out is not None:
        if not result.test and (out / "metrics.json").is_file():  # a finished run resumed keeps its test metrics
            result.test = json.loads((out / "metrics.json").read_text()).get("test", {})
        write_metrics(out / "metrics.json", cfg, history, best, result.test, model_name)
    return result


def train_classifier_epoch(model: nn.Module, loader: DataLoader, opt, sched, weight: torch.Tensor | None, cfg: Config,
                           epoch: int, device: torch.device, progress: bool, out: Path | None) -> dict[str, Any]:
    """One epoch of eq. 9 (cross-entropy, optionally class-weighted); returns loss, accuracy, lr, images/s."""
    from ssmt_lib.train import NonFiniteLossError

    model.train()
    cuda = device.type == "cuda"
    total, correct, n, t0 = 0.0, 0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"classify epoch {epoch + 1}", leave=False, disable=not progress)
    for step, batch in enumerate(bar):
        images, labels = batch["image"].to(device), batch["label"].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and cfg.train.amp):
            logits = model(images)  # (B, K)
        loss = F.cross_entropy(logits.float(), labels, weight=weight)
        if not torch.isfinite(loss):
            kept = out / CHECKPOINT if out is not None and (out / CHECKPOINT).is_file() else "none written yet"
            raise NonFiniteLossError(f"non-finite classification loss at epoch {epoch + 1}, step {step}; training "
                                     f"stopped, the last good checkpoint ({kept}) is kept; lower train.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        sched.step()
        total += loss.item() * len(labels)
        correct += int((logits.argmax(-1) == labels).sum())
        n += len(labels)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if sched.done:
            break
    seconds = time.perf_counter() - t0
    return {"phase": 2, "epoch": epoch + 1, "step": sched.steps, "lr": opt.param_groups[0]["lr"],
            "seconds": round(seconds, 3), "images_per_s": n / max(seconds, 1e-9), "loss": total / max(n, 1),
            "train_accuracy": correct / max(n, 1)}
