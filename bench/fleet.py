"""Fleet coordination: what the shared state store costs, and how far it scales.

1. **Coordination overhead** on the demo model: time spent in the store by a worker (claim,
   heartbeats, per-item progress, staged-item reads, completion with aggregation) ÷ the chunk's
   compute time, on PostgreSQL and on SQLite. Goal < 2 %.
2. **Coordinator throughput**: a near-zero-cost chunk runner, chunks/s against the total number
   of workers (spread over processes, 8 threads each at most), on PostgreSQL. Shows where the
   database becomes the limit.
3. **1 vs 3 replicas**: the same evaluation through 1 and 3 real server processes on one
   PostgreSQL: wall time, speed-up, and that the aggregates are identical.

Everything runs against a real PostgreSQL started here (``tests/postgres.py``: Debian's server
in a throw-away cluster). ``--quick`` shrinks every part.

    python bench/fleet.py --quick
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "service"), str(ROOT / "clients" / "python")]

from tests.postgres import PostgresServer  # noqa: E402
from xaiserve.jobs.store import ChunkSpec, StateStore, open_store  # noqa: E402

# -- 1. coordination overhead --------------------------------------------------------------


class TimedStore:
    """Delegates to a store and adds up the time spent in it (per thread that called)."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.seconds = 0.0
        self.calls = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._store, name)
        if not callable(target):
            return target

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return target(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds += time.perf_counter() - t0
                    self.calls += 1

        return timed


def overhead(url: str, images: int, chunk_items: int) -> tuple[float, float, int]:
    """(store seconds, compute seconds, store calls) of one evaluation on the demo model."""
    import numpy as np

    from xaiserve.config import Settings
    from xaiserve.demo.shapes import heldout
    from xaiserve.evaluation.morf import MorfParams
    from xaiserve.imaging.decode import ImageLimits
    from xaiserve.jobs import dataset_evaluation as ev
    from xaiserve.jobs.operations import OperationStore
    from xaiserve.jobs.workers import WorkerPool
    from xaiserve.methods import (
        catalog,  # noqa: F401
        get_method,
    )
    from xaiserve.models.repository import ModelRepository
    from xaiserve.observability import Metrics
    from xaiserve.runtime.batcher import ImageBudget

    settings = Settings(models_dir=str(ROOT / "models"), intra_op_threads=1, torch_copies=1)
    repo = ModelRepository(settings.models_dir, settings, Metrics(), ImageBudget(100_000))
    repo.load_all()
    model = repo.get("shapes")
    raw = open_store(url)
    raw.migrate()
    timed = TimedStore(raw)
    store: Any = timed  # the workers' view; the benchmark's own polling uses the raw store
    ops = OperationStore(raw, Metrics())
    data = heldout(images)
    import io

    from PIL import Image

    staged = []
    for i in range(images):
        buf = io.BytesIO()
        Image.fromarray(np.asarray(data.images[i])).save(buf, format="PNG")
        staged.append(ev.stage_item(i, f"i{i}", int(data.labels[i]), buf.getvalue(), data.masks[i]))
    spec = get_method("saliency")
    runs = [ev.MethodRun("saliency", spec, spec.params_type())]
    morf = MorfParams(steps=20, repeats=2, seed=1)
    runner = ev.DatasetEvaluationRunner(repo, store, ImageLimits(), "")
    compute = [0.0]

    class Timed:
        def run(self, chunk: Any, handle: Any) -> Any:
            before = timed.seconds
            t0 = time.perf_counter()
            out = runner.run(chunk, handle)
            # the chunk's own store reads (staged items, progress) are not compute
            compute[0] += time.perf_counter() - t0 - (timed.seconds - before)
            return out

        def finalize(self, op_id: str, spec: dict[str, Any], results: list[Any]) -> Any:
            return runner.finalize(op_id, spec, results)

        def discard(self, spec: dict[str, Any], result: Any) -> None:
            return None

    op = ev.submit(ops, model, runs, morf, total=images, chunk_items=chunk_items, message="bench",
                   staged=staged)
    pool = WorkerPool(store, {ev.KIND: Timed()}, Metrics(), workers=1, lease_seconds=30,
                      poll_seconds=0.01)
    pool.start()
    while not ops.get(op.id).terminal:
        time.sleep(0.05)
    pool.stop()
    final = ops.get(op.id)
    assert final.state == "SUCCEEDED", final.error_message
    repo.close()
    return timed.seconds, compute[0], timed.calls


# -- 2. coordinator throughput ---------------------------------------------------------------


class Instant:
    def run(self, chunk: Any, handle: Any) -> Any:
        handle.update(done=chunk.end - chunk.start)
        return chunk.end - chunk.start

    def finalize(self, op_id: str, spec: dict[str, Any], results: list[Any]) -> Any:
        return {"items": sum(results)}

    def discard(self, spec: dict[str, Any], result: Any) -> None:
        return None


def _worker_process(url: str, threads: int, stop_at: float) -> None:
    from xaiserve.jobs.workers import WorkerPool
    from xaiserve.observability import Metrics

    pool = WorkerPool(open_store(url), {"instant": Instant()}, Metrics(), workers=threads,
                      lease_seconds=30, poll_seconds=0.005, heartbeat_seconds=0.5)
    pool.start()
    while time.time() < stop_at:
        time.sleep(0.05)
    pool.stop(5)


def throughput(url: str, workers: int, chunks: int) -> float:
    from xaiserve.jobs.operations import OperationStore
    from xaiserve.observability import Metrics

    store = open_store(url)
    store.migrate()
    ops = OperationStore(store, Metrics(), max_active=10**6)
    per_process = 8
    procs = []
    stop_at = time.time() + 600
    n_proc = max(1, (workers + per_process - 1) // per_process)
    ctx = mp.get_context("spawn")
    for i in range(n_proc):
        threads = min(per_process, workers - i * per_process)
        p = ctx.Process(target=_worker_process, args=(url, threads, stop_at))
        p.start()
        procs.append(p)
    time.sleep(3.0)  # let the processes import and start polling
    t0 = time.perf_counter()
    op = ops.start("instant", {}, [ChunkSpec(i, i + 1) for i in range(chunks)], total=chunks)
    while not ops.get(op.id).terminal:
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    assert ops.get(op.id).result == {"items": chunks}
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(10)
    store.close()
    return chunks / elapsed


# -- 3. one vs three replicas ------------------------------------------------------------------


def replicas(pg: PostgresServer, counts: list[int], images: int) -> list[tuple[int, float, dict]]:
    from tests.fleet.replicas import Replica, replica_env
    from xaiserve.demo.shapes import heldout
    from xaiserve_client import ExplainClient

    data = heldout(images)
    items = [(data.images[i], int(data.labels[i]), data.masks[i], f"i{i}") for i in range(images)]
    out = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    for n in counts:
        url = pg.database()
        fleet = [
            Replica(f"r{n}-{k}", replica_env(url, tmp / "art", tmp / f"d{n}{k}",
                                             XAISERVE_LEASE_SECONDS="30"), tmp).spawn()
            for k in range(n)
        ]
        try:
            for r in fleet:
                r.start()
            with ExplainClient(fleet[0].address, timeout=600) as client:
                t0 = time.perf_counter()
                op = client.evaluate_dataset(items, "shapes", methods={"saliency": {}},
                                             morf={"steps": 20, "repeats": 2, "seed": 1})
                final = client.wait_operation(op.id, timeout=1200)
                elapsed = time.perf_counter() - t0
            assert final.state == "SUCCEEDED", final.error
            result = dict(final.result)
            result.pop("report", None)
            out.append((n, elapsed, result))
        finally:
            for r in fleet:
                r.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about two minutes)")
    args = parser.parse_args()
    images = 8 if args.quick else 32
    worker_counts = [1, 4, 16, 64] if args.quick else [1, 2, 4, 8, 16, 32, 64]
    chunks = 400 if args.quick else 2000

    pg = PostgresServer()
    pg.start()
    try:
        print("## Coordination overhead (demo model, saliency + MoRF 20×2, 2 images per chunk)")
        print("| store | store s | compute s | store calls | overhead |")
        print("|---|---:|---:|---:|---:|")
        for name, url in (("postgresql", pg.database()),
                          ("sqlite", f"sqlite://{tempfile.mkdtemp()}/state.db")):
            s, c, calls = overhead(url, images, 2)
            print(f"| {name} | {s:.3f} | {c:.2f} | {calls} | {100 * s / c:.2f} % |")
        print()
        print(f"## Coordinator throughput (no-op chunks, {chunks} per run, PostgreSQL)")
        print("| workers | processes | chunks/s | vs 1 worker |")
        print("|---:|---:|---:|---:|")
        base = None
        for w in worker_counts:
            rate = throughput(pg.database(), w, chunks)
            base = base or rate
            print(f"| {w} | {max(1, (w + 7) // 8)} | {rate:.0f} | {rate / base:.2f}× |")
        print()
        print(f"## The same evaluation on 1 and 3 replicas ({images} images, 1 worker each)")
        print("| replicas | wall s | speed-up | aggregate identical to 1 replica |")
        print("|---:|---:|---:|---|")
        runs = replicas(pg, [1, 3], images)
        one = runs[0]
        for n, wall, result in runs:
            print(f"| {n} | {wall:.1f} | {one[1] / wall:.2f}× | {result == one[2]} |")
    finally:
        pg.close()


if __name__ == "__main__":
    main()
