"""Benchmark: SLIC on the GPU (``segmentation_device``) against scikit-image on the CPU.

For each photograph (scikit-image's, resized to 224²) and each count Algorithm 3 asks SLIC for
(4 … 64 for the scales, 512 for the 2^8 prior), the torch SLIC of
``xaiserve.imaging.gpu_slic`` runs on CUDA (float32) and its labels are compared with
``skimage.segmentation.slic`` (the service's CPU path): adjusted Rand index, share of pixels
with the same label, region counts, and both times (CUDA synchronised, best of ``--repeats``).

Without CUDA the same tensor code runs on torch's CPU tensors in float32 (CUDA's precision) on
64² images: that checks agreement only (the CPU torch path is not meant to be fast), and the
table says so.
``check(...)`` is what ``bench/gpu.py`` calls on a GPU machine.

Run: ``.venv/bin/python bench/segmentation_device.py [--quick]``
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

COUNTS = (4, 8, 16, 32, 64, 512)


def photographs(n: int, size: int) -> np.ndarray:
    from skimage import data
    from skimage.transform import resize

    names = ("astronaut", "coffee", "chelsea", "rocket")[:n]
    return np.stack(
        [255.0 * resize(getattr(data, nm)(), (size, size), anti_aliasing=True) for nm in names]
    ).astype(np.float32)


def _best(fn: Any, repeats: int, sync: Any) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best, out


def check(
    images: np.ndarray, counts: Sequence[int] = COUNTS, device: str = "cuda", repeats: int = 3
) -> tuple[list[list[object]], bool]:
    """Rows (count, ARI, same-label share, regions CPU/GPU, ms CPU/GPU, speed-up), and whether
    every comparison agreed (ARI ≥ 0.9: float32 on the GPU may flip boundary pixels)."""
    from sklearn.metrics import adjusted_rand_score

    from xaiserve.imaging import gpu_slic
    from xaiserve.imaging.segmentation import SegmentationParams, superpixels

    def sync() -> None:
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    gpu_slic.superpixels(images[0], SegmentationParams(n_segments=16), device)  # warm-up
    rows: list[list[object]] = []
    ok = True
    for n in counts:
        params = SegmentationParams(n_segments=n)
        ari, same, regions, t_cpu, t_dev = [], [], [], [], []
        for image in images:
            tc, want = _best(functools.partial(superpixels, image, params), repeats, lambda: None)
            td, got = _best(
                functools.partial(gpu_slic.superpixels, image, params, device, "float32"),
                repeats,
                sync,
            )
            ari.append(adjusted_rand_score(want.ravel(), got.ravel()))
            same.append(float((want == got).mean()))
            regions.append(f"{int(want.max()) + 1}/{int(got.max()) + 1}")
            t_cpu.append(tc)
            t_dev.append(td)
        ok &= min(ari) >= 0.9
        rows.append(
            [
                n,
                min(ari),
                min(same),
                " ".join(regions),
                1e3 * statistics.median(t_cpu),
                1e3 * statistics.median(t_dev),
                statistics.median(t_cpu) / statistics.median(t_dev),
            ]
        )
    return rows, ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one image, one repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeats = 1, 1
    from _common import print_table
    from xaiserve.imaging import gpu_slic

    why = gpu_slic.unavailable_reason()
    if why is None:
        device, size, counts = "cuda", 224, COUNTS
    else:
        device, size, counts = "cpu", 64, (4, 16, 64)
        print(f"no GPU ({why}): agreement of the torch code on the CPU only, {size}² images")
    images = photographs(args.images, size)
    rows, ok = check(images, counts, device, args.repeats)
    one, five, _ = os.getloadavg()
    print_table(
        f"SLIC: scikit-image (CPU) vs xaiserve.imaging.gpu_slic on {device}, {size}², "
        f"{len(images)} image(s), load {one:.1f}/{five:.1f}",
        [
            "segments asked",
            "ARI (min)",
            "same label (min)",
            "regions CPU/dev",
            "CPU ms",
            f"{device} ms",
            "speed-up",
        ],
        rows,
    )
    print("agreement:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
