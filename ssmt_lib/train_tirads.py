"""Training of the joint nodule-mask + TI-RADS model (RLAR paper; our protocol): losses, step, fit, CLI.

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

The paper: Liu et al., *Representation-Level Adversarial Regularization for Clinically Aligned
Multitask Thyroid Ultrasound Assessment* (RLAR, arXiv 2603.21095; abstract only). Its labels and
radiomics target are built in :mod:`ssmt_lib.tirads_data`, its scores (each beside the majority
class) in :mod:`ssmt_lib.tirads_metrics`.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ssmt_lib.checkpoints import (BEST, CHECKPOINT, checkpoint_state, load_checkpoint, load_weights,
                                  model_from_checkpoint, save_checkpoint, set_rng_state)
from ssmt_lib.config import Config, to_dict
from ssmt_lib.distributed import default_device, seed_everything
from ssmt_lib.evaluation import jsonable, write_history, write_metrics
from ssmt_lib.loaders import make_loader
from ssmt_lib.losses import bce_dice_loss
from ssmt_lib.rlar import UncertaintyWeighting, pcgrad_backward, rlar_penalty, task_cosine
from ssmt_lib.tirads_data import TiradsSet, check_data, tirads_data
from ssmt_lib.tirads_metrics import evaluate_tirads, tirads_summary
from ssmt_lib.tirads_model import TiradsConfig, TiradsNet, build_tirads_model, tirads_config

if TYPE_CHECKING:
    from ssmt_lib.train import TrainResult


def tirads_losses(out: dict[str, Tensor], batch: dict[str, Any], cfg: TiradsConfig,
                  weight: Tensor | None) -> dict[str, Tensor]:
    """Per-sample task losses (B,) (0 where a sample has no label), their valid masks, and the scalars.

    Args:
        out: the model's ``nodule_logits``, ``tirads_logits`` (B, K) and ``radiomics`` (B, R).
        batch: ``has_nodule``, ``nodule_mask``, ``label`` (-1 = none), ``radiomics``, ``has_radiomics``.
        cfg: the loss weights (``seg_weight``, ``cls_weight``, ``ordinal_weight``, ``radiomics_weight``).
        weight: class weights (K,) of the cross-entropy, or None.

    Returns:
        ``seg_ps``/``cls_ps`` (B,) per-sample task losses, ``seg``/``cls`` their means over labelled
        samples, ``both`` (B,) the samples with both tasks, ``ce`` and ``rad`` the loss parts.
    """
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
    L = tirads_losses(out, batch, cfg, weight)
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
    from ssmt_lib.resume import check_resume, data_settings, reopened_position
    from ssmt_lib.train import TrainResult, make_optimizer, phase_plan

    tcfg = tirads_config(**dict(model_options or {}))  # bad options raise before any work
    if datasets is None:
        check_data(data, tcfg.labels)
    t_cfg = cfg.train
    device = device or default_device()
    seed_everything(t_cfg.seed)
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
    plan = phase_plan(cfg, {1: 0, 2: len(datasets["train"])}, has_recon=False)[2]
    opt, sched = make_optimizer(params, cfg, plan["steps"], device,
                                None if t_cfg.max_minutes is None else 60.0 * t_cfg.max_minutes)
    out = Path(out_dir) if out_dir is not None else None
    extra = {"task": "tirads", "model_config": jsonable_config(tcfg)}
    history: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": -1, "val_score": -1.0}
    best_weights = None
    start = 0
    if out is not None and (out / CHECKPOINT).is_file():
        resume = load_checkpoint(out / CHECKPOINT, map_location=device)
        if resume.get("task") != "tirads" or resume.get("model_config") != extra["model_config"]:
            raise ValueError(f"{out / CHECKPOINT} is another kind of run (task {resume.get('task')!r}) or another "
                             f"TI-RADS model configuration; use another run folder")
        check_resume(resume, out / CHECKPOINT, to_dict(cfg), "tirads", run_data)
        load_weights(params, resume["model"], out / CHECKPOINT)
        history, best, steps = resume["history"], resume["best"], resume.get("steps", [])
        next_phase, next_epoch = reopened_position(resume, plan["epochs"])  # more epochs extend a finished run
        start = next_epoch if next_phase == 2 else plan["epochs"]
        if 0 < start < plan["epochs"]:
            opt.load_state_dict(resume["optimizer"])
            sched.load_state_dict(resume["scheduler"])
        set_rng_state(resume["rng"])
    gen = torch.Generator().manual_seed(tcfg.pcgrad_seed)
    for epoch in range(start, plan["epochs"]):
        loader = make_loader(datasets["train"], t_cfg.batch_size, True, seed=t_cfg.seed * 100_003 + 3 * 1009 + epoch,
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
        val = evaluate_tirads(model, make_loader(datasets["val"], t_cfg.batch_size, False, 0, t_cfg.num_workers,
                                                 device), device, train_labels)
        record.update(val_tirads_macro_f1=val["tirads_macro_f1"], val_nodule_dice=val["nodule"]["dice_mean"],
                      val_score=_score(val, tcfg.method))
        if record["val_score"] > best["val_score"]:
            best = {"epoch": epoch, "val_score": record["val_score"], "val_tirads_macro_f1": val["tirads_macro_f1"],
                    "val_nodule_dice": val["nodule"]["dice_mean"]}
            best_weights = {k: v.detach().clone() for k, v in params.state_dict().items()}
            if out is not None:
                save_checkpoint(out / BEST, {**checkpoint_state(params, cfg, "tirads", history + [record], best,
                                                                data=run_data), **extra})
        history.append(record)
        last = epoch == plan["epochs"] - 1 or sched.done
        if out is not None:
            state = checkpoint_state(params, cfg, "tirads", history, best, phase=2, next_phase=3 if last else 2,
                                     next_epoch=0 if last else epoch + 1, opt=opt, sched=sched, data=run_data)
            save_checkpoint(out / CHECKPOINT, {**state, **extra, "steps": steps})
            write_history(out, history)
        for cb in callbacks:
            cb(record)
        if last:
            break
    result = TrainResult(model=model, history=history, best=best, out_dir=out,
                         stopped_early=sched.steps < plan["steps"])
    result.steps = steps  # per-step records (losses, cosines)
    if evaluate_test and "test" in datasets:
        eval_model = model
        if out is not None and (out / BEST).is_file():
            eval_model = model_from_checkpoint(out / BEST, device)[0]
        elif best_weights is not None:
            eval_model = TiradsNet(tcfg, cfg.model.image_size, cfg.model.in_chans).to(device)
            holder = nn.ModuleList([eval_model] + ([UncertaintyWeighting(2)] if uncertainty is not None else []))
            holder.load_state_dict(best_weights)
        result.test = evaluate_tirads(eval_model, make_loader(datasets["test"], t_cfg.batch_size, False, 0,
                                                              t_cfg.num_workers, device), device, train_labels)
    if out is not None:
        write_metrics(out / "metrics.json", cfg, history, best, result.test, "tirads")
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
    from ssmt_lib.train import fit

    if args.unlabeled_dir is not None or args.fold != 0 or args.epochs_pretrain is not None or args.model:
        raise SystemExit("--unlabeled-dir, --fold, --epochs-pretrain and --model do not apply to --task tirads "
                         "(the model is set with --model-option, e.g. method=rlar encoder=cnn)")
    data_opts = {"phantom_n": args.phantom_n} if args.phantom_n is not None else {}
    result = fit(cfg, task="tirads", data=args.data, data_root=args.data_root, out_dir=args.out,
                 model_options=options, progress=not args.no_progress, **data_opts)
    print(json.dumps(jsonable({"out": str(args.out), "best": result.best, "stopped_early": result.stopped_early,
                               "test": tirads_summary(result.test)}), indent=1, default=str))
    return 0


def cli_evaluate(args: Any, model: nn.Module, cfg: Config, ckpt: dict[str, Any], device: torch.device) -> int:
    """``evaluate`` on a ``task="tirads"`` checkpoint: metrics JSON with the references."""
    from ssmt_lib.resume import checkpoint_evaluation_data

    settings = checkpoint_evaluation_data(args, ckpt, tirads_data, "TI-RADS model")
    settings["radiomics_features"] = tuple(settings.get("radiomics_features") or ()) or None
    check_data(settings["data"], ckpt["model_config"]["labels"])
    datasets = tirads_data(**settings, image_size=cfg.model.image_size, seed=cfg.train.seed)
    loader = make_loader(datasets[args.split], cfg.train.batch_size, False, 0, 0, device)
    full = evaluate_tirads(model, loader, device, train_labels=datasets["train"].labels)
    metrics = jsonable({**tirads_summary(full), "confusion_matrix": full["confusion_matrix"], "n": full["n"],
                        "checkpoint": str(args.checkpoint), "task": "tirads", "split": args.split,
                        "method": ckpt["model_config"]["method"], "data_settings": settings})
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name(f"eval_{settings['data']}_{args.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics, indent=1))
    return 0
