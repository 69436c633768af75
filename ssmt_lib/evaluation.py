"""Scoring a segmentation model and writing a run's results: ``metrics.json`` and ``history.csv``.

:func:`evaluate` gives per task (nodule, gland) the metrics of :class:`~ssmt_lib.metrics.SegmentationMeter`
(IoU and Dice, the metrics of Farooq et al., *Anatomy-Guided Representation Learning Using a
Transformer-Based Network for Thyroid Nodule Segmentation in Ultrasound Images*, Sec. 3.1; HD95 beyond
the paper), the size-regression MAE, and beside them the trivial predictors' scores on the same
images, so every reported number has its floor. :func:`write_metrics` and :func:`write_history` write the
run folder's files atomically; :func:`jsonable` makes nested metrics strict JSON.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ssmt_lib.config import Config, to_dict
from ssmt_lib.loaders import to_device
from ssmt_lib.metrics import ReferenceMeter, SegmentationMeter


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | None = None,
             compute_hd95: bool = True, progress: bool = False, references: bool = True) -> dict[str, Any]:
    """Metrics of ``model`` on ``loader``: per task a ``SegmentationMeter.compute()`` dict, plus size MAE.

    Only images labelled for a task count for it. Returns ``{"nodule": {...}, "gland": {...},
    "size_mae": float, "rows": {task: per-image rows}, "references": {task: ..., }}`` where
    ``references`` (with ``references=True``) holds the trivial predictors' scores on the same
    images (:class:`~ssmt_lib.metrics.ReferenceMeter`: all-foreground, all-background, and the
    mean size predictor's MAE), so every reported number has its floor beside it.

    Args:
        model: a model returning :class:`~ssmt_lib.outputs.ModelOutput` and declaring ``tasks``.
        loader: batches of ``image``, ``<task>_mask``, ``has_<task>``, ``size``, ``id``.
        device: default the model's device.
        compute_hd95: also the 95th-percentile Hausdorff distance (slower).
        progress: a tqdm bar.
        references: also the trivial predictors' scores.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    tasks = getattr(model, "tasks", ("nodule",))
    meters = {t: SegmentationMeter(compute_hd95=compute_hd95) for t in tasks}
    floors = {t: ReferenceMeter() for t in tasks} if references else {}
    size_err, size_n = 0.0, 0
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
        batch = to_device(batch, device)
        out = model(batch["image"])
        for t in tasks:
            valid = batch[f"has_{t}"].bool()
            if valid.any():
                meters[t].update(out.logits(t).float(), batch[f"{t}_mask"], valid_mask=valid, ids=batch["id"])
                if references:
                    floors[t].update(batch[f"{t}_mask"], valid)
        if out.size is not None and batch["has_nodule"].any():
            keep = batch["has_nodule"].bool()
            size_err += (out.size.float()[keep] - batch["size"][keep]).abs().sum().item()
            size_n += int(keep.sum())
    model.train(was_training)
    result: dict[str, Any] = {t: m.compute() for t, m in meters.items() if m.rows}
    result["rows"] = {t: m.rows for t, m in meters.items() if m.rows}
    result["size_mae"] = size_err / size_n if size_n else float("nan")
    if references:
        result["references"] = {t: f.compute() for t, f in floors.items() if f.sizes}
    return result


def write_history(out: Path, history: list[dict[str, Any]]) -> None:
    """``history.csv``: one row per epoch, a column per logged value (written atomically).

    Args:
        out: the run folder.
        history: the epoch records.
    """
    keys = sorted({k for r in history for k in r}, key=lambda k: (k not in ("phase", "epoch"), k))
    tmp = out / "history.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, out / "history.csv")


def jsonable(obj: Any) -> Any:
    """Nested metrics as strict JSON values: NaN/inf become None, numpy scalars Python numbers, per-image rows dropped.

    Args:
        obj: dicts, lists, tuples and scalars, nested.
    """
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items() if k != "rows"}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.floating, np.integer)):
        return jsonable(obj.item())
    return obj


def write_metrics(path: Path, cfg: Config, history: list, best: dict, test: dict, model_name: str | None = None) -> None:
    """``metrics.json``: config, per-epoch history, best epoch and test metrics (NaN written as null).

    Args:
        path: the file (written atomically; its folder is created).
        cfg: the run's configuration.
        history: the epoch records.
        best: the selected epoch and its validation scores.
        test: the test metrics (may be empty).
        model_name: the model's name; None is SSMT-Net ("ssmt").
    """
    data = {"config": to_dict(cfg), "model_name": model_name or "ssmt", "history": history, "best": best,
            "test": test}
    tmp = path.with_suffix(".json.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(jsonable(data), indent=1))
    os.replace(tmp, path)
