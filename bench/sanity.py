"""Benchmark: the model-parameter randomisation test (Adebayo et al. 2018) against its floor.

For one method on one image:

    ratio = seconds of the randomisation test (every variant explained and compared)
            / (number of variants × seconds of the same method on the original model)

measured in the same run on the same ``Model`` facade the server uses (repository, onnxruntime
session with spinning off, dynamic batcher; torch pool for white-box methods; numpy's BLAS
pool capped at one thread, the server's default ``numpy_blas_threads``). The original
map is an input of the test (Score computes it anyway), so the floor is exactly one method
call per variant. Two figures per method:

* **cold** — the first test after the model loads: includes drawing the randomised
  parameters, building each variant's onnxruntime session (black-box) or PyTorch module
  (white-box, ``convert_onnx`` of the variant graph);
* **warm** — later tests, on the cached variants (what every later request pays). Goal ≤ 1.15.
  Rounds interleave ``k·n`` calls of the method on the original (the floor) with ``k`` warm
  tests, in alternating order, so that drift hits both (``k`` makes a round's floor last at
  least half a CPU second); the table gives the median of the rounds' own ratios (tests ÷
  floor of the same round) and the ratio of the best round's tests to the best floor, with the
  load average before and after (the machine may be shared).

Models: the bundled demo model (``models/shapes/1``, 64×64) with the default stops (every
weighted layer), and torchvision's ResNet-50 (``weights=None``, ``torch.manual_seed(0)``,
exported as the other benches do, cached under ``bench/.cache``) at 224×224 with 10 stops.

The demo-model section also prints the similarity curves (Spearman of |maps| per depth) for
the paper's methods: gradient, gradient×input, IG, LRP ε and LRP_CMP, guided backprop.

Run: ``PYTHONPATH=service:. .venv/bin/python bench/sanity.py [--quick]``. ``--quick``: the
demo model (7 rounds), and ResNet-50 with 2 stops and the gradient only (2 rounds; ≈ 1–2
minutes on 2 cores).
``--methods 'gradient,LRP_CMP'`` runs only the methods with those labels, ``--models demo`` or
``--models resnet50`` runs one of the two models (to keep one run under the CPU lock short).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import xaiserve.methods.catalog  # noqa: F401 - registers every method
from _common import REPO, load_model, model_repo, print_table, torchvision_onnx
from xaiserve.methods.base import Target, registered_methods
from xaiserve.models.model import Model
from xaiserve.models.randomised_variants import (
    randomisation_test,
    randomised_variants,
)
from xaiserve.runtime.thread_pools import configure_thread_pools

GOAL = 1.15
# The methods of Adebayo et al. Fig. 2 that xaiserve serves, and their parameters.
PAPER_METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("gradient", "saliency", {}),
    ("gradient×input", "gradient_times_input", {}),
    ("integrated gradients", "integrated_gradients", {"seed": 0}),
    ("LRP ε", "lrp", {"composite": "lrp_epsilon"}),
    ("LRP_CMP", "lrp", {"composite": "lrp_cmp_alpha1beta0"}),
    ("guided backprop", "guided_backprop", {}),
]


def params_for(method: str, overrides: dict[str, Any]) -> Any:
    spec = registered_methods()[method]
    params = spec.params_type()
    fields = {f.name for f in dataclasses.fields(params)}
    return dataclasses.replace(params, **{k: v for k, v in overrides.items() if k in fields})


def demo_images(n: int) -> np.ndarray:
    """Held-out images of the demo's own data set (``xaiserve.demo.shapes.heldout``)."""
    from xaiserve.demo.shapes import heldout

    return np.asarray(heldout(n).images, np.float32)


def smooth_image(size: int, seed: int = 0) -> np.ndarray:
    """A smooth random picture (bicubic upsampling of 8×8 noise)."""
    from PIL import Image

    small = np.random.default_rng(seed).uniform(0, 255, size=(8, 8, 3)).astype(np.uint8)
    big = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(big, np.float32)


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages (the machine is shared: read the ratios with
    them)."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def clock(kind: str) -> float:
    return time.process_time() if kind == "cpu" else time.perf_counter()


#: CPU seconds a round's floor lasts at least (short rounds are at the mercy of the scheduler:
#: 7 calls of a 10-ms method vary by ±10 % from one round to the next).
ROUND_SECONDS = 0.5


def time_method(
    label: str,
    model: Model,
    method: str,
    params: Any,
    image: np.ndarray,
    stops: int,
    repeats: int,
    kind: str,
) -> tuple[list[object], Any]:
    """Cold test, then ``repeats`` interleaved rounds, each timing ``k·n`` calls of the method
    on the original model (the floor) and ``k`` warm tests back to back, in alternating order
    (so that drift and the order within a round hit both equally); ``k`` makes a round's floor
    last at least :data:`ROUND_SECONDS`. Two warm ratios: the median of the rounds' own ratios
    (tests ÷ floor of the same round) and the ratio of the best round's tests to the best
    floor."""
    spec = registered_methods()[method]
    target = Target(int(np.argmax(model.predict(image[None])[0])))
    original = spec.explain(model, image, target, params).heatmap  # warms the original
    variants = randomised_variants(model, stops=stops, seed=0)
    n = len(variants)
    t = clock(kind)
    curve = randomisation_test(model, spec, params, image, target, variants, original=original)
    cold = clock(kind) - t
    t = clock(kind)
    spec.explain(model, image, target, params)
    k = max(1, math.ceil(ROUND_SECONDS / max(1e-6, n * (clock(kind) - t))))

    def floor_time() -> float:
        t = clock(kind)
        for _ in range(k * n):
            spec.explain(model, image, target, params)
        return clock(kind) - t

    def test_time() -> float:
        nonlocal curve
        t = clock(kind)
        for _ in range(k):
            curve = randomisation_test(
                model, spec, params, image, target, variants, original=original
            )
        return clock(kind) - t

    floors, tests = [], []
    for round_ in range(repeats):
        if round_ % 2:
            tests.append(test_time())
            floors.append(floor_time())
        else:
            floors.append(floor_time())
            tests.append(test_time())
    variants.close()
    floor = statistics.median(floors)
    median_ratio = statistics.median(t / f for t, f in zip(tests, floors, strict=True))
    best_ratio = min(tests) / min(floors)
    row: list[object] = [
        label,
        n,
        floor / (k * n),
        k,
        k * cold / floor,
        median_ratio,
        best_ratio,
        "yes" if max(median_ratio, best_ratio) <= GOAL else "NO",
    ]
    return row, curve


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (see the module docs)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=0,
        help="interleaved rounds per method (default: 9 on the demo model, 3 on ResNet-50; "
        "--quick: 7 and 2)",
    )
    parser.add_argument(
        "--clock", choices=("cpu", "wall"), default="cpu", help="process CPU seconds or wall time"
    )
    parser.add_argument(
        "--methods",
        default="",
        help="comma-separated labels of the methods to run (default: all), e.g. 'gradient,LRP_CMP'",
    )
    parser.add_argument(
        "--models",
        default="demo,resnet50",
        help="comma-separated models to run: demo, resnet50 (default both)",
    )
    args = parser.parse_args()
    chosen = {m.strip() for m in args.methods.split(",") if m.strip()}

    def wanted(label: str) -> bool:
        return not chosen or label in chosen

    demo_rounds = args.repeats or (7 if args.quick else 9)
    resnet_rounds = args.repeats or (2 if args.quick else 3)
    before = load_average()
    print(f"load average before: {before}", flush=True)
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    configure_thread_pools(1)  # as the server does (its default numpy_blas_threads)
    header = [
        "model / method",
        "variants",
        "method s",
        "tests per round",
        "cold ratio",
        "warm ratio (median)",
        "warm ratio (best)",
        f"both ≤ {GOAL}",
    ]
    rows: list[list[object]] = []
    curves = []
    demo = load_model(REPO / "models", "shapes")
    image = demo_images(1)[0]
    demo_methods = [*PAPER_METHODS, ("regional PD", "regional_prediction_difference", {})]
    models = {m.strip() for m in args.models.split(",")}
    for label, method, overrides in demo_methods:
        if "demo" not in models or not wanted(label):
            continue
        row, curve = time_method(
            f"demo / {label}",
            demo,
            method,
            params_for(method, overrides),
            image,
            0,
            demo_rounds,
            args.clock,
        )
        rows.append(row)
        curves.append((label, curve))
    demo.close()
    if args.quick:
        resnet_runs = [("gradient", "saliency", {})]
        stops = 2
    else:
        resnet_runs = [
            ("gradient", "saliency", {}),
            ("guided backprop", "guided_backprop", {}),
            ("LRP_CMP", "lrp", {"composite": "lrp_cmp_alpha1beta0"}),
            ("regional PD", "regional_prediction_difference", {}),
        ]
        stops = 10
    if "resnet50" not in models:
        resnet_runs = []
    resnet_runs = [r for r in resnet_runs if wanted(r[0])]
    if resnet_runs:
        onnx_path = torchvision_onnx("resnet50")
        resnet = load_model(model_repo("resnet50", onnx_path, 224, 1000), "resnet50")
        r_image = smooth_image(224)
        for label, method, overrides in resnet_runs:
            row, _ = time_method(
                f"resnet50 / {label}",
                resnet,
                method,
                params_for(method, overrides),
                r_image,
                stops,
                resnet_rounds,
                args.clock,
            )
            rows.append(row)
        resnet.close()
    print_table(
        f"randomisation test ÷ (variants × method time), {args.clock} seconds; rounds: "
        f"{demo_rounds} (demo), {resnet_rounds} (ResNet-50); method s: median per call; "
        "load average before "
        f"{before}, after {load_average()}",
        header,
        rows,
    )
    if not curves:
        return 0
    first = curves[0][1]
    depth_header = ["method"] + [str(d) for d in first.depths]
    print_table(
        "demo model: Spearman ρ of |maps| vs layers randomised (from the logits; "
        + ", ".join(first.layers)
        + ")",
        depth_header,
        [[label, *c.metric("spearman_abs")] for label, c in curves],
    )
    print_table(
        "demo model: SSIM vs layers randomised",
        depth_header,
        [[label, *c.metric("ssim")] for label, c in curves],
    )
    print_table(
        "demo model: HOG similarity vs layers randomised",
        depth_header,
        [[label, *c.metric("hog")] for label, c in curves],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
