"""Fleet coordination: what the shared state store costs, and how far it scales.

1. **Coordination overhead** on the demo model: time spent in the store (claim, heartbeats
   carrying progress, staged-item reads, completion with aggregation) ÷ the chunks' compute
   time, on PostgreSQL and on SQLite, with the shipped chunk sizing (about ``chunk_seconds`` of
   compute per chunk, from the cost estimate and the seconds per pass measured on the first
   evaluation) and with fixed 2-image chunks for comparison. "waits" is what the computing
   worker thread spent blocked on the store (claim, staged-item reads, completion — the
   aggregation inside the last completion counts as compute); heartbeats (carrying progress) run in their own thread beside the
   computation: "heartbeat" is their wall time, "hb CPU" the CPU time they took from it.
   overhead = (waits + hb CPU) ÷ compute, the goal being < 2 %; "if serial" counts the
   heartbeats' whole wall time instead, an upper bound.
2. **Coordinator throughput**: a near-zero-cost chunk runner, chunks/s against the total number
   of workers (spread over processes, 8 threads each at most), on PostgreSQL, with the CPU the
   PostgreSQL server used meanwhile (its processes' user + system time): where it flattens,
   and whether the database or the workers' own CPU is the limit.
3. **1 vs 3 replicas**: the same evaluation through 1 and 3 real server processes on one
   PostgreSQL, shipped chunk sizing, interleaved and run twice each (other load on the machine
   moves between runs): wall time, speed-up, and that the aggregates are identical.

Everything runs against a real PostgreSQL started here (``tests/postgres.py``: Debian's server
in a throw-away cluster). ``--quick`` shrinks every part.

    python bench/fleet.py --quick
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "service"), str(ROOT / "clients" / "python")]

from tests.postgres import PostgresServer  # noqa: E402
from xaiserve.jobs.store import ChunkSpec, StateStore, open_store  # noqa: E402

# -- 1. coordination overhead --------------------------------------------------------------


class TimedStore:
    """Delegates to a store and adds up the time spent in it, per calling thread's role
    (``worker-*`` threads compute; ``heartbeat`` threads run beside them). Claims that find
    nothing (an idle worker polling) are counted apart: no computation waits on them."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.cpu: defaultdict[str, float] = defaultdict(float)  # the calling thread's CPU time
        self.calls: defaultdict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._store, name)
        if not callable(target):
            return target

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.perf_counter(), time.thread_time()
            out = None
            try:
                out = target(*args, **kwargs)
                return out
            finally:
                dt, dc = time.perf_counter() - t0, time.thread_time() - c0
                role = threading.current_thread().name.split("-")[0]
                if name == "claim_chunk" and out is None:
                    role = "idle"
                with self._lock:
                    self.seconds[role] += dt
                    self.cpu[role] += dc
                    self.calls[role] += 1

        return timed


@dataclass
class Overhead:
    chunks: int
    per_chunk: int
    compute: float
    waits: float  # the worker thread blocked on the store
    beside: float  # the heartbeat threads' store calls, wall time (overlaps the computation)
    beside_cpu: float  # … and the CPU time those threads took (what they take from it)
    calls: int


class TimedRunner:
    """The evaluation runner, timed: its chunks' compute (less the store reads it makes) and
    the aggregation, which runs inside the last completion but is computation, not store time."""

    def __init__(self, runner: Any, timed: TimedStore) -> None:
        self.runner = runner
        self.timed = timed
        self.compute = 0.0
        self.aggregation = 0.0

    def run(self, chunk: Any, handle: Any) -> Any:
        before = self.timed.seconds["worker"]
        t0 = time.perf_counter()
        result = self.runner.run(chunk, handle)
        self.compute += time.perf_counter() - t0 - (self.timed.seconds["worker"] - before)
        return result

    def finalize(self, op_id: str, spec: dict[str, Any], results: list[Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return self.runner.finalize(op_id, spec, results)
        finally:
            self.aggregation += time.perf_counter() - t0

    def discard(self, spec: dict[str, Any], result: Any) -> None:
        return None


def _demo_items(images: int) -> tuple[Any, list[Any]]:
    import io

    import numpy as np
    from PIL import Image

    from xaiserve.demo.shapes import heldout
    from xaiserve.jobs import dataset_evaluation as ev

    data = heldout(images)
    staged = []
    for i in range(images):
        buf = io.BytesIO()
        Image.fromarray(np.asarray(data.images[i])).save(buf, format="PNG")
        staged.append(ev.stage_item(i, f"i{i}", int(data.labels[i]), buf.getvalue(), data.masks[i]))
    return data, staged


def overhead(url: str, images: int, fixed: list[int]) -> list[tuple[str, Overhead]]:
    """One evaluation per chunking on the demo model: fixed sizes first (the sizer learns the
    model's seconds per pass from them, as a replica does from its first evaluation), then
    the shipped sizing."""
    from xaiserve.config import Settings
    from xaiserve.evaluation.morf import MorfParams, morf_cost
    from xaiserve.imaging.decode import ImageLimits
    from xaiserve.jobs import dataset_evaluation as ev
    from xaiserve.jobs.chunk_sizing import ChunkSizer
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
    ops = OperationStore(raw, Metrics())
    _, staged = _demo_items(images)
    spec = get_method("saliency")
    params = spec.params_type()
    runs = [ev.MethodRun("saliency", spec, params)]
    morf = MorfParams(steps=20, repeats=2, seed=1)
    passes = spec.cost(params, model.input_size) + morf_cost(morf, model.input_size)
    sizer = ChunkSizer(settings.chunk_seconds)
    out = []
    for per_chunk in [*fixed, 0]:
        timed = TimedStore(raw)
        store: Any = timed  # the workers' view; the benchmark's own polling uses the raw store
        runner = ev.DatasetEvaluationRunner(repo, store, ImageLimits(), "", sizer=sizer)
        timed_runner = TimedRunner(runner, timed)
        size = per_chunk or sizer.items(model.name, model.version, passes, images)
        op = ev.submit(ops, model, runs, morf, total=images, chunk_items=size, message="bench",
                       staged=staged, passes_per_image=passes)
        pool = WorkerPool(store, {ev.KIND: timed_runner}, Metrics(), workers=1, lease_seconds=30,
                          poll_seconds=0.01)
        pool.start()
        while not ops.get(op.id).terminal:
            time.sleep(0.05)
        pool.stop()
        final = ops.get(op.id)
        assert final.state == "SUCCEEDED", final.error_message
        label = f"fixed {per_chunk}" if per_chunk else "sized (chunk_seconds)"
        out.append((label, Overhead(
            chunks=-(-images // size), per_chunk=size,
            compute=timed_runner.compute + timed_runner.aggregation,
            waits=timed.seconds["worker"] - timed_runner.aggregation,
            beside=timed.seconds["heartbeat"],
            beside_cpu=timed.cpu["heartbeat"],
            calls=timed.calls["worker"] + timed.calls["heartbeat"],
        )))
    repo.close()
    raw.close()
    return out


# -- 2. coordinator throughput ---------------------------------------------------------------


class Instant:
    def run(self, chunk: Any, handle: Any) -> Any:
        handle.update(done=chunk.end - chunk.start)
        return chunk.end - chunk.start

    def finalize(self, op_id: str, spec: dict[str, Any], results: list[Any]) -> Any:
        return {"items": sum(results)}

    def discard(self, spec: dict[str, Any], result: Any) -> None:
        return None


def _worker_process(url: str, threads: int, stop_at: float, ready: Any) -> None:
    from xaiserve.jobs.workers import WorkerPool
    from xaiserve.observability import Metrics

    store = open_store(url)
    store.ping()  # connected before the clock starts
    # An idle worker polls every 50 ms (the server's default is 250 ms).
    pool = WorkerPool(store, {"instant": Instant()}, Metrics(), workers=threads,
                      lease_seconds=30, poll_seconds=0.05, heartbeat_seconds=0.5)
    pool.start()
    ready.set()
    while time.time() < stop_at:
        time.sleep(0.05)
    pool.stop(5)


def _tree_cpu(root: int) -> float:
    """CPU seconds (user + system, reaped children included) of ``root`` and its descendants:
    the PostgreSQL server's processes (postmaster and backends)."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after "pid (comm)": state ppid … utime(14) stime(15) cutime(16) cstime(17), 1-based
        stats[int(entry)] = (int(fields[1]), sum(int(v) for v in fields[11:15]) / tick)
    total, frontier = 0.0, [root]
    while frontier:
        pid = frontier.pop()
        total += stats.get(pid, (0, 0.0))[1]
        frontier += [p for p, (ppid, _) in stats.items() if ppid == pid]
    return total


def throughput(url: str, workers: int, chunks: int, server_pid: int) -> tuple[float, float]:
    """(chunks/s, PostgreSQL's CPU seconds per second of the run: cores the database used)."""
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
    ready = []
    for i in range(n_proc):
        threads = min(per_process, workers - i * per_process)
        event = ctx.Event()
        p = ctx.Process(target=_worker_process, args=(url, threads, stop_at, event))
        p.start()
        procs.append(p)
        ready.append(event)
    for event in ready:  # every process imported, connected and polling
        assert event.wait(300), "a worker process did not start"
    time.sleep(0.5)
    t0, cpu0 = time.perf_counter(), _tree_cpu(server_pid)
    op = ops.start("instant", {}, [ChunkSpec(i, i + 1) for i in range(chunks)], total=chunks)
    while not ops.get(op.id).terminal:
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    db_cores = (_tree_cpu(server_pid) - cpu0) / elapsed
    assert ops.get(op.id).result == {"items": chunks}
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(10)
    store.close()
    return chunks / elapsed, db_cores


# -- 3. one vs three replicas ------------------------------------------------------------------


def replicas(pg: PostgresServer, counts: list[int], images: int) -> list[tuple[int, float, dict]]:
    from xaiserve.demo.shapes import heldout

    data = heldout(images)
    items = [(data.images[i], int(data.labels[i]), data.masks[i], f"i{i}") for i in range(images)]
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as folder:
        for n in counts:
            out.append(_replica_run(pg, n, items, Path(folder)))
    return out


def _replica_run(
    pg: PostgresServer, n: int, items: list[Any], tmp: Path
) -> tuple[int, float, dict]:
    """One evaluation of ``items`` through ``n`` fresh replicas on a fresh database."""
    from tests.fleet.replicas import Replica, replica_env
    from xaiserve_client import ExplainClient

    url = pg.database()
    fleet = [
        Replica(f"r{n}-{k}", replica_env(url, tmp / "art", tmp / f"d{n}{k}",
                                         XAISERVE_LEASE_SECONDS="30",
                                         XAISERVE_CHUNK_ITEMS="0"), tmp).spawn()
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
        return n, elapsed, result
    finally:
        for r in fleet:
            r.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about three minutes)")
    args = parser.parse_args()
    images = 24 if args.quick else 64
    worker_counts = [1, 4, 16, 64] if args.quick else [1, 2, 4, 8, 16, 32, 64]
    chunks = 400 if args.quick else 2000
    replica_images = 96 if args.quick else 192  # about six chunks (two per replica) in --quick

    pg = PostgresServer()
    pg.start()
    sqlite_dir = tempfile.mkdtemp(prefix="bench-fleet-sqlite-")
    try:
        print(f"## Coordination overhead (demo model, saliency + MoRF 20×2, {images} images)")
        print("| store | chunking | chunks × images | compute s | waits s | heartbeat s "
              "| hb CPU s | store calls | overhead | overhead if serial |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, url in (("postgresql", pg.database()),
                          ("sqlite", f"sqlite://{sqlite_dir}/state.db")):
            for label, o in overhead(url, images, [2]):
                print(f"| {name} | {label} | {o.chunks} × {o.per_chunk} | {o.compute:.2f} "
                      f"| {o.waits:.3f} | {o.beside:.3f} | {o.beside_cpu:.3f} | {o.calls} "
                      f"| {100 * (o.waits + o.beside_cpu) / o.compute:.2f} % "
                      f"| {100 * (o.waits + o.beside) / o.compute:.2f} % |")
        print()
        print(f"## Coordinator throughput (no-op chunks, {chunks} per run, PostgreSQL)")
        print("| workers | processes | chunks/s | vs 1 worker | PostgreSQL CPU (cores) "
              "| PostgreSQL ms CPU per chunk |")
        print("|---:|---:|---:|---:|---:|---:|")
        assert pg.process is not None
        base = None
        for w in worker_counts:
            rate, db_cores = throughput(pg.database(), w, chunks, pg.process.pid)
            base = base or rate
            print(f"| {w} | {max(1, (w + 7) // 8)} | {rate:.0f} | {rate / base:.2f}× "
                  f"| {db_cores:.2f} | {1000 * db_cores / rate:.1f} |")
        print()
        print(f"## The same evaluation on 1 and 3 replicas ({replica_images} images, "
              "1 worker each, shipped chunk sizing)")
        print("| replicas | run | wall s | speed-up vs best 1-replica run "
              "| aggregate identical to 1 replica |")
        print("|---:|---:|---:|---:|---|")
        # Interleaved, twice each: the machine's other load moves between runs.
        runs = replicas(pg, [1, 3, 1, 3], replica_images)
        best_one = min(wall for n, wall, _ in runs if n == 1)
        reference = runs[0][2]
        for k, (n, wall, result) in enumerate(runs):
            print(f"| {n} | {k // 2 + 1} | {wall:.1f} | {best_one / wall:.2f}× "
                  f"| {result == reference} |")
    finally:
        pg.close()
        shutil.rmtree(sqlite_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
