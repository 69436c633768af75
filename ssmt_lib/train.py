"""Two-phase training of SSMT-Net: :func:`fit` and its epoch loop (Farooq et al., *Anatomy-Guided
Representation Learning Using a Transformer-Based Network for Thyroid Nodule Segmentation in
Ultrasound Images*, Sec. 2.6; settings Sec. 3.1).

Phase 1 (unsupervised): only the reconstruction path (encoder + fusion + reconstructor) trains, on
the unlabeled pool (every training image of every set, never test images), with the Charbonnier
loss of eq. 13. Optionally random 16x16 patches of the input are blanked (masked-image modelling,
``train.mask_ratio``; beyond the paper). Phase 2 (supervised): all enabled tasks with eq. 12.
Each phase has its own Adam optimizer (L2 decay as in the paper, or AdamW's decoupled decay,
``train.optimizer``) and cosine annealing from ``lr`` to ``min_lr``.

Reliability (DESIGN.md section 6): a checkpoint is written atomically at the end of every epoch
with model, optimizer, scheduler and RNG state, loadable with ``torch.load(weights_only=True)``.
The data order of an epoch depends only on (seed, phase, epoch), and the augmentation RNG is
restored from the checkpoint, so a killed run resumes to the same weights as an unbroken run.
A non-finite loss stops training with :class:`NonFiniteLossError`; the last good checkpoint stays,
and no checkpoint is written unless every weight and optimizer-state tensor is finite. A run holds
a lock on its folder (``ssmt_lib.runlock``); a resume is checked against the checkpoint's config and
data settings, and only extending ``train.epochs`` (or a few settings that change no weight) is
allowed (``ssmt_lib.resume``). The pieces live beside this module: the run's datasets and loaders
in :mod:`ssmt_lib.loaders`, checkpoints and RNG state in :mod:`ssmt_lib.checkpoints`, scoring and
the result files in :mod:`ssmt_lib.evaluation`, device, seeds and DDP helpers in
:mod:`ssmt_lib.distributed`.

GPU path: bf16 autocast, SDPA attention (the default whenever no weights are recorded),
channels_last, fused Adam, pinned-memory workers, and DistributedDataParallel under ``torchrun``:
``train.batch_size`` is per process; each rank trains on its ``DistributedSampler`` share with its
own augmentation seeds, validation and test are scored by rank 0 on the whole set (evaluation
loaders are never sharded), and ``train.sync_batchnorm`` turns on SyncBatchNorm (CUDA).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from ssmt_lib.checkpoints import (BEST, CHECKPOINT, checkpoint_state, gather_rng_states, load_checkpoint, load_weights,
                                  model_from_checkpoint, rank_rng_state, save_checkpoint, set_rng_state)
from ssmt_lib.config import Config, to_dict
from ssmt_lib.distributed import (RANK_SEED_STRIDE, RankZeroClock, default_device, is_main_process,
                                  seed_everything)
from ssmt_lib.evaluation import evaluate, write_history, write_metrics
from ssmt_lib.loaders import build_data, make_loader, to_device
from ssmt_lib.losses import total_loss
from ssmt_lib.model import build_model
from ssmt_lib.resume import check_resume, data_settings, non_finite_state, reopened_position
from ssmt_lib.runlock import locks_run_folder
from ssmt_lib.schedule import BudgetCosine


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss is NaN or infinite; the last good checkpoint is kept."""


def mask_patches(images: Tensor, ratio: float, patch: int = 16) -> Tensor:
    """Masked-image modelling input: blank a random ``ratio`` of ``patch`` x ``patch`` squares.

    Args:
        images: (B, C, H, W).
        ratio: share of squares blanked (``train.mask_ratio``); 0 returns ``images``.
        patch: the square side in pixels.
    """
    if ratio <= 0:
        return images
    b, _, h, w = images.shape
    keep = (torch.rand(b, 1, h // patch, w // patch, device=images.device) >= ratio).to(images.dtype)
    return images * nn.functional.interpolate(keep, size=(h, w), mode="nearest")  # (B, C, H, W)


# ----------------------------------------------------------------------------------------------
# training


@dataclass
class TrainResult:
    """What :func:`fit` returns."""

    model: nn.Module  # the model after the last epoch (best weights are in best.pt)
    history: list[dict[str, Any]]  # one record per epoch (both phases)
    best: dict[str, Any]  # {"epoch", "val_nodule_dice", "val_nodule_dice_pooled"} of the selected checkpoint
    out_dir: Path | None  # run folder (checkpoints, metrics.json, history.csv) or None
    test: dict[str, Any] = field(default_factory=dict)  # test metrics of the best checkpoint
    stopped_early: bool = False  # phase 2 ended on train.max_minutes before its planned steps


def make_optimizer(model: nn.Module, cfg: Config, total_steps: int, device: torch.device,
                   budget_seconds: float | None = None) -> tuple[torch.optim.Optimizer, BudgetCosine]:
    """Adam/AdamW/SGD and the per-step cosine that ends at ``min_lr`` after ``total_steps`` or ``budget_seconds``.

    Args:
        model: its trainable parameters are optimized.
        cfg: ``train.optimizer``, ``lr``, ``min_lr``, ``weight_decay``, ``momentum``.
        total_steps: optimizer steps of the phase.
        device: fused kernels on CUDA and CPU.
        budget_seconds: the phase's time budget (``train.max_minutes``), or None.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[cfg.train.optimizer]
    extra = {"momentum": cfg.train.momentum} if cfg.train.optimizer == "sgd" else {}  # TRFE-Net's SGD
    # fused: one kernel for all parameters (CUDA and, since torch 2.4, CPU: ~7x faster there than the loop)
    opt = opt_class(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=device.type in ("cuda", "cpu"),
                    **extra)
    sched = BudgetCosine(opt, cfg.train.lr, cfg.train.min_lr, max(1, total_steps), budget_seconds)
    return opt, sched


def phase_plan(cfg: Config, pool_sizes: dict[int, int], has_recon: bool, world_size: int = 1) -> dict[int, dict[str, int]]:
    """Steps per epoch, epochs and optimizer steps of each phase (``train.steps*`` override epochs).

    Args:
        cfg: configuration.
        pool_sizes: images in each phase's pool, ``{1: unlabeled, 2: train}``.
        has_recon: whether the model has a reconstructor (phase 1 is skipped without one).
        world_size: processes under DDP (each step sees ``world_size`` batches).

    Returns:
        ``{phase: {"steps_per_epoch", "epochs", "steps"}}``; a phase with 0 steps is skipped.
    """
    t = cfg.train
    wanted = {1: (t.epochs_pretrain if has_recon else 0, t.steps_pretrain if has_recon else 0),
              2: (t.epochs, t.steps)}
    plan = {}
    for phase, (epochs, steps) in wanted.items():
        per_epoch = max(1, math.ceil(pool_sizes[phase] / (t.batch_size * world_size)))
        total = epochs * per_epoch if steps is None else steps
        plan[phase] = {"steps_per_epoch": per_epoch, "epochs": math.ceil(total / per_epoch), "steps": total}
    return plan


def _check_model_name(model_name: str | None) -> None:
    """A ``model_name`` must be a baseline or a Table 2 segmenter of the dual-stage paper (None trains SSMT-Net)."""
    from ssmt_lib.baselines import ALIASES, BASELINE_NAMES
    from ssmt_lib.segmenters import SEGMENTER_NAMES

    known = [*BASELINE_NAMES, *ALIASES, *SEGMENTER_NAMES]
    if model_name is not None and model_name not in known:
        raise ValueError(f"unknown model {model_name!r}: choose a baseline or segmenter from {known} (a classifier "
                         f"needs task='classify' / --task classify), or give no model name (no --model) to train SSMT-Net")


def epoch_images(dataset: Dataset, train_cfg: Any) -> int:
    """Images one phase-2 epoch draws from ``dataset`` (all ranks together, before DDP padding).

    ``len(dataset)``, or twice the nodule images with ``train.task_pairs`` (each paired with a
    gland image, :class:`~ssmt_lib.data.TaskPairSampler`).
    """
    if not train_cfg.task_pairs:
        return len(dataset)
    from ssmt_lib.data import TaskPairSampler

    return len(TaskPairSampler(dataset, seed=0))


def _check_baseline_protocol(cfg: Config, model_name: str) -> None:
    """Warn when a baseline is trained with another loss than its paper's (``BASELINE_SETTINGS``)."""
    import warnings

    from ssmt_lib.baselines import ALIASES
    from ssmt_lib.config import BASELINE_SETTINGS

    canonical = ALIASES[model_name][0] if model_name in ALIASES else model_name
    wanted = BASELINE_SETTINGS[cfg.model.baseline_size].get(canonical, {}).get("loss.objective", "eq12")
    if cfg.loss.objective != wanted:
        warnings.warn(f"fit(model_name={model_name!r}) with loss.objective={cfg.loss.objective!r}: its paper's loss "
                      f"is {wanted!r}; make_config({cfg.model.baseline_size!r}, baseline={model_name!r}) sets it "
                      f"(CLI: --model {model_name})", stacklevel=3)


@locks_run_folder("out_dir")  # one run per folder (ssmt_lib.runlock)
def fit(cfg: Config, data: str = "phantom", data_root: str | Path | None = None, out_dir: str | Path | None = None,
        model_name: str | None = None, datasets: dict[str, Dataset] | None = None,
        callbacks: tuple[Callable[[dict[str, Any]], None], ...] = (), device: torch.device | None = None,
        progress: bool = True, evaluate_test: bool = True, init_checkpoint: str | Path | None = None,
        task: str = "segment", model_options: dict[str, Any] | None = None, **data_options: Any) -> TrainResult:
    """Train phase 1 then phase 2; resume from ``out_dir/last.pt`` when it exists.

    Args:
        cfg: validated configuration (``make_config``).
        data, data_root, **data_options: passed to :func:`build_data` (ignored when ``datasets`` is given).
        out_dir: run folder; None keeps everything in memory (no resume).
        model_name: a baseline name ("unet", "trfe", ...) instead of SSMT-Net; phase 1 is skipped
            for models without a reconstructor.
        datasets: ready datasets with keys train, val, unlabeled (and optionally test).
        callbacks: called with each epoch's record (a dict) after it is logged.
        device: default CUDA if available, else CPU.
        progress: tqdm bars.
        evaluate_test: evaluate ``best.pt`` on the test split at the end.
        init_checkpoint: start from these weights (e.g. a model trained on another dataset);
            with ``train.freeze_encoder`` only the decoders and heads are fine-tuned.
        task: "segment" (the above), or "classify": a benign/malignant classifier of the dual-stage
            paper (``model_name`` in ``classifiers.CLASSIFIER_NAMES``, data "phantom" or "ddti_tirads"),
            trained by :func:`ssmt_lib.train_classify.fit_classifier` with the same run folder files.
        model_options: classifier config fields (``task="classify"``), e.g. ``{"class_weight": "none"}``;
            with ``task="tirads"`` (joint nodule mask + TI-RADS, :func:`ssmt_lib.train_tirads.fit_tirads`)
            the :class:`~ssmt_lib.tirads_model.TiradsConfig` fields, e.g. ``{"method": "rlar"}``.

    Returns:
        :class:`TrainResult`.
    """
    if task not in ("segment", "classify", "tirads"):
        raise ValueError(f"fit: task must be 'segment' or 'classify' (or 'tirads'), got {task!r}")
    if task == "tirads":  # the RLAR paper's joint nodule mask + TI-RADS category (ssmt_lib.train_tirads)
        if init_checkpoint is not None or model_name is not None:
            raise ValueError("fit(task='tirads') takes its model from model_options (TiradsConfig), not "
                             "model_name or init_checkpoint")
        from ssmt_lib.train_tirads import fit_tirads

        return fit_tirads(cfg, data=data, data_root=data_root, out_dir=out_dir, model_options=model_options,
                          datasets=datasets, callbacks=callbacks, device=device, progress=progress,
                          evaluate_test=evaluate_test, **data_options)
    if task == "classify":  # the dual-stage paper's first stage
        if init_checkpoint is not None:
            raise ValueError("fit(task='classify') takes pretrained weights from model.pretrained_file, not init_checkpoint")
        from ssmt_lib.train_classify import fit_classifier

        return fit_classifier(cfg, data=data, data_root=data_root, out_dir=out_dir, model_name=model_name,
                              model_options=model_options, datasets=datasets, callbacks=callbacks, device=device,
                              progress=progress, evaluate_test=evaluate_test, **data_options)
    if model_options:
        raise ValueError("fit: model_options apply to task='classify' only")
    t_cfg = cfg.train
    _check_model_name(model_name)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = device or default_device()
    cuda = device.type == "cuda"
    if distributed and cuda:
        torch.cuda.set_device(device)  # collectives on objects (all_gather_object) use the current device
    if distributed and t_cfg.sync_batchnorm and not cuda:
        raise ValueError("train.sync_batchnorm=True needs CUDA: torch's SyncBatchNorm has no CPU kernel "
                         "(under gloo on CPU leave it False: each process normalizes with its own batch)")
    seed_everything(t_cfg.seed)
    if model_name is not None:
        _check_baseline_protocol(cfg, model_name)
    model = (build_model(model_name, preset=cfg.model.baseline_size, image_size=cfg.model.image_size)
             if model_name else build_model(config=cfg))
    if init_checkpoint is not None:
        load_weights(model, load_checkpoint(init_checkpoint)["model"], init_checkpoint)
    if t_cfg.freeze_encoder:
        model.encoder.requires_grad_(False)
    model = model.to(device)
    if t_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if distributed and t_cfg.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameter and buffer names
    raw_model = model
    if distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None,
                                                    find_unused_parameters=True)
        # DDP copied rank 0's weights to every rank; from here on each rank draws its own augmentation
        seed_everything(t_cfg.seed + RANK_SEED_STRIDE * dist.get_rank())
    # stored in every checkpoint: evaluate scores the data the model was made for, a resume cannot switch it
    run_data = data_settings(build_data, data, data_root, data_options) if datasets is None else None
    if datasets is None:
        datasets = build_data(data, data_root, image_size=cfg.model.image_size, seed=t_cfg.seed,
                              label_fraction=t_cfg.label_fraction, **data_options)
    out = Path(out_dir) if out_dir is not None else None
    workers = t_cfg.num_workers

    history: list[dict[str, Any]] = []
    best = {"epoch": -1, "val_nodule_dice": -1.0, "val_nodule_dice_pooled": -1.0}
    start_phase, start_epoch, resume = 1, 0, None
    if out is not None and (out / CHECKPOINT).is_file():
        resume = load_checkpoint(out / CHECKPOINT, map_location=device)
        check_resume(resume, out / CHECKPOINT, to_dict(cfg), model_name, run_data)  # ssmt_lib.resume
        load_weights(raw_model, resume["model"], out / CHECKPOINT)
        history, best = resume["history"], resume["best"]
        start_phase, start_epoch = resume["next_phase"], resume["next_epoch"]
        set_rng_state(rank_rng_state(resume, t_cfg.seed))
    has_recon = "recon" in getattr(raw_model, "heads", ())
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    plan = phase_plan(cfg, {1: len(datasets["unlabeled"]), 2: epoch_images(datasets["train"], t_cfg)}, has_recon, world)
    if all(plan[p]["steps"] == 0 for p in (1, 2)):
        raise ValueError(f"nothing to train: train.epochs={t_cfg.epochs}, train.epochs_pretrain={t_cfg.epochs_pretrain}"
                         + ("" if has_recon else f" and {model_name or 'this model'} has no reconstructor for phase 1"))
    if resume is not None:  # a finished run resumed with more train.epochs reopens phase 2
        start_phase, start_epoch = reopened_position(resume, plan[2]["epochs"])
    budget = None if t_cfg.max_minutes is None else 60.0 * t_cfg.max_minutes
    budget_used = resume.get("budget_used", 0.0) if resume is not None else 0.0  # seconds of finished phases
    stopped_early = False
    for phase in (1, 2):
        epochs = plan[phase]["epochs"]
        if phase < start_phase or plan[phase]["steps"] == 0:
            continue
        pool = datasets["unlabeled" if phase == 1 else "train"]
        phase_budget = None
        if budget is not None:  # this phase's share of what is left
            share = t_cfg.pretrain_share
            if share is None or plan[2]["steps"] == 0:  # by planned steps
                later = sum(plan[p]["steps"] for p in (1, 2) if p >= phase)
                share = plan[phase]["steps"] / max(later, 1)
            phase_budget = max(budget - budget_used, 1e-3) * (share if phase == 1 else 1.0)
        opt, sched = make_optimizer(raw_model, cfg, plan[phase]["steps"], device, phase_budget)
        if distributed and phase_budget is not None:  # every rank reads rank 0's clock: same rate, same last step
            sched.clock = RankZeroClock(device if dist.get_backend() == "nccl" else torch.device("cpu"))
            sched.started = sched.clock()
        first = start_epoch if phase == start_phase else 0
        if resume is not None and phase == resume["phase"] and "optimizer" in resume and first > 0:
            opt.load_state_dict(resume["optimizer"])
            sched.load_state_dict(resume["scheduler"])
        for epoch in range(first, epochs):
            loader = make_loader(pool, t_cfg.batch_size, True, seed=t_cfg.seed * 100_003 + phase * 1009 + epoch,
                                 num_workers=workers, device=device, shard=True,
                                 task_pairs=phase == 2 and t_cfg.task_pairs)
            if isinstance(loader.sampler, DistributedSampler):
                loader.sampler.set_epoch(epoch)
            steps_before = sched.steps
            record = _train_epoch(model, raw_model, loader, opt, sched, cfg, phase, epoch, device, progress, out)
            every = t_cfg.val_every
            validate = (every is None or sched.steps // every > steps_before // every or sched.done
                        or epoch == epochs - 1)  # tiny labelled sets make epochs of 1-2 steps
            bad = non_finite_state(raw_model, opt)  # a blow-up in an epoch's last step leaves a finite loss
            if bad:
                kept = out / CHECKPOINT if out is not None and (out / CHECKPOINT).is_file() else "none written yet"
                raise NonFiniteLossError(
                    f"non-finite weights or optimizer state after phase {phase}, epoch {epoch + 1} ({len(bad)} "
                    f"tensors, e.g. {bad[:3]}); training stopped, no checkpoint written for this epoch. The last "
                    f"good checkpoint ({kept}) is kept; lower train.lr or check the data.")
            if phase == 2 and validate and is_main_process():
                val = evaluate(raw_model, make_loader(datasets["val"], t_cfg.batch_size, False, 0, workers, device),
                               device, compute_hd95=False, references=False)
                record["val_nodule_dice"] = val.get("nodule", {}).get("dice_mean", float("nan"))
                # Select on pooled Dice: per-image Dice scores an empty prediction on a nodule-free image
                # as 1, so on validation sets with such images "predict nothing" could win.
                record["val_nodule_dice_pooled"] = val.get("nodule", {}).get("dice_pooled", float("nan"))
                record["val_nodule_iou"] = val.get("nodule", {}).get("iou_mean", float("nan"))
                if "gland" in val:
                    record["val_gland_dice"] = val["gland"]["dice_mean"]
                if record["val_nodule_dice_pooled"] > best["val_nodule_dice_pooled"]:
                    best = {"epoch": epoch, "val_nodule_dice": record["val_nodule_dice"],
                            "val_nodule_dice_pooled": record["val_nodule_dice_pooled"]}
                    if out is not None:
                        save_checkpoint(out / BEST, checkpoint_state(raw_model, cfg, model_name, history + [record],
                                                                     best, data=run_data))
            history.append(record)
            last = epoch == epochs - 1 or sched.done
            next_phase, next_epoch = (phase + 1, 0) if last else (phase, epoch + 1)
            if last:
                budget_used += sched.elapsed
            rng_ranks = gather_rng_states() if distributed else None  # a collective: every rank calls it
            if out is not None and is_main_process():
                state = checkpoint_state(raw_model, cfg, model_name, history, best, phase=phase,
                                         next_phase=next_phase, next_epoch=next_epoch, opt=opt, sched=sched,
                                         budget_used=budget_used, data=run_data)
                if rng_ranks is not None:
                    state["rng_ranks"] = rng_ranks  # each rank resumes its own augmentation stream
                save_checkpoint(out / CHECKPOINT, state)
                write_history(out, history)
            for cb in callbacks:
                cb(record)
            if last:
                # a time-limited phase 2 that ended on its clock, not its steps, stopped early
                stopped_early = phase == 2 and sched.steps < plan[phase]["steps"]
                break
    result = TrainResult(model=raw_model, history=history, best=best, out_dir=out, stopped_early=stopped_early)
    if evaluate_test and "test" in datasets and is_main_process():
        eval_model = raw_model
        if out is not None and (out / BEST).is_file():
            eval_model, _, _ = model_from_checkpoint(out / BEST, device)
        result.test = evaluate(eval_model, make_loader(datasets["test"], t_cfg.batch_size, False, 0, workers, device), device)
    if out is not None and is_main_process():
        previous = out / "metrics.json"
        if not result.test and previous.is_file():  # resuming a finished run must not drop its test metrics
            result.test = json.loads(previous.read_text()).get("test", {})
        write_metrics(out / "metrics.json", cfg, history, best, result.test, model_name)
    if distributed:
        dist.barrier()  # the other ranks wait for rank 0's test evaluation and files
    return result


def _train_epoch(model: nn.Module, raw_model: nn.Module, loader: DataLoader, opt, sched, cfg: Config, phase: int,
                 epoch: int, device: torch.device, progress: bool, out: Path | None) -> dict[str, Any]:
    """One epoch; returns the mean of each loss part, lr, images/s."""
    t_cfg = cfg.train
    cuda = device.type == "cuda"
    model.train()
    heads = ("recon",) if phase == 1 else None
    sums: dict[str, float] = {}
    n_images, t0 = 0, time.perf_counter()
    bar = tqdm(loader, desc=f"phase {phase} epoch {epoch + 1}", leave=False, disable=not progress)
    for step, batch in enumerate(bar):
        batch = to_device(batch, device, channels_last=t_cfg.channels_last)
        images = batch["image"]
        if phase == 1:
            images = mask_patches(images, t_cfg.mask_ratio)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and t_cfg.amp):
            output = model(images, heads=heads) if heads else model(images)  # not `out`: that is the run folder
        loss, parts = total_loss(output, batch, cfg.loss, phase=phase)
        if not torch.isfinite(loss):
            where = f" in {out / CHECKPOINT}" if out is not None and (out / CHECKPOINT).is_file() else ""
            raise NonFiniteLossError(
                f"non-finite loss {parts} at phase {phase}, epoch {epoch + 1}, step {step}; training stopped. "
                f"The last good checkpoint{where or ' (none written yet)'} is kept; lower train.lr or check the data.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t_cfg.grad_clip:
            nn.utils.clip_grad_norm_(raw_model.parameters(), t_cfg.grad_clip)
        opt.step()
        if isinstance(sched.clock, RankZeroClock):
            sched.clock.tick()  # DDP with a time budget: one broadcast per step, on every rank
        sched.step()
        n_images += images.shape[0]
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * images.shape[0]
        bar.set_postfix(loss=f"{parts['loss']:.4f}")
        if sched.done:  # the phase's step or time budget is spent
            break
    seconds = time.perf_counter() - t0
    record = {"phase": phase, "epoch": epoch + 1, "step": sched.steps, "lr": opt.param_groups[0]["lr"],
              "seconds": round(seconds, 3), "images_per_s": n_images / max(seconds, 1e-9)}
    record.update({k: v / max(n_images, 1) for k, v in sums.items()})
    return record
