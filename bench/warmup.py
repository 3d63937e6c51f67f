"""First request vs steady state, with warm-up at load off (before) and on (after).

For each method, a fresh server (its own process) is started and becomes ready (its health
check says SERVING, as a readiness probe would see before traffic arrives; the client's
connection is made then, so the first request does not pay the TCP/HTTP/2 handshake). The first
request of that method is timed, then ``--repeats`` more give the steady-state median. Every
request sends a different image, as production traffic does: a repeated image would be served
from the segmentation cache and make the "steady state" of the segmenting methods a cache hit.
Every request, the first included, comes after the same idle pause (``--gap``, 0.5 s): a server
left idle lets its thread pools sleep (onnxruntime's spinning threads, the batcher), and the
next request pays their wake-up (≈1 ms here) whether it is the first or the hundredth — a cost
of idleness, not of a cold start, which back-to-back "steady" requests would hide.
The ratio first ÷ steady is printed with ``XAISERVE_WARMUP=0`` (the first request pays every
cold start) and with warm-up on (the default: forward passes, the torch pool, one run of each
method; ``models/warmup.py``), with the server's own warm-up seconds. Goal: first ≤ 1.5 ×
steady for every method with warm-up on. ``--quick``: the demo model; otherwise ResNet-18
(random weights, 224²).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, ServerProcess, free_port, model_repo, print_table, torchvision_onnx

METHODS = {
    "predict": None,
    "regional_prediction_difference": {"scales": 3, "seed": 0},
    "contextual_importance": {},
    "pixelwise_prediction_difference": {"stride": 32},
    "lrp": {"composite": "epsilon_plus_flat"},
    "integrated_gradients": {"steps": 16},
    "guided_backprop": {},
}


def warmup_seconds(metrics_port: int, model: str) -> float:
    """``xaiserve_model_warmup_seconds`` of ``model`` from the server's metrics endpoint."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("xaiserve_model_warmup_seconds{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


def first_and_steady(
    models_dir: Path, model: str, size: int, method: str, warmup: bool, repeats: int, gap: float
) -> tuple[float, float, float]:
    from xaiserve_client import ExplainClient

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(repeats + 1)]
    metrics_port = free_port()
    server = ServerProcess(
        models_dir,
        XAISERVE_WARMUP="1" if warmup else "0",
        XAISERVE_METRICS_PORT=str(metrics_port),
    )
    warmup_s = warmup_seconds(metrics_port, model) if warmup else 0.0
    try:
        with ExplainClient(f"127.0.0.1:{server.port}", timeout=600) as client:
            client.wait_for_server()
            params = METHODS[method]

            def call(image: np.ndarray) -> float:
                time.sleep(gap)
                t = time.perf_counter()
                if params is None:
                    client.predict(image, model)
                else:
                    client.explain(image, method, model, target=0, **params)
                return time.perf_counter() - t

            first = call(images[0])
            steady = [call(image) for image in images[1:]]
    finally:
        server.close()
    return first, statistics.median(steady), warmup_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=0)
    parser.add_argument("--gap", type=float, default=0.5, help="idle seconds before each request")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated subset of: %(default)s"
    )
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if args.quick:
        models_dir, model, size = REPO / "models", "shapes", 64
    else:
        size = 224
        models_dir = model_repo("resnet18", torchvision_onnx("resnet18"), size, 1000)
        model = "resnet18"
    repeats = args.repeats or (3 if args.quick else 5)
    rows = []
    for method in methods:
        before = first_and_steady(models_dir, model, size, method, False, repeats, args.gap)
        after = first_and_steady(models_dir, model, size, method, True, repeats, args.gap)
        rows.append(
            [
                method,
                before[0] * 1e3,
                before[1] * 1e3,
                before[0] / before[1],
                after[0] * 1e3,
                after[1] * 1e3,
                after[0] / after[1],
                after[2],
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
            "warm-up s",
        ],
        rows,
    )
    print(
        "warm-up s: xaiserve_model_warmup_seconds of the warm-up-on server (time before ready); "
        f"every request after an idle gap of {args.gap:g} s, each a new image"
    )


if __name__ == "__main__":
    main()
