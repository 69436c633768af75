"""Run checkpoints: atomic writing, safe loading, RNG state, and rebuilding a model from a file.

Reliability (DESIGN.md section 6): ``last.pt`` is written atomically at the end of every epoch with
model, optimizer, scheduler and RNG state (:func:`checkpoint_state`), and every checkpoint loads
with ``torch.load(weights_only=True)`` (:func:`load_checkpoint`: tensors and plain containers only,
never pickled code). Under DDP each rank's RNG state is stored (:func:`gather_rng_states`) so that
each resumes its own augmentation stream (:func:`rank_rng_state`). :func:`model_from_checkpoint`
rebuilds any model ``fit`` trains (SSMT-Net, baselines, segmenters, classifiers, the TI-RADS model).
"""
from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ssmt_lib.config import Config, from_dict, to_dict
from ssmt_lib.distributed import RANK_SEED_STRIDE, rank_and_world, seed_everything
from ssmt_lib.model import build_model
from ssmt_lib.schedule import BudgetCosine

CHECKPOINT = "last.pt"  # the run folder's checkpoint of the last finished epoch (a resume starts here)
BEST = "best.pt"  # the checkpoint of the epoch with the best validation score


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically: to a temporary file in the same folder, then rename.

    Args:
        path: the checkpoint file (its folder is created).
        state: tensors and plain containers (:func:`checkpoint_state`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no pickled code), naming the file on failure.

    Args:
        path: the checkpoint file.
        map_location: where its tensors go.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # pickled objects beyond tensors and containers: refused
        found = re.search(r"GLOBAL (\S+)", str(err))
        raise ValueError(f"checkpoint {path} is refused as unsafe: it holds pickled Python objects "
                         f"({found.group(1) if found else 'beyond tensors and plain containers'}) that could run "
                         f"code when loaded. ssmt_lib only loads checkpoints as plain tensors and containers "
                         f"(weights_only=True); use a checkpoint written by ssmt_lib.train.fit.") from None
    except Exception as err:  # corrupt/truncated/foreign files
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err


def rng_state() -> dict[str, Any]:
    """The RNG state of Python, NumPy and torch (and CUDA), as tensors and lists (``weights_only`` loads it)."""
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)), "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore an RNG state saved by :func:`rng_state`.

    Args:
        state: a :func:`rng_state` dict (CUDA's part is used only when CUDA is there).
    """
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (a collective call under DDP)."""
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, rng_state())
    return states


def rank_rng_state(ckpt: dict[str, Any], seed: int) -> dict[str, Any]:
    """The RNG state this rank resumes with: its own from ``rng_ranks`` when the checkpoint was
    written by as many ranks; else rank 0's ``rng`` (single process), or, for another world size,
    a fresh per-rank seed (the augmentation then differs from an unbroken run).

    Args:
        ckpt: the run checkpoint being resumed.
        seed: ``train.seed`` (for the fresh per-rank seed).
    """
    rank, world = rank_and_world()
    ranks = ckpt.get("rng_ranks")
    if ranks is not None and len(ranks) == world:
        return ranks[rank]
    if world == 1:
        return ckpt["rng"]
    seed_everything(seed + RANK_SEED_STRIDE * rank + 7919 * (1 + int(ckpt.get("next_epoch", 0))))
    return rng_state()


def checkpoint_state(model: nn.Module, cfg: Config, model_name: str | None, history: list, best: dict, phase: int = 2,
                     next_phase: int = 3, next_epoch: int = 0, opt: torch.optim.Optimizer | None = None,
                     sched: BudgetCosine | None = None, budget_used: float = 0.0,
                     data: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run checkpoint holds (``last.pt``, ``best.pt``): weights, config, history, position and RNG state.

    Args:
        model: the model whose ``state_dict`` is saved.
        cfg: the run's configuration.
        model_name: the baseline/segmenter name, None for SSMT-Net (a task's own name for others).
        history: the epoch records so far.
        best: the selected epoch and its validation scores.
        phase: the phase of the epoch just finished.
        next_phase: the phase a resume starts in (3: the run is finished).
        next_epoch: the epoch a resume starts with.
        opt: the optimizer (its state is saved with ``sched``'s when given).
        sched: the learning-rate schedule.
        budget_used: seconds of ``train.max_minutes`` spent by finished phases.
        data: the data settings the model was trained on (``resume.data_settings``).
    """
    state = {"model": model.state_dict(), "config": to_dict(cfg), "model_name": model_name, "history": history,
             "best": best, "phase": phase, "next_phase": next_phase, "next_epoch": next_epoch, "rng": rng_state(),
             "budget_used": budget_used, "data": data}
    if opt is not None:
        state["optimizer"], state["scheduler"] = opt.state_dict(), sched.state_dict()
    return state


def model_from_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Config, dict]:
    """Rebuild the model of a checkpoint (``best.pt`` or ``last.pt``) with its weights; eval mode.

    Args:
        path: a checkpoint written by ``fit`` (any task).
        device: where the model goes.

    Returns:
        (model, its configuration, the whole checkpoint dict).
    """
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"checkpoint {path} has no 'config' and 'model' entries (it holds {keys}): "
                         f"it was not written by ssmt_lib.train.fit, so its model cannot be rebuilt")
    cfg = from_dict(ckpt["config"])
    name = ckpt.get("model_name")
    # checkpoints from before model.baseline_size existed hold tiny-width baselines (fit built no other)
    size = cfg.model.baseline_size if "baseline_size" in ckpt["config"].get("model", {}) else "tiny"
    if ckpt.get("task") == "classify":  # ssmt_lib.train_classify: the classifier's own config; weights below
        from ssmt_lib.classifiers import classifier_from_dict

        model = classifier_from_dict({**ckpt["model_config"], "pretrained_file": None})
    elif ckpt.get("task") == "tirads":  # ssmt_lib.train_tirads: the joint mask + TI-RADS model
        from ssmt_lib.train_tirads import model_from_tirads_checkpoint

        model = model_from_tirads_checkpoint(ckpt, cfg.model.image_size, cfg.model.in_chans)
    else:
        model = build_model(name, preset=size, image_size=cfg.model.image_size) if name else build_model(config=cfg)
    load_weights(model, ckpt["model"], path)
    return model.to(device).eval(), cfg, ckpt


def load_weights(model: nn.Module, weights: dict[str, Tensor], path: str | Path) -> None:
    """``model.load_state_dict(weights)``, naming ``path`` when the architectures do not match.

    Args:
        model: the model to fill.
        weights: a state dict.
        path: the file the weights came from, for the message.
    """
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(f"the weights in {path} do not fit the model being built (another architecture): "
                         f"{' '.join(str(err).split())[:600]}") from err
