"""Quality per CPU-minute: ``tiny`` SSMT-Net against the project's plain U-Net, same budget, same code.

Both models are trained by ``ssmt_lib.train.fit`` for the same wall-clock budget
(``train.max_minutes``: the cosine schedule ends at ``min_lr`` inside it), on the same data and
split, then their ``best.pt`` (chosen on validation pooled Dice) is scored on the test split.
One JSON line reports, per model, per-image Dice and IoU (mean and std), pooled Dice, epochs and
optimizer steps done and the CPU minutes used (process CPU time over all threads), plus the
trivial references of the test images (all-foreground, all-background) and the SSMT-Net minus
U-Net Dice difference::

    python benchmarks/quality.py                            # phantom, 128 px, 3 minutes each
    python benchmarks/quality.py --minutes 10 --data ddti --data-root data/ddti

The design brief's targets (read from this output, never asserted in a test): on the phantom at
128 px with 3 minutes each, SSMT-Net's test Dice >= the U-Net's and >= 0.30 above the
all-foreground reference; on real nodule data (10 minutes each) SSMT-Net beats the U-Net.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssmt_lib.config import make_config  # noqa: E402
from ssmt_lib.evaluation import jsonable  # noqa: E402
from ssmt_lib.train import fit  # noqa: E402

MODELS = {"ssmt": None, "unet": "unet"}  # label -> fit's model_name (None = SSMT-Net of the preset)


def train_one(label: str, args: argparse.Namespace, out_dir: Path) -> dict:
    """Train one model for ``args.minutes`` and return its test figures."""
    overrides = {"model.image_size": args.image_size, "train.max_minutes": args.minutes,
                 "train.epochs": 10_000, "train.seed": args.seed}  # the clock, not the epochs, ends phase 2
    for pair in args.set:
        key, value = pair.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(value)  # as the CLI's --set
    cfg = make_config(args.preset, **{k.replace(".", "__"): v for k, v in overrides.items()})
    data_options = {"phantom_n": args.phantom_n} if args.data == "phantom" else {"fold": args.fold}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = fit(cfg, data=args.data, data_root=args.data_root, out_dir=out_dir, model_name=MODELS[label],
                 progress=False, **data_options)
    test = result.test["nodule"]
    phase2 = [r for r in result.history if r["phase"] == 2]
    return {
        "dice_mean": test["dice_mean"], "dice_std": test["dice_std"], "iou_mean": test["iou_mean"],
        "iou_std": test["iou_std"], "dice_pooled": test["dice_pooled"], "n_test": test["n"],
        "epochs_phase1": sum(r["phase"] == 1 for r in result.history), "epochs_phase2": len(phase2),
        "steps_phase2": phase2[-1]["step"] if phase2 else 0, "best_epoch": result.best["epoch"],
        "cpu_minutes": (time.process_time() - cpu0) / 60, "wall_minutes": (time.perf_counter() - wall0) / 60,
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "references": result.test["references"]["nodule"],
    }


def _train_in_parallel(labels: list[str], argv: list[str], tmp: Path) -> dict:
    """Run this script once per model at the same time (each prints its JSON line) and collect them."""
    import subprocess

    rest = [a for a in argv if a != "--parallel"]
    procs = {label: subprocess.Popen([sys.executable, __file__, *rest, "--models", label],
                                     stdout=subprocess.PIPE, text=True) for label in labels}
    out = {}
    for label, proc in procs.items():
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"quality run of {label} failed with exit code {proc.returncode}")
        line = json.loads(stdout.strip().splitlines()[-1])
        out[label] = {**line[label], "references": line["references"]}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0, help="wall-clock budget per model")
    parser.add_argument("--data", default="phantom", help="any --data the CLI takes (phantom, ddti, tn3k ...)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--phantom-n", type=int, default=512, help="phantom training images")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--models", default="ssmt,unet", help="comma-separated subset of " + ",".join(MODELS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for both models, e.g. train.lr=0.002")
    parser.add_argument("--parallel", action="store_true",
                        help="train the models at the same time, one process and --threads each, so a busy "
                             "machine slows both alike (default: one after the other)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    labels = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(labels) - set(MODELS))
    if unknown:
        parser.error(f"unknown --models {unknown}; choose from {sorted(MODELS)}")
    report: dict = {"benchmark": "quality", "data": args.data, "image_size": args.image_size,
                    "minutes_each": args.minutes, "threads": args.threads, "seed": args.seed,
                    "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory() as tmp:
        if args.parallel and len(labels) > 1:
            report.update(_train_in_parallel(labels, argv if argv is not None else sys.argv[1:], Path(tmp)))
        else:
            for label in labels:
                report[label] = train_one(label, args, Path(tmp) / label)
    report["parallel"] = bool(args.parallel and len(labels) > 1)
    first = report[labels[0]]
    report["references"] = first.pop("references")
    for label in labels[1:]:
        report[label].pop("references")
    if {"ssmt", "unet"} <= set(labels):
        report["ssmt_minus_unet_dice"] = report["ssmt"]["dice_mean"] - report["unet"]["dice_mean"]
    report["ssmt_minus_all_foreground_dice"] = (report.get("ssmt", first)["dice_mean"]
                                               - report["references"]["all_foreground"]["dice_mean"])
    print(json.dumps(jsonable(report)))
    return report


if __name__ == "__main__":
    main()
