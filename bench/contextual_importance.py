"""Benchmark: contextual importance (Anjomshoae et al., Algorithm 1) against its physical floor.

    ratio = wall time of one request
            / (segmentation time + forward passes × best per-image batch time)

The floor is what any implementation must spend: the superpixels, and every image of Eq. 2
(and Eq. 1's utility fills) through the network at the model's best batch size. Goal: ≤ 1.25.

Models: the shapes demo (``models/shapes/1``) on held-out images, and a ResNet-50-sized
network (torchvision ``resnet50(weights=None)`` after ``torch.manual_seed(0)``, exported at
224×224 and cached under ``$XAISERVE_BENCH_CACHE`` or ``~/.cache/xaiserve/bench``) on
scikit-image's bundled photographs resized to 224×224 (SLIC merges the fine grain of 224-pixel
shapes images into a handful of regions, down to one, which would bench nothing). The model
goes through the service's ``Model`` facade (repository, dynamic batcher, onnxruntime with
spinning off). Wall and floor are measured interleaved, best of ``--repeats``; on a shared 2-core
machine compare ratios from one run only.

Run: ``.venv/bin/python bench/contextual_importance.py [--models demo,resnet50] [--utility-fills
white,blur]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from _common import DEMO, MODELS, load_model, load_onnx, natural_images, torchvision_onnx
from xaiserve.demo import shapes
from xaiserve.imaging.segmentation import SegmentationParams, superpixels
from xaiserve.methods.base import Target
from xaiserve.methods.contextual_importance import (
    ContextualImportanceParams,
    contextual_importance,
)
from xaiserve.models.model import Model

BATCH_SIZES = (1, 4, 16, 32)


def load(name: str) -> Model:
    """The model through the service facade: the demo from ``models/``, else an export."""
    if name == "shapes":
        return load_model(MODELS, "shapes")
    workdir = Path(tempfile.mkdtemp(prefix="bench-ci-"))
    return load_onnx(workdir, name, torchvision_onnx(name), 224, max_batch=64)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(
    name: str, images: np.ndarray, params: ContextualImportanceParams, repeats: int
) -> dict[str, Any]:
    """Best-of-``repeats`` times; wall and floor are measured interleaved in every round so
    that load from other processes on the machine hits both alike."""
    model = load(name)
    xs = [raw.astype(np.float32) for raw in images]
    targets = [Target(int(np.argmax(model.predict(x[None])[0]))) for x in xs]
    passes = [
        int(contextual_importance(model, x, t, params).values["forward_passes"])  # warm-up
        for x, t in zip(xs, targets, strict=True)
    ]
    batches = {b: np.repeat(xs[0][None], b, axis=0) for b in BATCH_SIZES}
    inf = float("inf")
    wall, seg = [inf] * len(xs), [inf] * len(xs)
    per_image = dict.fromkeys(BATCH_SIZES, inf)
    for _ in range(repeats):
        for i, (x, t) in enumerate(zip(xs, targets, strict=True)):
            wall[i] = min(wall[i], timed(partial(contextual_importance, model, x, t, params)))
            seg[i] = min(seg[i], timed(partial(superpixels, x, params.segmentation)))
        for b, batch in batches.items():
            per_image[b] = min(per_image[b], timed(partial(model.predict, batch)) / b)
    model.close()
    best = min(per_image, key=lambda b: per_image[b])
    floors = [s + n * per_image[best] for s, n in zip(seg, passes, strict=True)]
    ratios = [w / f for w, f in zip(wall, floors, strict=True)]
    return {
        "model": name,
        "size": model.input_size[0],
        "passes": statistics.median(passes),
        "seg_ms": 1e3 * statistics.median(seg),
        "fwd_ms": 1e3 * per_image[best],
        "batch": best,
        "floor_s": statistics.median(floors),
        "wall_s": statistics.median(wall),
        "ratio": statistics.median(ratios),
        "worst": max(ratios),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="demo,resnet50")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n-segments", type=int, default=50)
    parser.add_argument("--utility-fills", default="", help="comma-separated, e.g. white,blur")
    parser.add_argument("--quick", action="store_true", help="demo model only")
    args = parser.parse_args(argv)
    if args.quick:
        args.models = "demo"
    fills = tuple(f for f in args.utility_fills.split(",") if f)
    params = ContextualImportanceParams(
        segmentation=SegmentationParams(n_segments=args.n_segments),
        utility_fills=fills,  # type: ignore[arg-type]
    )
    print(
        f"contextual_importance: n_segments={args.n_segments}, fill={params.fill}, "
        f"utility_fills={list(fills)}, {args.images} images, best of {args.repeats}"
    )
    print(
        "| model | H×W | passes/request | segmentation ms | forward ms/img (batch) "
        "| floor s | wall s | ratio (median, worst) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        if name == "demo":
            if not (DEMO / "model.onnx").exists():
                print(f"| shapes demo | skipped: {DEMO / 'model.onnx'} not found ||||||||")
                continue
            name, images = "shapes", shapes.heldout(args.images).images
        elif name == "resnet50":
            images = natural_images(args.images, 224)
        else:
            print(f"unknown model {name!r}", file=sys.stderr)
            return 2
        r = bench(name, images, params, args.repeats)
        print(
            f"| {r['model']} | {r['size']}×{r['size']} | {r['passes']:.0f} "
            f"| {r['seg_ms']:.1f} | {r['fwd_ms']:.2f} ({r['batch']}) | {r['floor_s']:.3f} "
            f"| {r['wall_s']:.3f} | {r['ratio']:.2f}, {r['worst']:.2f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
