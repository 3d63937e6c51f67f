"""First request vs steady state, with warm-up at load off (before) and on (after).

For each method, a fresh server (its own process) is started and becomes ready; the first
request of that method is timed, then ``--repeats`` more give the steady-state median. The
ratio first ÷ steady is printed with ``XAISERVE_WARMUP=0`` (the old behaviour: the first request
pays onnxruntime's first runs and, for white-box methods, building the torch module) and with
warm-up on (the default). Goal: first ≤ 1.5 × steady for every method with warm-up on.
``--quick``: the demo model; otherwise ResNet-18 (random weights, 224²).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, ServerProcess, model_repo, print_table, torchvision_onnx

METHODS = {
    "predict": None,
    "regional_prediction_difference": {"scales": 3, "seed": 0},
    "lrp": {"composite": "epsilon_plus_flat"},
    "integrated_gradients": {"steps": 16},
}


def first_and_steady(
    models_dir: Path, model: str, size: int, method: str, warmup: bool, repeats: int
) -> tuple[float, float]:
    from xaiserve_client import ExplainClient

    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    server = ServerProcess(models_dir, XAISERVE_WARMUP="1" if warmup else "0")
    try:
        with ExplainClient(f"127.0.0.1:{server.port}", timeout=600) as client:
            params = METHODS[method]

            def call() -> None:
                if params is None:
                    client.predict(image, model)
                else:
                    client.explain(image, method, model, target=0, **params)

            t = time.perf_counter()
            call()
            first = time.perf_counter() - t
            steady = []
            for _ in range(repeats):
                t = time.perf_counter()
                call()
                steady.append(time.perf_counter() - t)
    finally:
        server.close()
    return first, statistics.median(steady)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        models_dir, model, size = REPO / "models", "shapes", 64
    else:
        size = 224
        models_dir = model_repo("resnet18", torchvision_onnx("resnet18"), size, 1000)
        model = "resnet18"
    repeats = args.repeats or (3 if args.quick else 5)
    rows = []
    for method in METHODS:
        before = first_and_steady(models_dir, model, size, method, False, repeats)
        after = first_and_steady(models_dir, model, size, method, True, repeats)
        rows.append(
            [
                method,
                before[0] * 1e3,
                before[1] * 1e3,
                before[0] / before[1],
                after[0] * 1e3,
                after[1] * 1e3,
                after[0] / after[1],
            ]
        )
    print_table(
        f"First request ÷ steady state ({model}), warm-up off (before) and on (after)",
        [
            "method",
            "before first ms",
            "before steady ms",
            "before ratio",
            "after first ms",
            "after steady ms",
            "after ratio",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
