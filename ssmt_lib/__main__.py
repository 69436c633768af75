"""Command line: ``python -m ssmt_lib {train, evaluate, predict, sweep, workbook} ...``.

    python -m ssmt_lib train --preset tiny --data phantom --epochs-pretrain 2 --epochs 6 --out runs/tiny
    python -m ssmt_lib train --preset paper --data tn3k+tg3k --data-root data --out runs/paper   # GPU
    torchrun --nproc_per_node 4 -m ssmt_lib train --preset paper --data tn3k+tg3k --data-root data --out runs/ddp
    python -m ssmt_lib evaluate --checkpoint runs/tiny/best.pt --data phantom --split test
    python -m ssmt_lib train --task classify --model resnet18 --data phantom --out runs/cls   # dual-stage paper
    python -m ssmt_lib train --task classify --model vgg16 --data ddti_tirads --data-root data/ddti_tirads --out runs/vgg
    python -m ssmt_lib train --task tirads --data phantom --model-option method=rlar --out runs/tirads  # RLAR paper
    python -m ssmt_lib predict --classifier runs/cls/best.pt --segmenter runs/tiny/best.pt --images DIR --out DIR
    python -m ssmt_lib sweep params/ablation.yaml [--keep-going]
    python -m ssmt_lib workbook            # every notebook through papermill into runs/<name>/

Everything ``train`` accepts is the notebooks' config: ``--set key=value`` sets any config field
(values parsed as YAML, e.g. ``--set model.num_queries=10 --set loss.alpha=0.7``; exponent
spellings such as ``--set train.lr=1e-4`` are numbers too, quote them for a string). ``evaluate``
uses the data settings stored in the checkpoint (data, data root, fold, phantom size) unless an
option overrides them, with a warning when it disagrees.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml


_NUMBER = re.compile(r"[+-]?(\d[\d_]*\.?\d*|\.\d+)[eE][+-]?\d+")  # exponent spellings: 1e-4, 2.5E3, .5e1


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        # YAML 1.1 reads 1e-4 (no dot) as a string; an unquoted number spelling is a number
        out[key.strip()] = float(value) if _NUMBER.fullmatch(value.strip()) else yaml.safe_load(value)
    return out


def _train(args: argparse.Namespace) -> int:
    from ssmt_lib.config import make_config
    from ssmt_lib.distributed import is_main_process
    from ssmt_lib.evaluation import jsonable
    from ssmt_lib.train import fit

    overrides = _parse_sets(args.set)
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    if args.epochs_pretrain is not None:
        overrides["train.epochs_pretrain"] = args.epochs_pretrain
    if args.max_minutes is not None:
        overrides["train.max_minutes"] = args.max_minutes
    if args.batch_size is not None:
        overrides["train.batch_size"] = args.batch_size
    from ssmt_lib.baselines import ALIASES, BASELINE_NAMES

    # a baseline trains with its paper's protocol (config.BASELINE_SETTINGS) at the preset's width
    baseline = args.model if args.model in (*BASELINE_NAMES, *ALIASES) else None
    cfg = make_config(args.preset, variant=args.variant, baseline=baseline,
                      **{k.replace(".", "__"): v for k, v in overrides.items()})
    if args.task == "classify":
        return _train_classifier(args, cfg)
    if args.task == "tirads":  # joint nodule mask + TI-RADS (RLAR paper), ssmt_lib.train_tirads
        from ssmt_lib.train_tirads import cli_train

        return cli_train(args, cfg, _parse_sets(args.model_option))
    if args.model_option:
        raise SystemExit("--model-option applies to --task classify only")
    data_options = {}
    if args.phantom_n is not None:
        data_options["phantom_n"] = args.phantom_n
    if args.unlabeled_dir is not None:
        data_options["unlabeled_dir"] = args.unlabeled_dir
    result = fit(cfg, data=args.data, data_root=args.data_root, out_dir=args.out, model_name=args.model,
                 progress=not args.no_progress, fold=args.fold, **data_options)
    summary = {"out": str(args.out), "best": result.best, "stopped_early": result.stopped_early,
               "test_nodule": {k: v for k, v in result.test.get("nodule", {}).items() if k.endswith(("mean", "std"))},
               "test_references": result.test.get("references", {}).get("nodule", {})}  # the floor of those numbers
    if is_main_process():
        print(json.dumps(jsonable(summary), indent=1, default=str))
    return 0


def _train_classifier(args: argparse.Namespace, cfg: Any) -> int:
    """``train --task classify``: a benign/malignant classifier (ssmt_lib.train_classify)."""
    from ssmt_lib.evaluation import jsonable
    from ssmt_lib.train import fit

    if args.unlabeled_dir is not None or args.fold != 0 or args.epochs_pretrain is not None:
        raise SystemExit("--unlabeled-dir, --fold and --epochs-pretrain apply to segmentation, not to --task classify")
    options = {"phantom_n": args.phantom_n} if args.phantom_n is not None else {}
    result = fit(cfg, task="classify", data=args.data, data_root=args.data_root, out_dir=args.out,
                 model_name=args.model, model_options=_parse_sets(args.model_option), progress=not args.no_progress,
                 **options)
    keys = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "auc")
    test = {k: result.test.get(k) for k in keys} if result.test else {}
    if result.test:
        test.update(majority={k: result.test["majority"][k] for k in keys}, beats_majority=result.test["beats_majority"])
    print(json.dumps(jsonable({"out": str(args.out), "best": result.best, "stopped_early": result.stopped_early,
                               "test": test}), indent=1, default=str))
    return 0


def _evaluate_classifier(args: argparse.Namespace, model: Any, cfg: Any, ckpt: dict, device: Any) -> int:
    """``evaluate`` on a classifier checkpoint: the classification metrics JSON with the majority reference."""
    from ssmt_lib.resume import checkpoint_evaluation_data
    from ssmt_lib.evaluation import jsonable
    from ssmt_lib.loaders import make_loader
    from ssmt_lib.train_classify import classification_data, evaluate_classifier

    settings = checkpoint_evaluation_data(args, ckpt, classification_data, "classifier")
    datasets = classification_data(**settings, image_size=cfg.model.image_size, seed=cfg.train.seed)
    loader = make_loader(datasets[args.split], cfg.train.batch_size, False, 0, 0, device)
    metrics = jsonable(evaluate_classifier(model, loader, device, train_labels=datasets["train"].labels))
    metrics.update(checkpoint=str(args.checkpoint), task="classify", model=ckpt.get("model_name"), split=args.split,
                   data_settings=jsonable(settings))
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name(f"eval_{settings['data']}_{args.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics, indent=1))
    return 0


def _predict(args: argparse.Namespace) -> int:
    """``predict``: the two-stage pipeline (classify, then segment) on an image folder."""
    from ssmt_lib.pipeline import TwoStagePipeline
    from ssmt_lib.distributed import default_device
    from ssmt_lib.evaluation import jsonable

    pipe = TwoStagePipeline.from_checkpoints(args.classifier, args.segmenter, device=default_device(),
                                             threshold=args.threshold)
    summary = pipe.predict_folder(args.images, args.out, skip_bad=args.skip_bad)
    print(json.dumps(jsonable(summary), indent=1))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ssmt_lib.resume import data_settings, evaluation_data
    from ssmt_lib.checkpoints import model_from_checkpoint
    from ssmt_lib.distributed import default_device
    from ssmt_lib.evaluation import evaluate, jsonable
    from ssmt_lib.loaders import build_data, make_loader

    device = default_device()
    model, cfg, ckpt = model_from_checkpoint(args.checkpoint, device)
    if args.split not in ("val", "test"):
        raise SystemExit(f"--split must be val or test, got {args.split!r}")
    if ckpt.get("task") == "classify":
        return _evaluate_classifier(args, model, cfg, ckpt, device)
    if ckpt.get("task") == "tirads":
        from ssmt_lib.train_tirads import cli_evaluate

        return cli_evaluate(args, model, cfg, ckpt, device)
    # the data the model was trained on (stored in the checkpoint) unless an option says otherwise
    requested = {"data": args.data, "data_root": args.data_root, "fold": args.fold, "phantom_n": args.phantom_n}
    settings, notes = evaluation_data(ckpt.get("data"), requested, data_settings(build_data, "phantom", None, {}))
    for note in notes:
        warnings.warn(f"evaluate {args.checkpoint}: {note}", stacklevel=1)
    settings["unlabeled_dir"] = None  # phase-1 images are not evaluated
    datasets = build_data(**settings, image_size=cfg.model.image_size, seed=cfg.train.seed)
    loader = make_loader(datasets[args.split], cfg.train.batch_size, False, 0, 0, device)
    metrics = jsonable(evaluate(model, loader, device))
    metrics.update(checkpoint=str(args.checkpoint), data=settings["data"], split=args.split,
                   data_settings=jsonable(settings))
    name = f"eval_{settings['data'].replace('+', '_')}_{args.split}.json"
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name(name)
    out.parent.mkdir(parents=True, exist_ok=True)  # a missing folder must not lose the finished evaluation
    out.write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics, indent=1))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    import time

    from ssmt_lib.experiments import load_sweep, run_sweep, store_results

    start = time.perf_counter()
    sweep = load_sweep(args.file)
    table = run_sweep(sweep, keep_going=args.keep_going, workers=args.workers)
    print(table.to_string() if table is not None and len(table) else "no finished points")
    if args.store:
        command = " ".join(["python -m ssmt_lib sweep", args.file, f"--workers {args.workers}", "--store"])
        print("stored in", store_results(sweep, command, (time.perf_counter() - start) / 60))
    return 0


def _workbook(args: argparse.Namespace) -> int:
    from ssmt_lib.notebook_runner import run_workbook

    run_workbook(names=args.notebooks or None)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssmt_lib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="two-phase training (resumes when --out holds last.pt)")
    t.add_argument("--preset", default="tiny", help="paper | tiny")
    t.add_argument("--task", default="segment", choices=("segment", "classify", "tirads"),
                   help="classify: a benign/malignant classifier of the dual-stage paper (--model resnet18, vgg16, ...); "
                   "tirads: joint nodule mask + TI-RADS category (RLAR paper; --model-option method=rlar ...)")
    t.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="classifier config field (--task classify), e.g. class_weight=none; TiradsConfig field "
                   "(--task tirads), e.g. method=pcgrad")
    t.add_argument("--variant", default=None, help="Table 2 variant, e.g. 1_baseline ... 5_all")
    t.add_argument("--model", default=None, help="train a baseline instead: unet, resnet50_unet, mtnet, trfe "
                   "(at the preset's width, with its paper's loss and, under --preset paper, its paper's settings)")
    t.add_argument("--data", default="phantom", help="phantom | tn3k | tg3k | ddti | tn3k+tg3k ...")
    t.add_argument("--data-root", default=None)
    t.add_argument("--fold", type=int, default=0)
    t.add_argument("--phantom-n", type=int, default=None, help="phantom training images")
    t.add_argument("--unlabeled-dir", default=None, help="extra unlabeled images for phase 1")
    t.add_argument("--epochs-pretrain", type=int, default=None)
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--max-minutes", type=float, default=None)
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--out", required=True, help="run folder (checkpoints, metrics.json, history.csv)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="metrics of a checkpoint on a split")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", default=None, help="default: the data stored in the checkpoint")
    e.add_argument("--data-root", default=None, help="default: the checkpoint's")
    e.add_argument("--fold", type=int, default=None, help="TN3K fold; default: the checkpoint's")
    e.add_argument("--phantom-n", type=int, default=None, help="phantom training images; default: the checkpoint's")
    e.add_argument("--split", default="test")
    e.add_argument("--out", default=None, help="metrics JSON path (default: next to the checkpoint)")
    e.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", help="two-stage pipeline: P(malignant), nodule mask, area and box per image")
    p.add_argument("--classifier", required=True, help="best.pt of train --task classify")
    p.add_argument("--segmenter", required=True, help="best.pt of a segmentation run (SSMT-Net, baseline, segmenter)")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--out", required=True, help="output folder: masks/*.png and predictions.csv")
    p.add_argument("--threshold", type=float, default=0.5, help="mask threshold on the nodule probability (eq. 20)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable or non-image files, listed in the summary")
    p.set_defaults(func=_predict)

    s = sub.add_parser("sweep", help="papermill parameter sweep from a YAML file")
    s.add_argument("file")
    s.add_argument("--keep-going", action="store_true", help="run every point, report failures at the end")
    s.add_argument("--workers", type=int, default=1, help="points run at once, each in its own kernel")
    s.add_argument("--store", action="store_true",
                   help="copy the tables into results/<name>/ (runs.csv, summary, meta.json) for the notebooks")
    s.set_defaults(func=_sweep)

    w = sub.add_parser("workbook", help="execute every notebook into runs/<name>/ and refresh figures/")
    w.add_argument("notebooks", nargs="*", help="names like 00_data_and_phantom (default: all)")
    w.set_defaults(func=_workbook)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
