"""Warm a model version up before it is marked ready.

The first request on a fresh version used to pay the whole cold start: onnxruntime's first run
at a batch size (memory arena growth, kernel selection — much more under CUDA/TensorRT) and,
for white-box methods, building the PyTorch module and its first backward pass (measured on a
224² model: first IG request 14 s vs 3.6–4.3 s later, first LRP request 1.1 s vs 0.35 s).

Forward passes at batch 1 and ``max_batch_size`` alone left the first request of each method at
2–7× its steady-state latency (``bench/warmup.py``): every method still paid its own first
call — the torch module copies of the pool built one per concurrent request, captum's and
zennit's first attribution (composite and canonizer construction, the autograd graph at the
method's batch size, Python's isinstance caches over the module tree), the first superpixel
segmentation (scikit-image and scipy code paths, the segmentation worker threads), the batcher
path and the perturbation batch shapes of each black-box method. So warm-up runs, in order:

1. ``forward`` — the backend (local onnxruntime or the remote OIP server) once at batch 1 and
   once at ``max_batch_size``, directly (no batcher), and Predict's own session at batch 1;
2. ``decode`` — a PNG and a JPEG decoded (Pillow's codecs load on first use);
3. ``predict`` — one prediction through the batcher, as a Predict request makes it;
4. ``segmentation_workers`` — every worker thread of the shared segmenter started;
5. ``torch_pool`` — every module copy of the torch pool (``torch_copies``) built, when
   white-box methods are available;
6. ``method:<name>`` — one explanation of a textured image by every registered method the
   version supports, through the same ``Model`` facade (batcher, torch lease) a request uses,
   with the method's default parameters (a method whose defaults are expensive declares cheaper
   ones with the same batch shapes: ``MethodSpec.warmup``). A method that needs a request
   parameter (GAD's support set) is skipped.

Warm-up is bounded: ``budget_seconds`` is the deadline of the whole of it, bound as the request
deadline of each method run (a run stops at its next batch once it passes), and the methods not
started by then are skipped. A garbage collection ends it (the runs leave garbage enough to
trigger a full one, which would otherwise fall on the first request). Each path's outcome (``ok``, ``failed``, ``skipped``) is counted in
``xaiserve_model_warmup_runs_total``, and the seconds in ``xaiserve_model_warmup_seconds``. The
repository marks a version ready only after ``warm_up`` returns.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from xaiserve.errors import DeadlineExceeded, XaiserveError
from xaiserve.imaging.decode import ImageLimits, decode_encoded
from xaiserve.imaging.preprocess import to_network_input
from xaiserve.imaging.segmenter import shared_segmenter
from xaiserve.methods import catalog as _catalog  # noqa: F401 - registers the methods
from xaiserve.methods import registered_methods
from xaiserve.methods.base import MethodSpec, Target
from xaiserve.models.model import Model
from xaiserve.runtime import context

if TYPE_CHECKING:
    from xaiserve.observability import Metrics

log = logging.getLogger(__name__)

Outcome = Literal["ok", "failed", "skipped"]

DEFAULT_BUDGET_SECONDS = 120.0
"""Default bound of one version's warm-up (``warmup_budget_seconds``)."""


@dataclass
class WarmupReport:
    """What one warm-up did: its seconds and each path's outcome (with why, when not ok)."""

    seconds: float = 0.0
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    expected: set[str] = field(default_factory=set)
    """Paths skipped by design (a method that needs a request parameter): logged at debug."""

    def record(self, path: str, outcome: Outcome, reason: str = "", expected: bool = False) -> None:
        self.outcomes[path] = outcome
        if reason:
            self.reasons[path] = reason
        if expected:
            self.expected.add(path)

    def paths(self, outcome: Outcome) -> list[str]:
        return [p for p, o in self.outcomes.items() if o == outcome]


def warm_up(
    model: Model,
    budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    metrics: Metrics | None = None,
) -> WarmupReport:
    """Warm ``model`` up within ``budget_seconds`` (see the module docs); never raises for a
    method that fails (the request will say why), only for the backend's own forward pass."""
    start = time.perf_counter()
    give_up = time.monotonic() + budget_seconds
    report = WarmupReport()
    h, w = model.input_size
    for n in sorted({1, model.max_batch_size}):
        grey = np.full((n, h, w, 3), 127.0, np.float32)
        model.batcher.runner(to_network_input(grey, model.config.input))
    lane = model.batcher.interactive_runner
    if lane is not None and lane != model.batcher.runner:  # Predict's own session
        lane(to_network_input(np.full((1, h, w, 3), 127.0, np.float32), model.config.input))
    report.record("forward", "ok")
    image = warmup_image(h, w)
    _attempt(report, "decode", lambda: _decode(image, (h, w)))
    _attempt(report, "predict", lambda: _predict(model, image, give_up))
    shared_segmenter().start_workers()
    report.record("segmentation_workers", "ok")
    whitebox = "torch" in model.backends
    if whitebox:
        _attempt(report, "torch_pool", lambda: _build_torch_pool(model))
    specs = sorted(
        registered_methods().values(), key=lambda s: (s.backend != "blackbox", s.name)
    )
    for spec in specs:
        path = f"method:{spec.name}"
        if not model.supports(spec.model_backend):
            continue
        if spec.model_backend == "torch" and report.outcomes.get("torch_pool") != "ok":
            report.record(path, "skipped", "the torch pool could not be built")
            continue
        if time.monotonic() >= give_up:
            report.record(path, "skipped", f"warm-up budget of {budget_seconds:g} s spent")
            continue
        _run_method(report, path, model, spec, image, give_up)
    # The runs above leave garbage enough to trigger a full collection: have it now, not
    # during the first request.
    gc.collect()
    report.seconds = time.perf_counter() - start
    _publish(model, report, metrics)
    return report


def warmup_image(h: int, w: int) -> np.ndarray:
    """A deterministic textured image (smooth colour ramps plus noise): regions to segment and
    gradients to follow, unlike a flat grey one."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    ramps = np.stack([255 * x / max(1, w - 1), 255 * y / max(1, h - 1), 127.5 + 0 * x], axis=-1)
    noise = np.random.default_rng(0).normal(0.0, 20.0, (h, w, 3))
    return np.clip(ramps + noise, 0.0, 255.0).astype(np.float32)


def _attempt(report: WarmupReport, path: str, run: Callable[[], object]) -> None:
    try:
        run()
    except Exception as exc:
        report.record(path, "failed", f"{type(exc).__name__}: {exc}")
    else:
        report.record(path, "ok")


def _decode(image: np.ndarray, size: tuple[int, int]) -> None:
    """Decode the image as PNG and as JPEG (Pillow loads its codecs on first use)."""
    from PIL import Image

    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(image.astype(np.uint8)).save(buf, fmt)
        decode_encoded(buf.getvalue(), ImageLimits(), fit_within=size)


def _predict(model: Model, image: np.ndarray, give_up: float) -> None:
    """One prediction through the batcher, as a Predict request makes it."""
    with context.bind(context.RequestContext(deadline=give_up, interactive=True)):
        model.predict(image[None])


def _build_torch_pool(model: Model) -> None:
    """Lease every copy at once, so the pool builds all of them (later requests find them)."""
    with contextlib.ExitStack() as stack:
        for _ in range(model.torch_copies):
            stack.enter_context(model.torch_backend())


def _run_method(
    report: WarmupReport,
    path: str,
    model: Model,
    spec: MethodSpec,
    image: np.ndarray,
    give_up: float,
) -> None:
    try:
        params = spec.params_type()
    except XaiserveError as exc:  # a parameter only a request can give (GAD's support set)
        report.record(path, "skipped", str(exc), expected=True)
        return
    if spec.warmup is not None:
        params = spec.warmup(params, model.input_size)
    ctx = context.RequestContext(deadline=give_up)
    try:
        with context.bind(ctx):
            spec.explain(model, image, Target(0), params)
    except DeadlineExceeded:
        report.record(path, "skipped", "warm-up budget spent during the run")
    except Exception as exc:  # the request will report it; black-box methods still work
        report.record(path, "failed", f"{type(exc).__name__}: {exc}")
    else:
        report.record(path, "ok")


def _publish(model: Model, report: WarmupReport, metrics: Metrics | None) -> None:
    for path, why in report.reasons.items():
        log.log(
            logging.DEBUG if path in report.expected else logging.WARNING,
            "model %s/%s: warm-up of %s %s: %s",
            model.name,
            model.version,
            path,
            report.outcomes[path],
            why,
            extra={"model": model.name, "version": model.version},
        )
    log.info(
        "model %s/%s warmed up in %.2f s (%d paths ok, %d failed, %d skipped)",
        model.name,
        model.version,
        report.seconds,
        len(report.paths("ok")),
        len(report.paths("failed")),
        len(report.paths("skipped")),
        extra={"model": model.name, "version": model.version, "warmup_seconds": report.seconds},
    )
    if metrics is None:
        return
    metrics.warmup_seconds.labels(model=model.name, version=model.version).set(report.seconds)
    for path, outcome in report.outcomes.items():
        metrics.warmup_runs.labels(
            model=model.name, version=model.version, path=path, outcome=outcome
        ).inc()
