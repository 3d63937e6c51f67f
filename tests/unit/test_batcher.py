"""The dynamic batcher: merging, routing, admission counts, deadlines, failure isolation.

The runner here stands in for ``onnxruntime.InferenceSession.run`` (a numpy function that
records the batches it sees); everything else is the real batcher and request context.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from xaiserve.errors import DeadlineExceeded, Overloaded
from xaiserve.observability import Metrics
from xaiserve.runtime.batcher import DynamicBatcher, ImageBudget, InferenceFailed
from xaiserve.runtime.context import RequestContext, bind


class Recorder:
    """out[i] = [sum of image i, batch size]; optionally blocks or fails on a marker."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.seen_markers: list[float] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.started.set()
        self.gate.wait(10)
        self.batches.append(len(x))
        self.seen_markers.extend(float(v) for v in x[:, 0])
        if np.isnan(x).any():
            raise ValueError("poisoned input")
        return np.stack([x.reshape(len(x), -1).sum(axis=1), np.full(len(x), len(x))], axis=1)


def make(
    runner: Recorder, metrics: Metrics, capacity: int = 1000, mb: int = 32, delay: float = 0.05
) -> DynamicBatcher:
    return DynamicBatcher(
        runner,
        model="m",
        version="1",
        runtime="test",
        max_batch_size=mb,
        max_queue_delay_s=delay,
        budget=ImageBudget(capacity),
        metrics=metrics,
    )


def test_concurrent_requests_share_forward_passes_and_get_their_own_results() -> None:
    runner, metrics = Recorder(), Metrics()
    batcher = make(runner, metrics)

    def request(i: int) -> np.ndarray:
        x = np.full((4, 2), float(i), np.float32)
        batcher.enter()
        try:
            return batcher.submit(x, RequestContext()).result(5)
        finally:
            batcher.leave()

    for _ in range(8):  # eight requests are active before any submits (as Model.predict does)
        batcher.enter()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(request, range(8)))
    for _ in range(8):
        batcher.leave()
    batcher.close()
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out[:, 0], np.full(4, 2.0 * i))
    assert sum(runner.batches) == 32
    assert len(runner.batches) < 8, runner.batches  # merged into shared batches
    assert (
        metrics.registry.get_sample_value(
            "xaiserve_inference_images_total", {"model": "m", "version": "1"}
        )
        == 32
    )


def test_a_lone_request_does_not_wait_for_a_batch_to_fill() -> None:
    """With nobody else active, the fill delay (here 5 s) is not waited out."""
    runner, metrics = Recorder(), Metrics()
    batcher = make(runner, metrics, delay=5.0)
    batcher.enter()
    out = batcher.submit(np.ones((1, 2), np.float32), RequestContext()).result(timeout=2.0)
    batcher.leave()
    batcher.close()
    assert out[0, 0] == 2.0


def test_item_larger_than_free_batch_space_is_split_across_batches() -> None:
    runner, metrics = Recorder(), Metrics()
    batcher = make(runner, metrics, mb=8, delay=0.0)
    futs = [
        batcher.submit(np.full((6, 1), float(i), np.float32), RequestContext()) for i in range(3)
    ]
    outs = [f.result(5) for f in futs]
    batcher.close()
    assert all(len(o) == 6 for o in outs)
    assert max(runner.batches) <= 8 and sum(runner.batches) == 18


def test_admission_refuses_exactly_the_overflow() -> None:
    """1 saturating image holds the runner; Q more fit the budget; N − Q are refused at once."""
    q, n = 5, 12
    runner, metrics = Recorder(), Metrics()
    runner.gate.clear()
    batcher = make(runner, metrics, capacity=1 + q, mb=1, delay=0.0)
    first = batcher.submit(np.zeros((1, 1), np.float32), RequestContext())
    assert runner.started.wait(5)
    accepted, refused = [], 0
    for _ in range(n):
        try:
            accepted.append(batcher.submit(np.zeros((1, 1), np.float32), RequestContext()))
        except Overloaded as exc:
            refused += 1
            assert "max_queued_images" in str(exc)
    assert refused == n - q and len(accepted) == q
    assert (
        metrics.registry.get_sample_value(
            "xaiserve_rejected_requests_total", {"reason": "queue_full"}
        )
        == n - q
    )
    runner.gate.set()
    first.result(5)
    for fut in accepted:
        fut.result(5)
    batcher.close()
    assert batcher.budget.used == 0


def test_expired_queued_work_never_runs() -> None:
    runner, metrics = Recorder(), Metrics()
    runner.gate.clear()
    batcher = make(runner, metrics, mb=1, delay=0.0)
    blocker = batcher.submit(np.zeros((1, 1), np.float32), RequestContext())
    assert runner.started.wait(5)
    late = RequestContext(deadline=time.monotonic() + 0.05)
    fut = batcher.submit(np.full((1, 1), 42.0, np.float32), late)
    time.sleep(0.1)
    runner.gate.set()
    blocker.result(5)
    with pytest.raises(DeadlineExceeded):
        fut.result(5)
    batcher.close()
    assert 42.0 not in runner.seen_markers
    assert (
        metrics.registry.get_sample_value(
            "xaiserve_dropped_images_total", {"model": "m", "version": "1", "reason": "deadline"}
        )
        == 1
    )


def test_a_poisoned_item_fails_alone() -> None:
    runner, metrics = Recorder(), Metrics()
    runner.gate.clear()
    batcher = make(runner, metrics, mb=16, delay=0.0)
    blocker = batcher.submit(np.zeros((1, 1), np.float32), RequestContext())
    assert runner.started.wait(5)
    good1 = batcher.submit(np.full((2, 1), 1.0, np.float32), RequestContext())
    bad = batcher.submit(np.full((2, 1), np.nan, np.float32), RequestContext())
    good2 = batcher.submit(np.full((2, 1), 3.0, np.float32), RequestContext())
    runner.gate.set()
    blocker.result(5)
    np.testing.assert_array_equal(good1.result(5)[:, 0], [1.0, 1.0])
    np.testing.assert_array_equal(good2.result(5)[:, 0], [3.0, 3.0])
    with pytest.raises(InferenceFailed):
        bad.result(5)
    batcher.close()
    assert 6 in runner.batches  # the three were first tried together


def test_predict_streams_chunks_in_bounded_memory(tmp_path: Path) -> None:
    """A lazily generated stream is consumed a couple of batches ahead, never all at once."""
    from tests.support import load_onnx_model, region_logit_model

    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True
    metrics = Metrics()
    model = load_onnx_model(
        region_logit_model(8, 8, [mask, ~mask]),
        tmp_path,
        height=8,
        width=8,
        max_batch_size=4,
        metrics=metrics,
    )
    ahead: list[float] = []

    def chunks():  # type: ignore[no-untyped-def]
        for i in range(50):
            done = (
                metrics.registry.get_sample_value(
                    "xaiserve_inference_images_total", {"model": "test", "version": "1"}
                )
                or 0.0
            )
            ahead.append(i * 4 - done)
            yield np.full((4, 8, 8, 3), float(i), np.float32)

    with bind(RequestContext()):
        out = model.predict(chunks(), output="raw")
    model.close()
    assert out.shape == (200, 2)
    np.testing.assert_allclose(out[::4, 0], np.arange(50, dtype=np.float32), rtol=1e-5)
    assert max(ahead) <= 2 * 4 + 1  # submitted but unprocessed images never exceed two batches


def test_interactive_items_jump_the_queue_and_have_a_reserve() -> None:
    """#18: a Predict queued behind explanation work runs in the next batch, and a budget full
    of explanation images still admits it (``ImageBudget.INTERACTIVE_RESERVE``)."""
    runner, metrics = Recorder(), Metrics()
    batcher = make(runner, metrics, capacity=8, mb=4, delay=0.0)
    runner.gate.clear()  # hold the worker inside the first batch
    slow = RequestContext()
    first = batcher.submit(np.full((4, 1), 1.0, np.float32), slow)
    assert runner.started.wait(10)
    queued = [batcher.submit(np.full((4, 1), 2.0, np.float32), slow) for _ in range(1)]
    with pytest.raises(Overloaded):
        batcher.submit(np.full((4, 1), 3.0, np.float32), RequestContext())  # budget full
    urgent = batcher.submit(np.full((1, 1), 9.0, np.float32), RequestContext(interactive=True))
    runner.gate.set()
    for fut in (first, urgent, *queued):
        fut.result(timeout=10)
    # batch 1 = the held slow chunk; then the interactive image before the queued slow chunk
    assert runner.seen_markers[:6] == [1.0] * 4 + [9.0] + [2.0]
    batcher.close()


def test_the_interactive_lane_does_not_wait_for_a_running_explanation_batch() -> None:
    """With a lane of its own, a Predict's image is answered while the explanation batch that
    holds the main runner is still in its forward pass, and never shares that batch."""
    bulk, lane, metrics = Recorder(), Recorder(), Metrics()
    batcher = DynamicBatcher(
        bulk,
        model="m",
        version="1",
        runtime="test",
        max_batch_size=32,
        max_queue_delay_s=0.0,
        budget=ImageBudget(1000),
        metrics=metrics,
        interactive_runner=lane,
    )
    bulk.gate.clear()  # the explanation batch blocks inside the main runner
    explanation = batcher.submit(np.ones((32, 2), np.float32), RequestContext())
    assert bulk.started.wait(5)
    predict = RequestContext(interactive=True)
    out = batcher.submit(np.full((1, 2), 3.0, np.float32), predict).result(5)
    np.testing.assert_array_equal(out, [[6.0, 1.0]])  # its own batch of one, from the lane
    assert lane.batches == [1] and not explanation.done()
    bulk.gate.set()
    np.testing.assert_array_equal(explanation.result(5)[:, 1], np.full(32, 32.0))
    assert bulk.batches == [32]
    # With the main runner idle, the lane uses it (all its threads): the same answer.
    again = batcher.submit(np.full((1, 2), 3.0, np.float32), RequestContext(interactive=True))
    np.testing.assert_array_equal(again.result(5), [[6.0, 1.0]])
    assert bulk.batches == [32, 1] and lane.batches == [1]
    batcher.close()


def test_inference_workers_run_batches_side_by_side_with_their_own_results() -> None:
    """``inference_workers = 2``: two batches inside the runner at once (each waits at a
    barrier only the other can release), and every request still gets its own rows."""
    from xaiserve.config import Settings

    meeting = threading.Barrier(2, timeout=10)
    inside: list[int] = []

    def runner(x: np.ndarray) -> np.ndarray:
        inside.append(len(x))
        meeting.wait()  # BrokenBarrierError unless a second batch is running at the same time
        return np.stack([x.reshape(len(x), -1).sum(axis=1), np.full(len(x), len(x))], axis=1)

    batcher = DynamicBatcher(
        runner,
        model="m",
        version="1",
        runtime="test",
        max_batch_size=4,
        max_queue_delay_s=0.0,
        budget=ImageBudget(1000),
        metrics=Metrics(),
        workers=2,
    )
    try:
        xs = [np.full((4, 2, 2, 3), float(i), np.float32) for i in range(2)]
        ctx = RequestContext()
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(lambda x=x: batcher.submit(x, ctx).result(10)) for x in xs]
            outs = [f.result(10) for f in futures]
        for i, out in enumerate(outs):
            np.testing.assert_array_equal(out[:, 0], np.full(4, 12.0 * i))
        assert sorted(inside) == [4, 4]
    finally:
        batcher.close()
    with pytest.raises(ValueError, match="inference_workers"):
        Settings.from_env({"XAISERVE_INFERENCE_WORKERS": "0"})
