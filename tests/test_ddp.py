"""DistributedDataParallel on CPU: two processes with the gloo backend, spawned from pytest.

One spawn runs, in each of 2 ranks, a small tiny-preset ``fit`` (phase 1 + phase 2) and checks
what a multi-GPU user relies on: test metrics of rank 0 equal a single-process evaluation of the
same ``best.pt`` on the whole test set; the cosine schedule of each phase ends at ``min_lr`` (its
steps per epoch count the world size); ranks draw different augmentations (in-process and in
DataLoader workers); a run interrupted after an epoch and resumed under DDP ends with the weights
of the unbroken run; ``train.sync_batchnorm`` refuses the CPU clearly.
"""
from __future__ import annotations

import json
import os
import socket
import time
import zlib
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import Dataset

from ssmt_lib.checkpoints import load_checkpoint, model_from_checkpoint
from ssmt_lib.config import make_config
from ssmt_lib.evaluation import evaluate
from ssmt_lib.loaders import build_data, make_loader

WORLD = 2
SIZE = 32  # px: the tiny network at its smallest useful input
DATA = dict(data="phantom", phantom_n=8)  # 8 training images, 8 validation, 8 test
OVERRIDES = dict(image_size=SIZE, epochs_pretrain=1, epochs=2, batch_size=2, num_workers=0, channels_last=False)


class _Recorded(Dataset):
    """Item 0 of ``inner`` (augmented afresh) for every index, its checksum appended to ``log``:
    the ranks' checksum sequences are equal exactly when they draw the same augmentations."""

    def __init__(self, inner: Dataset, log: Path) -> None:
        self.inner, self.log = inner, log

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> dict:
        item = self.inner[0]
        with open(self.log, "a") as f:
            f.write(f"{zlib.crc32(item['image'].numpy().tobytes())}\n")
        return item


class _SeedProbe(Dataset):
    """Returns the torch seed of the process that loads the item (a DataLoader worker's seed)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> int:
        return torch.initial_seed()


class _Interrupt(Exception):
    pass


def _stop_after_first_phase2_epoch(record: dict) -> None:
    if record["phase"] == 2:
        raise _Interrupt


def _worker(rank: int, root: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    from ssmt_lib.train import fit

    root_path = Path(root)
    cfg = make_config("tiny", **OVERRIDES)

    def datasets(tag: str) -> dict:
        ds = build_data(image_size=SIZE, seed=cfg.train.seed, **DATA)
        ds["train"] = _Recorded(ds["train"], root_path / f"aug_{tag}_rank{rank}.txt")
        return ds

    fit(cfg, datasets=datasets("a"), out_dir=root_path / "a", progress=False)  # unbroken run
    try:  # the same run, stopped after its first phase-2 epoch (checkpoint written), then resumed
        fit(cfg, datasets=datasets("b"), out_dir=root_path / "b", progress=False,
            callbacks=(_stop_after_first_phase2_epoch,))
    except _Interrupt:
        pass
    fit(cfg, datasets=datasets("b"), out_dir=root_path / "b", progress=False)
    seeds = [int(s) for batch in make_loader(_SeedProbe(), 2, True, seed=5, num_workers=1, shard=True) for s in batch]
    with open(root_path / f"worker_seeds_rank{rank}.json", "w") as f:
        json.dump(seeds, f)
    try:
        fit(make_config("tiny", sync_batchnorm=True, **OVERRIDES), datasets=datasets("c"), progress=False)
    except ValueError as err:
        (root_path / f"syncbn_rank{rank}.txt").write_text(str(err))
    # a time budget (3 s) that ends phase 2 long before its 200 epochs: every rank must stop at the
    # same step with the same weights (the ranks read rank 0's clock)
    timed = fit(make_config("tiny", **{**OVERRIDES, "epochs": 200, "max_minutes": 0.05}), datasets=datasets("d"),
                progress=False, evaluate_test=False)
    # parameters (batch-norm buffers are rank 0's only at each forward: DDP broadcasts them then)
    weights = sum(float(v.double().sum()) for v in timed.model.parameters())
    with open(root_path / f"timed_rank{rank}.json", "w") as f:
        json.dump({"step": timed.history[-1]["step"], "epochs": len(timed.history), "weights": weights,
                   "stopped_early": timed.stopped_early}, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    ctx = mp.start_processes(_worker, args=(str(root), _free_port()), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + 300  # a desynchronised DDP run waits for ever: fail instead of hanging
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("the 2-process DDP runs did not finish within 300 s (ranks out of step?)")
    return root


def test_ddp_test_metrics_cover_the_whole_test_set(ddp_runs):
    metrics = json.loads((ddp_runs / "a" / "metrics.json").read_text())
    model, cfg, _ = model_from_checkpoint(ddp_runs / "a" / "best.pt")
    test = build_data(image_size=SIZE, seed=cfg.train.seed, **DATA)["test"]
    single = evaluate(model, make_loader(test, 3, False, 0))["nodule"]
    ddp = metrics["test"]["nodule"]
    assert ddp["n"] == len(test) == single["n"]
    for key in ("dice_mean", "dice_pooled", "iou_mean", "precision", "recall"):
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key


def test_ddp_schedule_ends_at_min_lr(ddp_runs):
    metrics = json.loads((ddp_runs / "a" / "metrics.json").read_text())
    min_lr = metrics["config"]["train"]["min_lr"]
    for phase in (1, 2):
        last = [r for r in metrics["history"] if r["phase"] == phase][-1]
        assert last["lr"] == pytest.approx(min_lr, rel=1e-6, abs=1e-12), (phase, last["lr"])


def test_ddp_ranks_draw_different_augmentations(ddp_runs):
    logs = [(ddp_runs / f"aug_a_rank{r}.txt").read_text().split() for r in range(WORLD)]
    assert len(logs[0]) == len(logs[1]) > 0  # the same number of items per rank (sharded, padded)
    assert sum(a != b for a, b in zip(*logs)) >= len(logs[0]) // 2  # same image, other draws
    seeds = [json.loads((ddp_runs / f"worker_seeds_rank{r}.json").read_text()) for r in range(WORLD)]
    assert len(seeds[0]) == 2 and seeds[0] != seeds[1]  # worker processes seeded per rank


def test_ddp_resume_ends_with_the_unbroken_run(ddp_runs):
    unbroken, resumed = (load_checkpoint(ddp_runs / run / "last.pt") for run in ("a", "b"))
    assert len(resumed["rng_ranks"]) == WORLD
    assert [r["epoch"] for r in resumed["history"]] == [r["epoch"] for r in unbroken["history"]]
    for key, value in unbroken["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    # the resumed run also drew the unbroken run's augmentations on every rank
    for r in range(WORLD):
        a, b = ((ddp_runs / f"aug_{t}_rank{r}.txt").read_text().split() for t in ("a", "b"))
        assert b == a


def test_ddp_sync_batchnorm_refuses_the_cpu(ddp_runs):
    for r in range(WORLD):
        assert "sync_batchnorm" in (ddp_runs / f"syncbn_rank{r}.txt").read_text()


def test_ddp_time_budget_stops_every_rank_at_the_same_step(ddp_runs):
    runs = [json.loads((ddp_runs / f"timed_rank{r}.json").read_text()) for r in range(WORLD)]
    assert runs[0]["stopped_early"] and runs[0]["epochs"] < 200  # the budget, not the epochs, ended it
    assert runs[0] == runs[1]  # same last step, same number of epochs, same weights on both ranks
