"""Benchmark: perturbing in the network's input space against image space, same run.

Black-box methods that send many perturbed copies of one image build them in the model's input
format when the model takes it (``NetworkInputModel``: the image and the replacement values
converted once). The other path — what a model without ``predict_network_input`` gets — builds
image-space copies that ``Model.predict`` converts one by one. Both paths give bit-identical
network inputs (``tests/unit/test_network_input.py``); here they race on the light network
``mobilenet_v3_small`` (torchvision, seed 0, random weights, 224², through the service's
``Model`` facade), where the conversion is a noticeable share of a forward pass:

- regional prediction difference, warm segmentation cache (the image re-explained for
  another target: segmentation and draws cached, as in the cache table's warm column);
- MoRF, L = 100 steps, one repeat of uniform noise, 8×8 windows (MoRF only);
- contextual importance with the default superpixels and the black fill;
- pixel-wise prediction difference (Algorithm 2, k = 10, l = 14, r = 10) at stride 24: 100
  patches, 1001 passes.

Printed: wall and process CPU per call (best of ``--repeats``, interleaved), the ratio image
space ÷ network space, and each against its forward passes × the session floor (the
onnxruntime session alone on pre-converted input at its best batch size).

Run: ``.venv/bin/python bench/network_input.py [--repeats N]``
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import functools
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from _segmentation import load_avg, session_floor

from _common import load_onnx, natural_images, torchvision_onnx
from xaiserve.evaluation.morf import MorfParams, region_perturbation
from xaiserve.methods import pixelwise_prediction_difference as pixelwise
from xaiserve.methods import regional_prediction_difference as regional
from xaiserve.methods.base import Target
from xaiserve.methods.contextual_importance import (
    ContextualImportanceParams,
    contextual_importance,
)
from xaiserve.models.model import Model


class ImageSpace:
    """The served model behind ``predict`` only: the image-space path."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.input_size = model.input_size
        self.num_classes = model.num_classes
        self.output_kind = model.output_kind

    def predict(
        self, images: np.ndarray | Iterable[np.ndarray], output: Any = "probabilities"
    ) -> np.ndarray:
        return self.model.predict(images, output)


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    c, t = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"load average at start (1/5 min, 2 cores): {load_avg()}")
    root = Path(tempfile.mkdtemp(prefix="bench-ni-"))
    try:
        model = load_onnx(root, "light", torchvision_onnx("mobilenet_v3_small"), 224, delay_ms=1.0)
        image = natural_images(1, 224)[0]
        floor_wall, floor_cpu, batch = session_floor(model, image, 3)
        heat = np.random.default_rng(0).random((224, 224))
        rpd = regional.RegionalPredictionDifferenceParams()
        morf = MorfParams(
            window=8,
            steps=100,
            fill="uniform",
            repeats=1,
            seed=1,
            lerf=False,
            random_baseline=False,
        )  # MoRF only: 1 + 100 passes (the random baseline would add 100 more)
        ci = ContextualImportanceParams()
        pw = pixelwise.PixelwisePredictionDifferenceParams(stride=24, seed=1)
        regional.explain(model, image, Target(0), rpd)  # segmentation and draws cached
        cases: dict[str, tuple[int, Callable[[Any], Any]]] = {
            "regional PD (warm cache)": (
                regional.cost(rpd, (224, 224)),
                lambda m: regional.explain(m, image, Target(1), rpd),
            ),
            "MoRF (L = 100, 1 repeat)": (
                -1,
                lambda m: region_perturbation(m, image, heat, 1, morf),
            ),
            "contextual importance": (
                -1,
                lambda m: contextual_importance(m, image, Target(1), ci),
            ),
            "pixel-wise PD (stride 24)": (
                -1,
                lambda m: pixelwise.explain(m, image, Target(1), pw),
            ),
        }
        rows = []
        for name, (passes, run) in cases.items():
            if passes < 0:  # counted by the method itself
                result = run(model)
                passes = int(
                    result.forward_passes
                    if hasattr(result, "forward_passes")
                    else result.values["forward_passes"]
                )
            paths = {"network": model, "image": ImageSpace(model)}
            for m in paths.values():
                run(m)  # warm-up (and the image path's draws cached)
            times: dict[str, list[tuple[float, float]]] = {k: [] for k in paths}
            for _ in range(args.repeats):
                for key, m in paths.items():  # interleaved: the same load for both
                    times[key].append(timed(functools.partial(run, m)))
            best = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in times.items()}
            rows.append((name, passes, best))
        print(
            f"\nNetwork-space vs image-space perturbation, mobilenet_v3_small 224², session floor"
            f" {1e3 * floor_wall:.2f} ms/img wall, {1e3 * floor_cpu:.2f} CPU (batch {batch});"
            f" best of {args.repeats}, interleaved"
        )
        print(
            "| method | passes | network wall / CPU ms | image wall / CPU ms"
            " | image ÷ network wall / CPU | network ÷ floor wall | image ÷ floor wall |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, passes, b in rows:
            (nw, nc), (iw, ic) = b["network"], b["image"]
            print(
                f"| {name} | {passes} | {1e3 * nw:.1f} / {1e3 * nc:.1f} | {1e3 * iw:.1f} / "
                f"{1e3 * ic:.1f} | {iw / nw:.3f} / {ic / nc:.3f} | {nw / (passes * floor_wall):.2f}"
                f" | {iw / (passes * floor_wall):.2f} |"
            )
        print(f"\nload average at end: {load_avg()}")
        model.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
