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
goes through the service's facade (``tests.support.load_onnx_model``: repository, batcher,
onnxruntime) when that exists, else through onnxruntime directly (spinning off); the table
says which. Wall and floor are measured interleaved, best of ``--repeats``; on a shared 2-core
machine compare ratios from one run only.

Run: ``.venv/bin/python bench/contextual_importance.py [--models demo,resnet50] [--utility-fills
white,blur]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xaiserve.demo import shapes
from xaiserve.imaging.segmentation import SegmentationParams, superpixels
from xaiserve.methods.base import BlackBoxModel, OutputSpace, Target
from xaiserve.methods.contextual_importance import (
    ContextualImportanceParams,
    contextual_importance,
)

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "shapes" / "1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BATCH_SIZES = (1, 4, 16, 32)


@dataclass(frozen=True)
class Spec:
    """What a model needs to be loaded: the ONNX file and its preprocessing."""

    name: str
    path: Path
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    value_range: tuple[float, float]
    output_kind: Literal["logits", "probabilities"]


class OrtModel:
    """A minimal BlackBoxModel over onnxruntime (used when the service facade is absent)."""

    def __init__(self, spec: Spec) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(spec.path), options, ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.spec = spec
        lo, hi = spec.value_range
        scale = (hi - lo) / 255.0
        self._scale = (scale / np.asarray(spec.std, np.float32)).astype(np.float32)
        self._shift = ((lo - np.asarray(spec.mean)) / np.asarray(spec.std)).astype(np.float32)
        self._classes = int(self.session.get_outputs()[0].shape[1])

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.spec.size, self.spec.size)

    @property
    def num_classes(self) -> int:
        return self._classes

    @property
    def output_kind(self) -> Literal["logits", "probabilities"]:
        return self.spec.output_kind

    def predict(
        self, images: np.ndarray | Iterable[np.ndarray], output: OutputSpace = "probabilities"
    ) -> np.ndarray:
        chunks = [images] if isinstance(images, np.ndarray) else images
        rows = []
        for chunk in chunks:
            x = (chunk * self._scale + self._shift).transpose(0, 3, 1, 2)
            rows.append(self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0])
        z = np.concatenate(rows).astype(np.float32)
        if output == "raw" or self.output_kind == "probabilities":
            return z
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def load(spec: Spec) -> tuple[BlackBoxModel, str]:
    """The service facade if ``tests/support.py`` provides it, else :class:`OrtModel`."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # ``tests.support`` when run as a script
    try:
        import onnx

        from tests.support import load_onnx_model
    except ImportError:
        return OrtModel(spec), "onnxruntime direct"
    model = load_onnx_model(
        onnx.load(str(spec.path)),
        Path(tempfile.mkdtemp(prefix="bench-ci-")),
        height=spec.size,
        width=spec.size,
        output_kind=spec.output_kind,
        mean=spec.mean,
        std=spec.std,
        value_range=spec.value_range,
        max_batch_size=64,
        name=spec.name,
    )
    return model, "service facade"


def demo_spec() -> Spec | None:
    if not (DEMO / "model.onnx").exists():
        return None
    config: dict[str, Any] = tomllib.loads((DEMO / "config.toml").read_text(encoding="utf-8"))
    inp, out = config["input"], config["output"]
    return Spec(
        "shapes",
        DEMO / "model.onnx",
        int(inp["height"]),
        tuple(inp["mean"]),  # type: ignore[arg-type]
        tuple(inp["std"]),  # type: ignore[arg-type]
        tuple(inp["value_range"]),  # type: ignore[arg-type]
        out.get("kind", "logits"),
    )


def resnet50_spec() -> Spec:
    cache = Path(os.environ.get("XAISERVE_BENCH_CACHE", Path.home() / ".cache/xaiserve/bench"))
    path = cache / "resnet50-seed0-224.onnx"
    if not path.exists():
        import torch
        import torchvision

        cache.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        net = torchvision.models.resnet50(weights=None).eval()
        tmp = path.with_suffix(".tmp")
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, 224, 224),),
            str(tmp),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
        tmp.rename(path)
    return Spec("resnet50", path, 224, IMAGENET_MEAN, IMAGENET_STD, (0.0, 1.0), "logits")


def natural_images(n: int, size: int) -> np.ndarray:
    """scikit-image's bundled photographs, resized to ``size``×``size`` (0..255)."""
    from skimage import data
    from skimage.transform import resize

    names = ("astronaut", "coffee", "chelsea", "rocket")
    if n > len(names):
        raise SystemExit(f"at most {len(names)} natural images")
    return np.stack(
        [
            255.0 * resize(getattr(data, name)(), (size, size), anti_aliasing=True)
            for name in names[:n]
        ]
    ).astype(np.float32)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(
    spec: Spec, images: np.ndarray, params: ContextualImportanceParams, repeats: int
) -> dict[str, Any]:
    """Best-of-``repeats`` times; wall and floor are measured interleaved in every round so
    that load from other processes on the machine hits both alike."""
    model, via = load(spec)
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
    close = getattr(model, "close", None)
    if close is not None:
        close()
    best = min(per_image, key=lambda b: per_image[b])
    floors = [s + n * per_image[best] for s, n in zip(seg, passes, strict=True)]
    ratios = [w / f for w, f in zip(wall, floors, strict=True)]
    return {
        "model": spec.name,
        "via": via,
        "size": spec.size,
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
        "| model | via | H×W | passes/request | segmentation ms | forward ms/img (batch) "
        "| floor s | wall s | ratio (median, worst) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        if name == "demo":
            spec = demo_spec()
            if spec is None:
                print(f"| shapes demo | skipped: {DEMO / 'model.onnx'} not found |||||||||")
                continue
            images = shapes.heldout(args.images, size=spec.size).images
        elif name == "resnet50":
            spec = resnet50_spec()
            images = natural_images(args.images, 224)
        else:
            print(f"unknown model {name!r}", file=sys.stderr)
            return 2
        r = bench(spec, images, params, args.repeats)
        print(
            f"| {r['model']} | {r['via']} | {r['size']}×{r['size']} | {r['passes']:.0f} "
            f"| {r['seg_ms']:.1f} | {r['fwd_ms']:.2f} ({r['batch']}) | {r['floor_s']:.3f} "
            f"| {r['wall_s']:.3f} | {r['ratio']:.2f}, {r['worst']:.2f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
