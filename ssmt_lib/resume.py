"""What a checkpoint must hold to be written, and what a resumed run may change.

SSMT-Net (Farooq et al., "Anatomy-Guided Representation Learning Using a Transformer-Based Network
for Thyroid Nodule Segmentation in Ultrasound Images", arXiv 2512.12662) trains in two phases
(Sec. 2.6) for 300 supervised epochs (Sec. 3.1), so runs are resumed from ``last.pt``. A resume continues *that* run: with the same config and data it ends bit-identical
to an unbroken run (tests/test_train.py). This module holds the rules around it:

* **Data settings** (:func:`data_settings`): the data a run trains on (``data``, ``data_root``,
  ``fold``, ``phantom_n`` ...) are stored in every checkpoint, so ``evaluate`` scores the split
  the model was made for and a resume cannot silently switch folds.
* **Resume checks** (:func:`resume_problems`): the requested config is compared key by key with
  the checkpoint's ``config``. ``RESUME_MAY_CHANGE`` lists what may change; ``RESUME_MAY_GROW``
  what may only grow (extending a run); anything else, another baseline (``model_name``) or other
  data settings is refused with every differing key listed.
* **Extending a run** (:func:`reopened_position`): a finished run resumed with more
  ``train.epochs`` reopens phase 2 after its last epoch, loading its optimizer and schedule
  state; the schedule's plan (total steps) comes from the new config, so the remaining steps
  follow the cosine of a run of the new length from the current step on (the rate jumps up to
  that curve). The weights are then *not* those of a run trained with the new length from the
  start: an extension is a documented continuation, not a replay.
* **Checkpoint safety** (:func:`non_finite_state`): a checkpoint is only written when every
  parameter, buffer and optimizer-state tensor is finite, so the "last good checkpoint" is good.
"""
from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

# May differ freely between the run and its resume: they change no weight of the model.
RESUME_MAY_CHANGE = {
    "train.max_minutes": "the wall-clock budget (the schedule's time budget follows the new value)",
    "train.num_workers": "DataLoader workers (changes which random augmentation each image gets)",
}
# May only grow: the run is extended (phase 2 continues, see the module docstring).
RESUME_MAY_GROW = ("train.epochs", "train.steps")
_PATHS = ("data_root", "unlabeled_dir")  # data settings stored as absolute paths
_NOT_DATA = ("image_size", "seed", "label_fraction")  # build_data arguments that come from the config


class ResumeError(ValueError):
    """The requested run differs from the checkpoint it would resume; the message lists the keys."""


def data_settings(builder: Callable[..., Any], data: str, data_root: str | Path | None,
                  options: dict[str, Any]) -> dict[str, Any]:
    """The data settings of a run: every argument of ``builder`` (``train.build_data``) not taken
    from the config, with its default where not given; paths made absolute.

    Args:
        builder: the function that builds the run's datasets.
        data: dataset name(s), e.g. "phantom" or "tn3k+tg3k".
        data_root: the data folder (None for the phantom).
        options: the other keyword arguments given to ``builder`` (fold, phantom_n, ...).
    """
    params = inspect.signature(builder).parameters
    settings = {k: p.default for k, p in params.items() if k not in _NOT_DATA and p.default is not inspect.Parameter.empty}
    settings.update(options, data=data, data_root=data_root)
    for key in _PATHS:
        if settings.get(key) is not None:
            settings[key] = str(Path(settings[key]).resolve())
    return settings


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """``{"train.epochs": 6, ...}``; lists as tuples so stored and fresh values compare equal."""
    return {f"{section}.{key}": tuple(v) if isinstance(v, list) else v
            for section, values in config.items() for key, v in values.items()}


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (old value, new value)}`` for every flat config key whose value differs."""
    a, b = _flat(old), _flat(new)
    missing = object()
    return {k: (a.get(k, "(absent)"), b.get(k, "(absent)")) for k in sorted(set(a) | set(b))
            if a.get(k, missing) != b.get(k, missing)}


def resume_problems(checkpoint: dict[str, Any], config: dict[str, Any], model_name: str | None,
                    data: dict[str, Any] | None) -> list[str]:
    """Why ``checkpoint`` cannot be resumed with ``config`` (empty when it can).

    Args:
        checkpoint: the loaded ``last.pt``.
        config: the requested config as a dict (``config.to_dict``).
        model_name: the requested baseline name (None = SSMT-Net).
        data: the requested data settings (:func:`data_settings`); None when unknown (ready datasets).

    Returns:
        One line per differing key, e.g. ``"train.lr: 0.001 -> 0.0001"``.
    """
    problems = []
    for key, (old, new) in config_differences(checkpoint["config"], config).items():
        if key in RESUME_MAY_CHANGE:
            continue
        if key in RESUME_MAY_GROW and isinstance(old, int) and isinstance(new, int) and new >= old:
            continue
        why = " (a resumed run may be extended, not shortened)" if key in RESUME_MAY_GROW else ""
        problems.append(f"{key}: {old!r} -> {new!r}{why}")
    if checkpoint.get("model_name") != model_name:
        problems.append(f"model_name: {checkpoint.get('model_name')!r} -> {model_name!r}")
    stored = checkpoint.get("data")
    if stored is not None and data is not None:
        for key in sorted(set(stored) | set(data)):
            if stored.get(key) != data.get(key):
                problems.append(f"data.{key}: {stored.get(key)!r} -> {data.get(key)!r}")
    return problems


def check_resume(checkpoint: dict[str, Any], path: Path, config: dict[str, Any], model_name: str | None,
                 data: dict[str, Any] | None) -> None:
    """Raise :class:`ResumeError` naming ``path`` and every differing key when the resume is refused."""
    missing = [k for k in ("config", "model", "history", "best", "next_phase", "next_epoch", "rng") if k not in checkpoint]
    if missing:
        raise ResumeError(f"{path} cannot be resumed: it lacks {missing} (not a run checkpoint of ssmt_lib.train.fit)")
    problems = resume_problems(checkpoint, config, model_name, data)
    if problems:
        allowed = ", ".join([*RESUME_MAY_CHANGE, *(f"{k} (increase only)" for k in RESUME_MAY_GROW)])
        raise ResumeError(f"the run in {path.parent} was started with another configuration; resuming {path} "
                          f"would change: " + "; ".join(problems) + f". A resume may change only {allowed}. "
                          f"Use the original settings, or another run folder for a new run.")


def reopened_position(checkpoint: dict[str, Any], phase2_epochs: int) -> tuple[int, int]:
    """``(next_phase, next_epoch)`` to resume from: a finished run whose phase 2 is extended to
    ``phase2_epochs`` reopens phase 2 after its last epoch; otherwise the checkpoint's position."""
    done = sum(1 for r in checkpoint["history"] if r.get("phase") == 2)
    if checkpoint["next_phase"] == 3 and checkpoint.get("phase") == 2 and phase2_epochs > done:
        return 2, done
    return checkpoint["next_phase"], checkpoint["next_epoch"]


def non_finite_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> list[str]:
    """Names of the model's parameters/buffers and optimizer-state tensors that hold NaN or inf.

    Args:
        model: the (unwrapped) model.
        optimizer: its optimizer, or None.

    Returns:
        e.g. ``["encoder.stem.weight", "optimizer: exp_avg_sq of parameter 3"]``; empty when all are finite.
    """
    bad = [name for name, t in model.state_dict().items()
           if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if optimizer is not None:
        for index, state in enumerate(optimizer.state.values()):
            for key, t in state.items():
                if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    bad.append(f"optimizer: {key} of parameter {index}")
    return bad


def evaluation_data(stored: dict[str, Any] | None, requested: dict[str, Any],
                    defaults: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The data settings to evaluate a checkpoint on, and a warning line per disagreement.

    Args:
        stored: the checkpoint's ``data`` entry (None for checkpoints that do not record it).
        requested: explicit options (None = not given), e.g. ``{"fold": 0, "data": None}``.
        defaults: ``data_settings`` with nothing given (used where neither says anything).

    Returns:
        ``(settings, warnings)``: the stored settings with every explicit option applied on top.
    """
    requested = {k: str(Path(v).resolve()) if k in _PATHS and v is not None else v for k, v in requested.items()}
    notes = []
    if stored is None:
        given = {k: v for k, v in requested.items() if v is not None}
        notes.append(f"the checkpoint does not record the data it was trained on (older checkpoint, or trained "
                     f"on ready datasets); evaluating on {({**defaults, **given})}: check that this is its data")
        return {**defaults, **given}, notes
    settings = {**defaults, **stored}
    for key, value in requested.items():
        if value is None:
            continue
        if key in stored and stored[key] != value:
            notes.append(f"{key}={value!r} differs from the checkpoint's {key}={stored[key]!r} (the data it was "
                         f"trained on); evaluating with {key}={value!r} as asked")
        settings[key] = value
    return settings, notes


def checkpoint_evaluation_data(args: Any, ckpt: dict[str, Any], builder: Callable[..., Any],
                               kind: str) -> dict[str, Any]:
    """The data settings ``evaluate`` uses for a non-segmentation checkpoint (classifier, TI-RADS model).

    The checkpoint's stored settings win; an explicit ``--data``/``--data-root``/``--phantom-n`` that
    disagrees is used with a warning naming the checkpoint (:func:`evaluation_data`).

    Args:
        args: the CLI namespace (``data``, ``data_root``, ``phantom_n``, ``fold``, ``checkpoint``).
        ckpt: the loaded checkpoint.
        builder: the task's data builder (its signature gives the defaults).
        kind: what the checkpoint holds, for the message on ``--fold``.
    """
    if args.fold is not None:
        raise SystemExit(f"--fold applies to segmentation checkpoints, not to a {kind}")
    requested = {"data": args.data, "data_root": args.data_root, "phantom_n": args.phantom_n}
    settings, notes = evaluation_data(ckpt.get("data"), requested, data_settings(builder, "phantom", None, {}))
    for note in notes:
        warnings.warn(f"evaluate {args.checkpoint}: {note}", stacklevel=2)
    return settings
