"""All speed figures of DESIGN.md section 5, printed as one JSON object (``make bench``).

- phantom: images/s at 224 px on one core, all annotations (``bench_phantom.py``, own process so
  its one-thread setting holds).
- tiny_step: the ``tiny`` preset's training step (forward, eq. 12 loss, backward, Adam) at 128 px on
  2 threads, images/s (no goal of its own any more: quality per CPU-minute, ``quality.py``, is the
  first figure; a faster step only counts if the model still learns): the median of several timed windows, with the slowest and
  fastest window, because a shared VM drifts by +-10% between windows.
- paper_ratio: the ``paper`` preset's forward+backward time with the eq. 12 loss (a training step
  without the optimizer) divided by the bare timm ``vit_base_r50_s16_224`` encoder's
  (``forward_features``), same process, same batch, default memory format (goal <= 1.6). The two
  are timed alternately, one pair per round, and the median of the per-round ratios is reported
  (with its range), so drift of the machine hits both sides of a ratio alike. Also with the
  reported maps only, and the same ratio in FLOPs (``torch.utils.flop_counter``), which does not
  depend on the machine.
- query_decoder: the gain of each speed-up of ``ssmt_lib.query_decoder_fast`` (cross-attention on raw
  tokens, factored masks, both) over the plain query decoder: a training step's forward + loss +
  backward for the tiny and the paper preset, one thread, the forms timed alternately.
- train_loop: ``fit`` on the phantom for one epoch, data loading included, images/s.
- gpu (only when CUDA is present): paper training images/s and peak memory at batch 32, with and
  without bf16 autocast + fused attention.

Speed goals are read from this output, never asserted in tests. Quality per CPU-minute (``tiny`` vs
the plain U-Net at equal time) is ``benchmarks/quality.py`` (``make quality``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _batch(n: int, image_size: int) -> dict:
    from ssmt_lib.data import build_dataset

    ds = build_dataset("phantom", split="train", n=max(n, 8), image_size=image_size)
    batch = torch.utils.data.default_collate([ds[i % len(ds)] for i in range(n)])
    batch["size"] = batch["size"].float()
    return batch


def _time(fn, repeats: int, warmup: int = 1, sync=lambda: None) -> float:
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def _paired_rounds(fns: dict, rounds: int, sync=lambda: None) -> dict[str, list[float]]:
    """Seconds per call of every function, timed one after another in each of ``rounds`` rounds."""
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def bench_phantom() -> dict:
    out = subprocess.run([sys.executable, str(HERE / "bench_phantom.py")], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def bench_tiny_step(batch_size: int = 16, threads: int = 2, repeats: int = 3, windows: int = 5) -> dict:
    from ssmt_lib.config import make_config
    from ssmt_lib.losses import total_loss
    from ssmt_lib.model import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = make_config("tiny")
    model = build_model(config=cfg).to(memory_format=torch.channels_last)
    batch = _batch(batch_size, cfg.model.image_size)
    images = batch["image"].contiguous(memory_format=torch.channels_last)
    opt_class = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
    opt = opt_class(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=True)  # as train.fit

    def step():
        loss, _ = total_loss(model(images), batch, cfg.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(), step()  # warm-up
    rates = sorted(batch_size / _time(step, repeats, warmup=0) for _ in range(windows))
    return {"tiny_step_images_per_s": statistics.median(rates), "slowest_window": rates[0], "fastest_window": rates[-1],
            "windows": windows, "steps_per_window": repeats, "batch_size": batch_size,
            "image_size": cfg.model.image_size, "threads": threads, "goal": None}


def bench_paper_ratio(batch_size: int = 2, rounds: int = 5, device: str = "cpu") -> dict:
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    from ssmt_lib.config import make_config
    from ssmt_lib.losses import total_loss
    from ssmt_lib.model import build_model

    torch.manual_seed(0)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    cfg = make_config("paper")
    model = build_model(config=cfg).to(dev)
    encoder = timm.create_model("vit_base_r50_s16_224", pretrained=False, num_classes=0).to(dev)
    batch = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in _batch(batch_size, 224).items()}
    x = batch["image"]

    def enc_step():
        encoder.forward_features(x).float().mean().backward()

    def ssmt_loss():  # a training step's forward + backward: eq. 12 on every head
        total_loss(model(x), batch, cfg.loss)[0].backward()

    def ssmt_outputs():  # forward + backward of the reported maps only (no query deep supervision)
        out = model(x)
        parts = [out.nodule_logits, out.gland_logits, out.recon, out.size, out.nodule_aux_logits, out.gland_aux_logits]
        sum(p.float().mean() for p in parts).backward()

    times = _paired_rounds({"encoder": enc_step, "ssmt": ssmt_loss, "outputs": ssmt_outputs}, rounds, sync)
    ratios = sorted(s / e for s, e in zip(times["ssmt"], times["encoder"]))
    ratios_out = sorted(s / e for s, e in zip(times["outputs"], times["encoder"]))
    flops = {}
    for name, fn in (("encoder", enc_step), ("ssmt", ssmt_loss)):
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        flops[name] = counter.get_total_flops()
    med = statistics.median
    return {"paper_ratio": med(ratios), "paper_ratio_range": [ratios[0], ratios[-1]],
            "paper_ratio_outputs_only": med(ratios_out), "paper_flop_ratio": flops["ssmt"] / flops["encoder"],
            "encoder_s": med(times["encoder"]), "ssmt_s": med(times["ssmt"]), "ssmt_outputs_only_s": med(times["outputs"]),
            "rounds": rounds, "batch_size": batch_size, "device": device, "goal": 1.6}


QUERY_DECODER_FORMS = {  # ModelConfig switches of ssmt_lib.query_decoder_fast
    "plain": {"cross_attention_on_tokens": False, "factored_masks": False},
    "tokens": {"cross_attention_on_tokens": True, "factored_masks": False},
    "factored": {"cross_attention_on_tokens": False, "factored_masks": True},
    "both": {"cross_attention_on_tokens": True, "factored_masks": True},
}


def bench_query_decoder(presets: tuple[str, ...] = ("tiny", "paper"), threads: int = 1) -> dict:
    """Each query-decoder speed-up's gain: forward + eq. 12 loss + backward, plain form vs switched on.

    The four forms share their initial weights and are timed one after another in every round
    (median over rounds), so drift of the machine hits all alike. tiny: 128 px, batch 8, 15 rounds;
    paper: 224 px, batch 2, 4 rounds.
    """
    from ssmt_lib.config import make_config
    from ssmt_lib.losses import total_loss
    from ssmt_lib.model import build_model

    torch.set_num_threads(threads)
    report = {}
    for preset in presets:
        size, batch_size, rounds = (128, 8, 15) if preset == "tiny" else (224, 2, 4)
        batch = _batch(batch_size, size)
        steps = {}
        for form, switches in QUERY_DECODER_FORMS.items():
            torch.manual_seed(0)
            cfg = make_config(preset, image_size=size, **switches)
            model = build_model(config=cfg)

            def step(model=model, cfg=cfg):
                total_loss(model(batch["image"]), batch, cfg.loss)[0].backward()

            steps[form] = step
        times = {k: statistics.median(v) for k, v in _paired_rounds(steps, rounds).items()}
        report[preset] = {"step_s": times, "gain_vs_plain": {k: times["plain"] / v for k, v in times.items()},
                          "batch_size": batch_size, "image_size": size, "rounds": rounds, "threads": threads}
    return report


def bench_train_loop(phantom_n: int = 64, threads: int = 2) -> dict:
    from ssmt_lib.config import make_config
    from ssmt_lib.train import fit

    torch.set_num_threads(threads)
    cfg = make_config("tiny", epochs_pretrain=0, epochs=1, batch_size=16)
    result = fit(cfg, data="phantom", phantom_n=phantom_n, progress=False, evaluate_test=False, device=torch.device("cpu"))
    record = result.history[-1]
    return {"train_loop_images_per_s": record["images_per_s"], "images": phantom_n, "threads": threads,
            "includes": "phantom rendering + augmentation + step, num_workers=0"}


def bench_gpu(batch_size: int = 32, steps: int = 10) -> dict:
    from ssmt_lib.config import make_config
    from ssmt_lib.embed import set_fused_attn
    from ssmt_lib.losses import total_loss
    from ssmt_lib.model import build_model

    results = {}
    dev = torch.device("cuda")
    batch = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in _batch(batch_size, 224).items()}
    for name, fast in (("bf16_fused", True), ("fp32_explicit", False)):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        cfg = make_config("paper")
        model = build_model(config=cfg).to(dev).to(memory_format=torch.channels_last)
        set_fused_attn(model, fast)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        x = batch["image"].contiguous(memory_format=torch.channels_last)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=fast):
                out = model(x)
            loss, _ = total_loss(out, batch, cfg.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        seconds = _time(step, steps, warmup=2, sync=torch.cuda.synchronize)
        results[name] = {"images_per_s": batch_size / seconds,
                         "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}
        del model, opt
    results["device_name"] = torch.cuda.get_device_name()
    results["paper_ratio_gpu"] = bench_paper_ratio(batch_size=batch_size, rounds=10, device="cuda")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*",
                        choices=["phantom", "tiny_step", "paper_ratio", "query_decoder", "train_loop", "gpu"])
    args = parser.parse_args(argv)
    benches = {"phantom": bench_phantom, "tiny_step": bench_tiny_step, "paper_ratio": bench_paper_ratio,
               "query_decoder": bench_query_decoder, "train_loop": bench_train_loop}
    if torch.cuda.is_available():
        benches["gpu"] = bench_gpu
    report = {"torch": torch.__version__, "cpu_threads_available": torch.get_num_threads()}
    for name, fn in benches.items():
        if args.only and name not in args.only:
            continue
        report[name] = fn()
        print(f"{name}: done", file=sys.stderr)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
