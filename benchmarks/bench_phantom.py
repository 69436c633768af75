"""Phantom throughput benchmark (DESIGN.md section 5: >= 200 images/s at 224x224 on one CPU core,
all annotations included).

Threads are pinned to 1 before numpy/scipy/torch load, so the figure is a one-core figure
(measured in process CPU time, so other jobs on a shared machine do not distort it).
``order="sequential"`` reads indices 0..n-1 as an unshuffled loader does (consecutive indices
are views of one patient, whose anatomy is cached); ``order="shuffled"`` measures random access.

    python benchmarks/bench_phantom.py            # prints JSON
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def bench_phantom(n: int = 400, image_size: int = 224, profile: str = "default", order: str = "sequential",
                  seed: int = 0) -> dict:
    """Render ``n`` phantom samples (image, nodule and gland masks, size, TI-RADS, ids) and time them.

    Args:
        n: number of samples timed (after one warm-up sample that builds the noise bank).
        image_size: output side in pixels.
        profile: a name in ``phantom.PROFILES``.
        order: "sequential" (indices 0..n-1) or "shuffled" (random indices, no patient reuse).
        seed: data-set seed.

    Returns:
        {"phantom_images_per_s" (from CPU time of this one-thread process), "image_size",
        "threads": 1, "ms_per_image", "wall_images_per_s", "n", "profile", "order"}.
    """
    from ssmt_lib.data import phantom

    if order not in ("sequential", "shuffled"):
        raise ValueError(f"order must be 'sequential' or 'shuffled', got {order!r}")
    if profile not in phantom.PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(phantom.PROFILES)}")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # the phantom itself needs only numpy/scipy
        pass
    cfg = dataclasses.replace(phantom.PROFILES[profile], image_size=image_size)
    phantom.sample(10**7, seed, cfg)  # warm-up: noise bank and coordinate caches
    idx = range(n) if order == "sequential" else np.random.default_rng(1).permutation(10**6)[:n]
    t0, c0 = time.perf_counter(), time.process_time()
    for i in idx:
        phantom.sample(int(i), seed, cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    # Single-threaded, so CPU seconds = seconds on one core; wall time also counts waiting for a
    # core on a shared machine and is reported beside it.
    return {"phantom_images_per_s": round(n / cpu, 1), "image_size": image_size, "threads": 1,
            "ms_per_image": round(1e3 * cpu / n, 3), "wall_images_per_s": round(n / wall, 1),
            "n": n, "profile": profile, "order": order}


if __name__ == "__main__":
    print(json.dumps(bench_phantom()))
