"""Training and evaluation of the joint nodule-mask + TI-RADS model (RLAR paper; our protocol).

``fit(cfg, task="tirads", data="phantom" | "ddti_tirads", model_options={...})`` lands in
:func:`fit_tirads`, with the run-folder files of :func:`ssmt_lib.train.fit` (atomic ``last.pt``
per epoch with optimizer, schedule and RNG state, so a killed run resumes; ``best.pt``;
``history.csv``; ``metrics.json``), ``train.*`` for epochs/steps, batch, lr, optimizer, seed and
``train.max_minutes``, ``model.image_size`` for the input side. The model and its loss weights are
:class:`~ssmt_lib.tirads_model.TiradsConfig` (``model_options``).

Losses per batch (weights in the config; **our choices**, the paper's abstract gives none):

    L_seg = seg_weight * (BCE + Dice)                 over images with a nodule mask
    L_cls = cls_weight * (CE + ordinal_weight * squared EMD)(class-weighted)
            + radiomics_weight * MSE(e_rad, standardised target)
                                                      over images with a TI-RADS label / a target
    single_seg: L_seg     single_cls: L_cls     equal: L_seg + L_cls
    uncertainty: exp(-s_1) L_seg + s_1 + exp(-s_2) L_cls + s_2  (Kendall et al.)
    pcgrad: PCGrad of (L_seg, L_cls) on the encoder     rlar: L_seg + L_cls + R (ssmt_lib.rlar)

Every step logs ``cos``: the mean per-sample cosine between the two tasks' latent gradients
(the quantity RLAR penalises), for every multitask method, so the notebook can show it with and
without RLAR. The checkpoint kept is the epoch with the best validation score: macro-F1 for
single_cls, Dice for single_seg, their mean otherwise.

Labels: the phantom's ACR level of the most suspicious visible nodule (TR1-TR5; images without a
nodule have no TI-RADS label and train the mask only); DDTI-TI-RADS's category (six, or grouped,
``TiradsConfig.labels``). The radiomics target is computed once per training image from the
unaugmented image and its ground-truth mask (:mod:`ssmt_lib.radiomics`), standardised with the
training split's mean and std.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ssmt_lib.config import Config, to_dict
from ssmt_lib.losses import bce_dice_loss
from ssmt_lib.metrics import ReferenceMeter, SegmentationMeter
from ssmt_lib.radiomics import Standardizer, feature_vector
from ssmt_lib.rlar import UncertaintyWeighting, pcgrad_backward, rlar_penalty, task_cosine
from ssmt_lib.tirads_model import TiradsConfig, TiradsNet, build_tirads_model, tirads_config

if TYPE_CHECKING:
    from ssmt_lib.train import TrainResult

TIRADS_DATA = {"phantom": ("acr",), "ddti_tirads": ("ddti", "ddti_grouped")}  # data -> label sets it has
TIRADS_KEYS = ("tirads_accuracy", "tirads_macro_f1", "tirads_auc", "tirads_kappa")
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


# ---------------------------------------------------------------------------------------------- metrics

def tirads_metrics(y_true: np.ndarray, prob: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Accuracy, macro-F1 (all K classes), one-vs-rest AUC and quadratic-weighted kappa (scikit-learn).

    Args:
        y_true: (N,) class indices 0..K-1.
        prob: (N, K) class probabilities.
        num_classes: K.

    Returns:
        ``tirads_accuracy``, ``tirads_macro_f1``, ``tirads_auc`` (macro over the classes present with
        both positives and negatives; NaN if none), ``tirads_kappa``, ``confusion_matrix``, ``n``.
    """
    y = np.asarray(y_true, int)
    p = np.asarray(prob, float)
    if y.ndim != 1 or p.shape != (y.size, num_classes) or y.size == 0:
        raise ValueError(f"tirads_metrics: need y (N,) and prob (N, {num_classes}), got {y.shape} and {p.shape}")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"tirads_metrics: labels must be in 0..{num_classes - 1}, got {sorted(set(y.tolist()))}")
    pred = p.argmax(1)
    ks = range(num_classes)
    aucs = [skm.roc_auc_score(y == k, p[:, k]) for k in ks if 0 < (y == k).sum() < y.size]
    with warnings.catch_warnings():  # one class in y and pred: undefined, reported as 0 below
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        kappa = skm.cohen_kappa_score(y, pred, labels=list(ks), weights="quadratic")
    return {"tirads_accuracy": float(skm.accuracy_score(y, pred)),
            "tirads_macro_f1": float(skm.f1_score(y, pred, labels=list(ks), average="macro", zero_division=0)),
            "tirads_auc": float(np.mean(aucs)) if aucs else float("nan"),
            "tirads_kappa": float(0.0 if math.isnan(kappa) else kappa),  # sklearn: NaN when one class only
            "confusion_matrix": skm.confusion_matrix(y, pred, labels=list(ks)).tolist(), "n": int(y.size)}


def majority_tirads(y_true: np.ndarray, train_labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """The majority-class predictor (most frequent training class, one constant score): its metrics."""
    train = np.asarray(train_labels)
    major = int(np.bincount(train[train >= 0], minlength=num_classes).argmax())
    prob = np.zeros((len(y_true), num_classes))
    prob[:, major] = 1.0  # constant: ranks nothing, so every one-vs-rest AUC is 0.5
    out = tirads_metrics(y_true, prob, num_classes)
    out["tirads_auc"] = 0.5 if not math.isnan(out["tirads_auc"]) else out["tirads_auc"]
    out["majority_class"] = major
    return out


@torch.no_grad()
def evaluate_tirads(model: TiradsNet, loader: DataLoader, device: torch.device | None = None,
                    train_labels: np.ndarray | None = None, progress: bool = False) -> dict[str, Any]:
    """TI-RADS metrics (labelled images) and nodule Dice/IoU (masked images), each with its trivial reference.

    Returns:
        ``tirads_*`` (:func:`tirads_metrics`), ``nodule`` (``SegmentationMeter.compute()``),
        ``references``: ``majority`` (:func:`majority_tirads`) and ``nodule`` (``ReferenceMeter``:
        all-foreground / all-background), ``beats_majority`` (macro-F1 above the majority's).
    """
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    k = model.config.num_classes
    seg, floors = SegmentationMeter(compute_hd95=False), ReferenceMeter()
    ys, ps = [], []
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
        out = model(batch["image"].to(device))
        valid = batch["has_nodule"].bool()
        seg.update(out["nodule_logits"].float().cpu(), batch["nodule_mask"], valid, ids=batch["id"])
        floors.update(batch["nodule_mask"], valid)
        lab = batch["label"] >= 0
        ys.append(batch["label"][lab].numpy())
        ps.append(out["tirads_logits"].float().softmax(-1).cpu()[lab].numpy())
    model.train(was)
    y, p = np.concatenate(ys), np.concatenate(ps)
    res = tirads_metrics(y, p, k)
    major = majority_tirads(y, y if train_labels is None else train_labels, k)
    nod = seg.compute()
    res.update(nodule={kk: v for kk, v in nod.items() if not isinstance(v, (list, dict))},
               references={"majority": major, "nodule": floors.compute()},
               beats_majority=bool(res["tirads_macro_f1"] > major["tirads_macro_f1"]))
    return res


# ---------------------------------------------------------------------------------------------- training

def _losses(out: dict[str, Tensor], batch: dict[str, Any], cfg: TiradsConfig,
            weight: Tensor | None) -> dict[str, Tensor]:
    """Per-sample task losses (B,) (0 where a sample has no label), their valid masks, and the scalars."""
    dev = out["tirads_logits"].device
    has_seg, label = batch["has_nodule"].to(dev).bool(), batch["label"].to(dev)
    has_cls, has_rad = label >= 0, batch["has_radiomics"].to(dev).bool()
    seg = bce_dice_loss(out["nodule_logits"], batch["nodule_mask"].to(dev), reduction="none") * has_seg  # (B,)
    w = weight[label.clamp_min(0)] if weight is not None else torch.ones_like(label, dtype=torch.float32)  # (B,)
    ce = F.cross_entropy(out["tirads_logits"].float(), label.clamp_min(0), reduction="none") * w * has_cls  # (B,)
    rad = (out["radiomics"] - batch["radiomics"].to(dev)).pow(2).mean(1) * has_rad  # (B,)
    if cfg.ordinal_weight > 0:  # squared EMD of the cumulative distributions (ordered categories)
        cdf = out["tirads_logits"].float().softmax(-1).cumsum(-1)  # (B, K)
        true = F.one_hot(label.clamp_min(0), cfg.num_classes).float().cumsum(-1)  # (B, K)
        ce = ce + cfg.ordinal_weight * (cdf - true).pow(2).sum(-1) * w * has_cls  # (B,)
    seg_ps = cfg.seg_weight * seg
    cls_ps = cfg.cls_weight * ce + cfg.radiomics_weight * rad
    seg_l = seg_ps.sum() / has_seg.sum().clamp_min(1)
    cls_l = cfg.cls_weight * ce.sum() / (w * has_cls).sum().clamp_min(1e-8) \
        + cfg.radiomics_weight * rad.sum() / has_rad.sum().clamp_min(1)
    return {"seg_ps": seg_ps, "cls_ps": cls_ps, "seg": seg_l, "cls": cls_l, "both": has_seg & (has_cls | has_rad),
            "ce": ce.sum() / (w * has_cls).sum().clamp_min(1e-8), "rad": rad.sum() / has_rad.sum().clamp_min(1)}


def train_step(model: TiradsNet, batch: dict[str, Any], opt: torch.optim.Optimizer, weight: Tensor | None,
               uncertainty: UncertaintyWeighting | None, grad_clip: float | None = None,
               generator: torch.Generator | None = None) -> dict[str, float]:
    """One optimizer step of ``model.config.method``; returns the losses and the task cosine."""
    cfg = model.config
    dev = next(model.parameters()).device
    out = model(batch["image"].to(dev))
    L = _losses(out, batch, cfg, weight)
    both = L["both"]
    multi = cfg.method not in ("single_seg", "single_cls")
    opt.zero_grad(set_to_none=True)
    penalty = out["z"].new_zeros(())
    cos = float("nan")
    if cfg.method == "rlar":
        penalty, c = rlar_penalty(out["z"], L["seg_ps"], L["cls_ps"], cfg.rlar_lambda, cfg.rlar_tau, both)
        cos = float(c[both].mean()) if both.any() else cos
    elif multi and both.any():  # logged for every multitask method (no graph kept)
        cos = float(task_cosine(out["z"], L["seg_ps"], L["cls_ps"], create_graph=False)[both].mean())
    if cfg.method == "pcgrad":
        cos_params = pcgrad_backward([L["seg"], L["cls"]], model.shared_parameters(), generator)
    else:
        loss = {"single_seg": L["seg"], "single_cls": L["cls"], "equal": L["seg"] + L["cls"],
                "rlar": L["seg"] + L["cls"] + penalty}.get(cfg.method)
        if cfg.method == "uncertainty":
            loss = uncertainty([L["seg"], L["cls"]])
        if not torch.isfinite(loss):
            from ssmt_lib.train import NonFiniteLossError

            raise NonFiniteLossError(f"non-finite TI-RADS training loss ({cfg.method}); lower train.lr")
        loss.backward()
        cos_params = float("nan")
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return {"loss_seg": L["seg"].item(), "loss_ce": L["ce"].item(), "loss_radiomics": L["rad"].item(),
            "rlar_penalty": penalty.item(), "cos": cos, "cos_params": cos_params}


def _nanmean(values: list[float]) -> float:
    """Mean of the finite values; NaN when there is none (e.g. ``cos`` of a single-task run)."""
    v = np.asarray(values, float)
    return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else float("nan")


def _score(val: dict[str, Any], method: str) -> float:
    f1, dice = val["tirads_macro_f1"], val["nodule"]["dice_mean"]
    return f1 if method == "single_cls" else dice if method == "single_seg" else (f1 + dice) / 2


def fit_tirads(cfg: Config, data: str = "phantom", data_root: str | Path | None = None,
               out_dir: str | Path | None = None, model_options: dict[str, Any] | None = None,
               datasets: dict[str, TiradsSet] | None = None,
               callbacks: tuple[Callable[[dict[str, Any]], None], ...] = (),
               step_callbacks: tuple[Callable[[dict[str, Any]], None], ...] = (), device: torch.device | None = None,
               progress: bool = True, evaluate_test: bool = True, **data_options: Any) -> TrainResult:
    """Train the joint model; resume from ``out_dir/last.pt`` when it exists. Called by ``fit(task="tirads")``.

    Args:
        cfg: validated configuration (``train.*``, ``model.image_size``, ``model.in_chans``).
        data, data_root, **data_options: passed to :func:`tirads_data` (ignored with ``datasets``).
        out_dir: run folder; None keeps everything in memory.
        model_options: :class:`~ssmt_lib.tirads_model.TiradsConfig` fields (``method="rlar"``, ...).
        datasets: ready :class:`TiradsSet` splits ``train``, ``val`` (and ``test``).
        callbacks: called with each epoch's record; ``step_callbacks`` with each step's.
        device: default CUDA when available, else CPU.
        progress: tqdm bars.
        evaluate_test: evaluate ``best.pt`` (or the best weights in memory) on the test split.

    Returns:
        :class:`ssmt_lib.train.TrainResult` (``test`` holds :func:`evaluate_tirads`'s dict; each
        history record has the epoch means of the step losses and ``cos``; ``steps`` the step records).
    """
    from ssmt_lib import train as T
    from ssmt_lib.resume import check_resume, data_settings, reopened_position

    tcfg = tirads_config(**dict(model_options or {}))  # bad options raise before any work
    if datasets is None:
        check_data(data, tcfg.labels)
    t_cfg = cfg.train
    device = device or T.default_device()
    T.seed_everything(t_cfg.seed)
    run_data = None
    if datasets is None:
        data_options.setdefault("labels", tcfg.labels)
        data_options.setdefault("radiomics_features", tcfg.radiomics_features)
        run_data = data_settings(tirads_data, data, data_root, data_options)
        run_data["radiomics_features"] = list(run_data["radiomics_features"])
        datasets = tirads_data(data, data_root, image_size=cfg.model.image_size, seed=t_cfg.seed, **data_options)
    model = TiradsNet(tcfg, cfg.model.image_size, cfg.model.in_chans).to(device)
    uncertainty = UncertaintyWeighting(2).to(device) if tcfg.method == "uncertainty" else None
    train_labels = np.asarray(datasets["train"].labels)
    weight = None
    if tcfg.class_weight == "balanced":
        from ssmt_lib.classifiers import class_weights

        weight = class_weights(train_labels[train_labels >= 0], tcfg.num_classes).to(device)
    params = nn.ModuleList([model] + ([uncertainty] if uncertainty is not None else []))
    plan = T.phase_plan(cfg, {1: 0, 2: len(datasets["train"])}, has_recon=False)[2]
    opt, sched = T._optimizer(params, cfg, plan["steps"], device,
                              None if t_cfg.max_minutes is None else 60.0 * t_cfg.max_minutes)
    out = Path(out_dir) if out_dir is not None else None
    extra = {"task": "tirads", "model_config": jsonable_config(tcfg)}
    history: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": -1, "val_score": -1.0}
    best_weights = None
    start = 0
    if out is not None and (out / T.CHECKPOINT).is_file():
        resume = T.load_checkpoint(out / T.CHECKPOINT, map_location=device)
        if resume.get("task") != "tirads" or resume.get("model_config") != extra["model_config"]:
            raise ValueError(f"{out / T.CHECKPOINT} is another kind of run (task {resume.get('task')!r}) or another "
                             f"TI-RADS model configuration; use another run folder")
        check_resume(resume, out / T.CHECKPOINT, to_dict(cfg), "tirads", run_data)
        T.load_weights(params, resume["model"], out / T.CHECKPOINT)
        history, best, steps = resume["history"], resume["best"], resume.get("steps", [])
        next_phase, next_epoch = reopened_position(resume, plan["epochs"])  # more epochs extend a finished run
        start = next_epoch if next_phase == 2 else plan["epochs"]
        if 0 < start < plan["epochs"]:
            opt.load_state_dict(resume["optimizer"])
            sched.load_state_dict(resume["scheduler"])
        T._set_rng_state(resume["rng"])
    gen = torch.Generator().manual_seed(tcfg.pcgrad_seed)
    for epoch in range(start, plan["epochs"]):
        loader = T.make_loader(datasets["train"], t_cfg.batch_size, True, seed=t_cfg.seed * 100_003 + 3 * 1009 + epoch,
                               num_workers=t_cfg.num_workers, device=device)
        t0, recs = time.perf_counter(), []
        model.train()
        for batch in tqdm(loader, desc=f"tirads epoch {epoch + 1}", leave=False, disable=not progress):
            rec = train_step(model, batch, opt, weight, uncertainty, t_cfg.grad_clip, gen)
            sched.step()
            rec.update(epoch=epoch + 1, step=sched.steps)
            recs.append(rec)
            for cb in step_callbacks:
                cb(rec)
            if sched.done:
                break
        steps.extend(recs)
        record = {"phase": 2, "epoch": epoch + 1, "step": sched.steps, "lr": opt.param_groups[0]["lr"],
                  "seconds": round(time.perf_counter() - t0, 3),
                  **{k: _nanmean([r[k] for r in recs]) for k in ("loss_seg", "loss_ce", "loss_radiomics",
                                                                 "rlar_penalty", "cos")}}
        val = evaluate_tirads(model, T.make_loader(datasets["val"], t_cfg.batch_size, False, 0, t_cfg.num_workers,
                                                   device), device, train_labels)
        record.update(val_tirads_macro_f1=val["tirads_macro_f1"], val_nodule_dice=val["nodule"]["dice_mean"],
                      val_score=_score(val, tcfg.method))
        if record["val_score"] > best["val_score"]:
            best = {"epoch": epoch, "val_score": record["val_score"], "val_tirads_macro_f1": val["tirads_macro_f1"],
                    "val_nodule_dice": val["nodule"]["dice_mean"]}
            best_weights = {k: v.detach().clone() for k, v in params.state_dict().items()}
            if out is not None:
                T.save_checkpoint(out / T.BEST, {**T._state(params, cfg, "tirads", history + [record], best,
                                                            data=run_data), **extra})
        history.append(record)
        last = epoch == plan["epochs"] - 1 or sched.done
        if out is not None:
            state = T._state(params, cfg, "tirads", history, best, phase=2, next_phase=3 if last else 2,
                             next_epoch=0 if last else epoch + 1, opt=opt, sched=sched, data=run_data)
            T.save_checkpoint(out / T.CHECKPOINT, {**state, **extra, "steps": steps})
            T.write_history(out, history)
        for cb in callbacks:
            cb(record)
        if last:
            break
    result = T.TrainResult(model=model, history=history, best=best, out_dir=out,
                           stopped_early=sched.steps < plan["steps"])
    result.steps = steps  # per-step records (losses, cosines)
    if evaluate_test and "test" in datasets:
        eval_model = model
        if out is not None and (out / T.BEST).is_file():
            eval_model = T.model_from_checkpoint(out / T.BEST, device)[0]
        elif best_weights is not None:
            eval_model = TiradsNet(tcfg, cfg.model.image_size, cfg.model.in_chans).to(device)
            holder = nn.ModuleList([eval_model] + ([UncertaintyWeighting(2)] if uncertainty is not None else []))
            holder.load_state_dict(best_weights)
        result.test = evaluate_tirads(eval_model, T.make_loader(datasets["test"], t_cfg.batch_size, False, 0,
                                                                t_cfg.num_workers, device), device, train_labels)
    if out is not None:
        T.write_metrics(out / "metrics.json", cfg, history, best, result.test, "tirads")
    return result


def jsonable_config(cfg: TiradsConfig) -> dict[str, Any]:
    """The config as plain types (tuples as lists), as stored in checkpoints."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def model_from_tirads_checkpoint(ckpt: dict[str, Any], image_size: int, in_chans: int) -> nn.Module:
    """The model of a ``task="tirads"`` checkpoint (weights not loaded): a :class:`TiradsNet`,
    inside a ``ModuleList`` with the uncertainty weights when the run learnt them (as it was saved)."""
    model = build_tirads_model(ckpt["model_config"], image_size, in_chans)
    if ckpt["model_config"]["method"] == "uncertainty":
        return _Holder(model, UncertaintyWeighting(2))
    return _Holder(model)


class _Holder(nn.ModuleList):
    """``ModuleList([model, (uncertainty)])`` as saved by :func:`fit_tirads`, callable as the model."""

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__(modules)
        self.config = modules[0].config

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self[0](x)


# ---------------------------------------------------------------------------------------------- CLI

def cli_train(args: Any, cfg: Config, options: dict[str, Any]) -> int:
    """``python -m ssmt_lib train --task tirads``: prints the test metrics beside their references."""
    from ssmt_lib.train import fit, jsonable

    if args.unlabeled_dir is not None or args.fold != 0 or args.epochs_pretrain is not None or args.model:
        raise SystemExit("--unlabeled-dir, --fold, --epochs-pretrain and --model do not apply to --task tirads "
                         "(the model is set with --model-option, e.g. method=rlar encoder=cnn)")
    data_opts = {"phantom_n": args.phantom_n} if args.phantom_n is not None else {}
    result = fit(cfg, task="tirads", data=args.data, data_root=args.data_root, out_dir=args.out,
                 model_options=options, progress=not args.no_progress, **data_opts)
    print(json.dumps(jsonable({"out": str(args.out), "best": result.best, "stopped_early": result.stopped_early,
                               "test": summary(result.test)}), indent=1, default=str))
    return 0


def summary(test: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of :func:`evaluate_tirads` with their trivial references."""
    if not test:
        return {}
    ref = test["references"]
    keep = ("dice_mean", "iou_mean")
    return {**{k: test[k] for k in TIRADS_KEYS}, "majority": {k: ref["majority"][k] for k in TIRADS_KEYS},
            "beats_majority": test["beats_majority"], "nodule": {k: test["nodule"][k] for k in keep},
            "nodule_references": {n: {k: ref["nodule"][n][k] for k in keep}
                                  for n in ("all_foreground", "all_background")}}


def cli_evaluate(args: Any, model: nn.Module, cfg: Config, ckpt: dict[str, Any], device: torch.device) -> int:
    """``evaluate`` on a ``task="tirads"`` checkpoint: metrics JSON with the references."""
    from ssmt_lib.resume import checkpoint_evaluation_data
    from ssmt_lib.train import jsonable, make_loader

    settings = checkpoint_evaluation_data(args, ckpt, tirads_data, "TI-RADS model")
    settings["radiomics_features"] = tuple(settings.get("radiomics_features") or ()) or None
    check_data(settings["data"], ckpt["model_config"]["labels"])
    datasets = tirads_data(**settings, image_size=cfg.model.image_size, seed=cfg.train.seed)
    loader = make_loader(datasets[args.split], cfg.train.batch_size, False, 0, 0, device)
    full = evaluate_tirads(model, loader, device, train_labels=datasets["train"].labels)
    metrics = jsonable({**summary(full), "confusion_matrix": full["confusion_matrix"], "n": full["n"],
                        "checkpoint": str(args.checkpoint), "task": "tirads", "split": args.split,
                        "method": ckpt["model_config"]["method"], "data_settings": settings})
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name(f"eval_{settings['data']}_{args.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics, indent=1))
    return 0
