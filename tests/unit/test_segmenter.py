"""The shared segmenter: cache correctness, LRU bound, single flight, pool bound, deadlines.

A hit must return exactly what a miss computes, so every product is checked against the plain
functions of ``imaging.exact_regions``/``imaging.segmentation`` called directly (the
independent computation), bit for bit and in dtype. Metrics are read from a fresh registry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from tests.support import refines
from xaiserve.errors import Cancelled, DeadlineExceeded, InvalidInput
from xaiserve.imaging.exact_regions import (
    BoundaryPrior,
    boundary_prior,
    exact_superpixels,
    merge_hierarchy,
    merge_to_count,
    nested_scales,
)
from xaiserve.imaging.segmentation import SegmentationParams, superpixels
from xaiserve.imaging.segmentation_cache import SegmentationCache, image_digest, pack
from xaiserve.imaging.segmenter import (
    ExactRegions,
    NestedScales,
    Prior,
    SegImage,
    Segmenter,
    Superpixels,
)
from xaiserve.observability import Metrics
from xaiserve.runtime.context import RequestContext

from .test_exact_regions import IMAGES, textured


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
def segmenter(metrics: Metrics) -> Iterator[Segmenter]:
    seg = Segmenter(workers=2, device="cpu", metrics=metrics)
    yield seg
    seg.close()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(f"xaiserve_{name}", labels)
    return 0.0 if value is None else value


PARAMS = SegmentationParams(n_segments=24)


def _assert_prior_equal(got: BoundaryPrior, want: BoundaryPrior) -> None:
    np.testing.assert_array_equal(got.mu, want.mu)
    np.testing.assert_array_equal(got.region_means, want.region_means)
    np.testing.assert_array_equal(got.cluster, want.cluster)
    assert (got.largest, got.bandwidth) == (want.largest, want.bandwidth)


@pytest.mark.parametrize("name", ["blobs", "halves"])
def test_a_hit_returns_exactly_what_a_miss_computes(
    segmenter: Segmenter, metrics: Metrics, name: str
) -> None:
    image = IMAGES[name]
    img = segmenter.image(image)
    direct = {
        "superpixels": superpixels(image, PARAMS),
        "exact": exact_superpixels(image, 16, PARAMS),
    }
    finest = exact_superpixels(image, 64, PARAMS)
    products = {
        "superpixels": Superpixels(PARAMS),
        "exact": ExactRegions(16, PARAMS),
        "prior": Prior(64, PARAMS),
        "nested": NestedScales(64, 4, PARAMS),
    }
    for kind, product in products.items():
        miss = segmenter.get(img, product)
        hit = segmenter.get(img, product)
        assert sample(metrics, "segmentation_cache_hits_total", kind=kind) >= 1
        if kind == "prior":
            _assert_prior_equal(miss, boundary_prior(image, finest))
            _assert_prior_equal(hit, miss)
            continue
        want = direct.get(kind)
        if kind == "nested":
            for got_miss, got_hit, w in zip(
                miss, hit, nested_scales(image, finest, 4), strict=True
            ):
                np.testing.assert_array_equal(got_miss, w)
                np.testing.assert_array_equal(got_hit, w)
                assert got_hit.dtype == w.dtype == np.int32
            continue
        assert want is not None
        for got in (miss, hit):
            np.testing.assert_array_equal(got, want)
            assert got.dtype == want.dtype == np.int32
    # the prior and the nested scales share the 2^6 exact regions: computed once
    assert sample(metrics, "segmentation_cache_misses_total", kind="exact") == 2


def test_callers_cannot_change_what_the_next_caller_gets(segmenter: Segmenter) -> None:
    img = segmenter.image(IMAGES["blobs"])
    first = segmenter.get(img, ExactRegions(8, PARAMS))
    keep = first.copy()
    first[:] = 0  # the caller owns its copy
    np.testing.assert_array_equal(segmenter.get(img, ExactRegions(8, PARAMS)), keep)


def test_keys_separate_images_parameters_and_scales(segmenter: Segmenter) -> None:
    a, b = SegImage.of(IMAGES["blobs"]), SegImage.of(textured(48, 56, 7))
    assert a.digest != b.digest and a.digest == image_digest(IMAGES["blobs"].copy())
    assert not np.array_equal(
        segmenter.get(a, ExactRegions(8, PARAMS)), segmenter.get(a, ExactRegions(4, PARAMS))
    )
    np.testing.assert_array_equal(
        segmenter.get(b, ExactRegions(8, PARAMS)), exact_superpixels(b.pixels, 8, PARAMS)
    )
    other = SegmentationParams(n_segments=24, compactness=30.0)
    np.testing.assert_array_equal(
        segmenter.get(a, Superpixels(other)), superpixels(a.pixels, other)
    )
    # fields the algorithm does not read are not part of the key
    assert (
        Superpixels(PARAMS).key()
        == Superpixels(SegmentationParams(n_segments=24, scale=7.0, nested=True)).key()
    )
    assert ExactRegions(8, PARAMS).key() == ExactRegions(8, SegmentationParams(n_segments=99)).key()


def test_exact_counts_share_the_superpixel_calls_of_another_method(
    segmenter: Segmenter, metrics: Metrics
) -> None:
    """Contextual importance at 32 segments, then exact 16 regions (which asks SLIC for 32)."""
    img = segmenter.image(IMAGES["blobs"])
    segmenter.get(img, Superpixels(SegmentationParams(n_segments=32)))
    segmenter.get(img, ExactRegions(16, SegmentationParams()))
    assert sample(metrics, "segmentation_cache_hits_total", kind="superpixels") == 1


def test_lru_eviction_stays_within_the_bound(metrics: Metrics) -> None:
    image = IMAGES["blobs"]
    one = len(pack(exact_superpixels(image, 8, PARAMS)).tobytes()) + 256
    seg = Segmenter(cache_bytes=2 * one + 10, workers=1, device="cpu", metrics=metrics)
    try:
        img = seg.image(image)
        seg.get(img, ExactRegions(2, PARAMS))  # also caches its superpixel call
        seg.get(img, ExactRegions(4, PARAMS))
        seg.get(img, ExactRegions(2, PARAMS))  # most recently used now
        seg.get(img, ExactRegions(8, PARAMS))  # evicts the least recently used entries
        assert seg.cache.bytes <= seg.cache.max_bytes
        assert sample(metrics, "segmentation_cache_bytes") == seg.cache.bytes
        assert sample(metrics, "segmentation_cache_entries") == len(seg.cache) == 2
        assert sample(metrics, "segmentation_cache_evictions_total") >= 2
        misses = sample(metrics, "segmentation_cache_misses_total", kind="exact")
        np.testing.assert_array_equal(
            seg.get(img, ExactRegions(8, PARAMS)), exact_superpixels(image, 8, PARAMS)
        )
        assert sample(metrics, "segmentation_cache_misses_total", kind="exact") == misses  # kept
        np.testing.assert_array_equal(
            seg.get(img, ExactRegions(4, PARAMS)), exact_superpixels(image, 4, PARAMS)
        )
        assert sample(metrics, "segmentation_cache_misses_total", kind="exact") == misses + 1
    finally:
        seg.close()


def test_cache_off_still_computes_the_same_labels() -> None:
    seg = Segmenter(cache_bytes=0, workers=1, device="cpu")
    try:
        img = seg.image(IMAGES["blobs2"])
        for _ in range(2):
            np.testing.assert_array_equal(
                seg.get(img, ExactRegions(8, PARAMS)), exact_superpixels(img.pixels, 8, PARAMS)
            )
        assert len(seg.cache) == 0 and seg.misses >= 2 and seg.hits == 0
    finally:
        seg.close()


def test_cache_bound_counts_bytes_and_refuses_oversized_entries() -> None:
    evicted: list[int] = []
    cache = SegmentationCache(1000, on_evict=evicted.append)
    cache.put("a", np.zeros(600, np.uint8))
    assert len(cache) == 1 and 600 < cache.bytes <= 1000
    cache.put("b", np.zeros(600, np.uint8))
    assert len(cache) == 1 and cache.get("a") == (False, None) and evicted == [1]
    cache.put("c", np.zeros(5000, np.uint8))  # larger than the bound: not stored
    assert cache.get("c") == (False, None) and cache.get("b")[0]
    with pytest.raises(ValueError):
        SegmentationCache(-1)


@dataclass(frozen=True)
class Gate:
    """A product that blocks until released and records how many run at once."""

    name: str
    state: GateState
    kind: str = "gate"

    def key(self) -> Hashable:
        return self.name

    def compute(self, segmenter: Segmenter, image: SegImage) -> np.ndarray:
        with self.state.lock:
            self.state.running += 1
            self.state.peak = max(self.state.peak, self.state.running)
            self.state.started.append(self.name)
        try:
            assert self.state.release.wait(10)
            return np.full(image.pixels.shape[:2], len(self.name), np.int32)
        finally:
            with self.state.lock:
                self.state.running -= 1


@dataclass
class GateState:
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    running: int = 0
    peak: int = 0
    started: list[str] = field(default_factory=list)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_pool_bounds_concurrent_segmentations(workers: int) -> None:
    seg = Segmenter(workers=workers, device="cpu")
    state = GateState()
    try:
        img = seg.image(IMAGES["flat"])
        tickets = [seg.request(img, Gate(f"g{i}", state)) for i in range(5)]
        deadline = time.monotonic() + 5
        while state.running < workers and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert state.running == workers  # the others wait in the queue
        state.release.set()
        assert [t.result()[0, 0] for t in tickets] == [2] * 5
        assert state.peak == workers
    finally:
        state.release.set()
        seg.close()


def test_concurrent_requests_for_one_product_compute_it_once(metrics: Metrics) -> None:
    seg = Segmenter(workers=2, device="cpu", metrics=metrics)
    state = GateState()
    results: list[np.ndarray] = []
    try:
        img = seg.image(IMAGES["flat"])

        def ask() -> None:
            results.append(seg.get(img, Gate("same", state)))

        threads = [threading.Thread(target=ask) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        state.release.set()
        for t in threads:
            t.join(10)
        assert len(results) == 6 and state.started == ["same"]
        assert sample(metrics, "segmentation_cache_misses_total", kind="gate") == 1
        assert sample(metrics, "segmentation_cache_hits_total", kind="gate") == 5
    finally:
        state.release.set()
        seg.close()


def test_a_deadline_ends_the_wait_and_drops_queued_work(metrics: Metrics) -> None:
    seg = Segmenter(workers=1, device="cpu", metrics=metrics)
    state = GateState()
    try:
        img = seg.image(IMAGES["flat"])
        busy = seg.request(img, Gate("busy", state))  # occupies the only worker
        queued = seg.request(img, Gate("queued", state))
        scope = RequestContext(deadline=time.monotonic() + 0.2)
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            queued.result(scope)
        assert time.monotonic() - start < 2.0
        assert sample(metrics, "segmentation_dropped_total") == 1
        state.release.set()
        assert busy.result()[0, 0] == 4
        seg.close()
        time.sleep(0.2)
        assert state.started == ["busy"]  # the dropped product never ran
        # asked again later, it is computed afresh (nothing stale was cached)
        seg2 = Segmenter(workers=1, device="cpu")
        assert seg2.get(img, Gate("queued", state))[0, 0] == 6
        seg2.close()
    finally:
        state.release.set()
        seg.close()


def test_cancellation_ends_the_wait_but_others_still_get_the_result() -> None:
    seg = Segmenter(workers=1, device="cpu")
    state = GateState()
    try:
        img = seg.image(IMAGES["flat"])
        mine, theirs = (
            seg.request(img, Gate("shared", state)),
            seg.request(img, Gate("shared", state)),
        )
        scope = RequestContext()
        threading.Timer(0.15, scope.cancelled.set).start()
        with pytest.raises(Cancelled):
            mine.result(scope)
        state.release.set()
        assert theirs.result()[0, 0] == 6  # the running computation finished for the other
    finally:
        state.release.set()
        seg.close()


def test_one_worker_never_deadlocks_on_shared_dependencies() -> None:
    """The prior and the nested scales both need the 2^6 exact regions; with one worker the
    second product finds the first's dependency computed or computes it itself."""
    seg = Segmenter(workers=1, device="cpu")
    try:
        img = seg.image(IMAGES["blobs"])
        tickets = [
            seg.request(img, NestedScales(64, 3, PARAMS)),
            seg.request(img, Prior(64, PARAMS)),
        ]
        nested, prior = (t.result(RequestContext(deadline=time.monotonic() + 60)) for t in tickets)
        assert [int(m.max()) + 1 for m in nested] == [2, 4, 8]
        assert isinstance(prior, BoundaryPrior)
    finally:
        seg.close()


def test_errors_reach_the_request_and_are_not_cached(segmenter: Segmenter) -> None:
    img = segmenter.image(np.zeros((4, 4, 3), np.float32))
    for _ in range(2):
        with pytest.raises(InvalidInput):
            segmenter.get(img, NestedScales(4, 3, PARAMS))  # 8 scales from 4 regions
    assert len(segmenter.cache) >= 0 and not segmenter._flights


def test_gpu_requested_without_cuda_falls_back_with_a_warning(
    caplog: pytest.LogCaptureFixture, metrics: Metrics
) -> None:
    from xaiserve.imaging import gpu_slic

    if gpu_slic.unavailable_reason() is None:
        pytest.skip("a CUDA device is present: bench/gpu.py checks the GPU path")
    with caplog.at_level(logging.WARNING, logger="xaiserve.imaging.segmenter"):
        seg = Segmenter(workers=1, device="gpu", metrics=metrics)
    assert seg.device == "cpu" and "segmenting on the CPU" in caplog.text
    seg.close()
    # a GPU failure at run time (here: no CUDA behind a segmenter told to use it) moves the
    # segmenter to the CPU for good, with a warning and a metric, and still answers
    seg = Segmenter(workers=1, device="cpu", metrics=metrics)
    seg.device = "gpu"
    try:
        img = seg.image(IMAGES["blobs"])
        with caplog.at_level(logging.WARNING, logger="xaiserve.imaging.segmenter"):
            labels = seg.get(img, Superpixels(PARAMS))
        np.testing.assert_array_equal(labels, superpixels(img.pixels, PARAMS))
        assert seg.device == "cpu" and "falls back to the CPU" in caplog.text
        assert sample(metrics, "segmentation_device_fallbacks_total") == 1
    finally:
        seg.close()


def test_unknown_device_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, cpu or gpu"):
        Segmenter(device="tpu")  # type: ignore[arg-type]


# --- the Ward hierarchy behind the nested scales ---------------------------------------------


@pytest.mark.parametrize("name", ["blobs", "blobs2"])
def test_merge_hierarchy_is_nested_and_matches_merging_to_each_count(name: str) -> None:
    image = IMAGES[name]
    finest = exact_superpixels(image, 64, PARAMS)
    maps = merge_hierarchy(image, finest, [32, 16, 8, 4, 2])
    for count, labels in maps.items():
        assert sorted(np.unique(labels).tolist()) == list(range(count))
        np.testing.assert_array_equal(labels, merge_to_count(image, finest, count))
    for fine, coarse in ((maps[32], maps[16]), (maps[16], maps[8]), (maps[4], maps[2])):
        assert refines(fine, coarse)  # every fine region lies inside exactly one coarse region
    assert not refines(maps[2], maps[4])
    np.testing.assert_array_equal(merge_hierarchy(image, finest, [64, 99])[99], finest)
    with pytest.raises(InvalidInput):
        merge_hierarchy(image, finest, [0])
    with pytest.raises(InvalidInput, match="prior_segments"):
        nested_scales(image, exact_superpixels(image, 8, PARAMS), 4)


def test_segmentation_stays_on_the_cpu_unless_the_gpu_is_asked_for() -> None:
    from xaiserve.config import Settings

    assert Settings().segmentation_device == "cpu"
    seg = Segmenter(workers=1)
    try:
        assert seg.device == "cpu"
    finally:
        seg.close()


def test_gpu_self_check_agrees_on_torch_cpu_and_refuses_a_failing_device() -> None:
    from xaiserve.imaging import gpu_slic

    # the same tensor code the GPU runs, on torch's CPU tensors: agrees with scikit-image
    assert gpu_slic.self_check("cpu", size=48) is None
    # a device torch cannot use is a reason, never an exception or a silent pass
    why = gpu_slic.self_check("cuda:99" if gpu_slic.unavailable_reason() is None else "cuda")
    assert why is not None and "failed its check against scikit-image" in why
