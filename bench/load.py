"""Load and soak against a real server process on loopback (reliability checks L1, L2, S4).

First "64 slow + 4 Predict" (#18): 64 clients loop on an expensive Explain (regional PD, then
IG), retrying 10 ms after each refusal, while 4 clients loop on Predict; the clients run in one
process and then in two (slow and Predict apart), against a server with the default runners
(2 × CPUs) and one with a runner per expensive slot. Predict's p50/p99 as the client sees them
beside the server's own total from each reply's Timings.

Closed loop at 1, 4, 16 and 64 clients and open loop at 3× the measured capacity, mixing
Predict (90 %) and Explain (10 %, contextual importance) on the demo model: throughput,
p50/p90/p99, errors by status, the batch-size histogram from /metrics and server RSS. Then a
soak of N Predict requests at 8 clients: RSS slope after warm-up, threads and file descriptors.
The physical floor is the onnxruntime session's best-batch throughput, measured in this run.
Bounded in count and time; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import time
import urllib.request
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import grpc
import numpy as np
import psutil

from _common import (
    DEMO,
    MODELS,
    ServerProcess,
    best_batch_time,
    free_port,
    ort_session,
    print_table,
)
from xaiserve_client.v1 import explain_pb2 as pb
from xaiserve_client.v1 import explain_pb2_grpc as pb_grpc

SIZE = 64


def requests() -> tuple[pb.PredictRequest, pb.ExplainRequest]:
    from xaiserve.demo.shapes import heldout

    image = heldout(1).images[0]
    msg = pb.Image(tensor=pb.Tensor(dtype="uint8", shape=[SIZE, SIZE, 3], data=image.tobytes()))
    predict = pb.PredictRequest(model="shapes", image=msg)
    explain = pb.ExplainRequest(
        model="shapes",
        image=msg,
        method=pb.MethodParams(contextual_importance=pb.ContextualImportanceParams(seed=1)),
    )
    return predict, explain


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.server: list[float] = []  # the server's own total per response (Timings)
        self.codes: Counter[str] = Counter()

    def row(self, label: str, seconds: float) -> list[object]:
        lat = sorted(self.latencies) or [float("nan")]
        q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3  # noqa: E731
        ok = self.codes.get("OK", 0)
        errors = ", ".join(f"{k}:{v}" for k, v in sorted(self.codes.items()) if k != "OK") or "none"
        return [label, ok / seconds, q(0.5), q(0.9), q(0.99), errors]


async def one_call(stub: pb_grpc.ExplainServiceStub, i: int, reqs, stats: Stats) -> None:  # type: ignore[no-untyped-def]
    predict, explain = reqs
    t = time.perf_counter()
    try:
        if i % 10 == 9:
            await stub.Explain(explain, timeout=30)
        else:
            await stub.Predict(predict, timeout=30)
        stats.codes["OK"] += 1
        stats.latencies.append(time.perf_counter() - t)
    except grpc.aio.AioRpcError as exc:
        stats.codes[exc.code().name] += 1


async def closed_loop(port: int, clients: int, seconds: float, reqs) -> Stats:  # type: ignore[no-untyped-def]
    stats = Stats()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ExplainServiceStub(channel)
        stop = time.perf_counter() + seconds

        async def client(c: int) -> None:
            i = c
            while time.perf_counter() < stop:
                await one_call(stub, i, reqs, stats)
                i += clients

        await asyncio.gather(*(client(c) for c in range(clients)))
    return stats


async def open_loop(port: int, rate: float, seconds: float, reqs) -> Stats:  # type: ignore[no-untyped-def]
    stats = Stats()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ExplainServiceStub(channel)
        tasks = []
        start = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):  # constant arrival schedule: no coordinated omission
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one_call(stub, i, reqs, stats)))
        await asyncio.gather(*tasks)
    return stats


SLOW_METHODS = {
    "regional PD": pb.MethodParams(
        regional_prediction_difference=pb.RegionalPredictionDifferenceParams(seed=1)
    ),
    "IG": pb.MethodParams(integrated_gradients=pb.IntegratedGradientsParams()),
}


async def _loop_group(  # type: ignore[no-untyped-def]
    port: int, kind: str, clients: int, stop: float, reqs, method: pb.MethodParams | None
) -> Stats:
    """``clients`` closed-loop callers of one kind on one channel until ``stop``: "slow" ones
    loop on an expensive Explain and retry 10 ms after a refusal, "fast" ones loop on Predict."""
    predict, explain = reqs
    slow_req = pb.ExplainRequest(model="shapes", image=explain.image, method=method)
    stats = Stats()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ExplainServiceStub(channel)

        async def caller() -> None:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                try:
                    if kind == "slow":
                        reply = await stub.Explain(slow_req, timeout=30)
                    else:
                        reply = await stub.Predict(predict, timeout=30)
                    stats.codes["OK"] += 1
                    stats.latencies.append(time.perf_counter() - t)
                    stats.server.append(reply.timings.total_seconds)
                except grpc.aio.AioRpcError as exc:
                    stats.codes[exc.code().name] += 1
                    if kind == "slow":
                        await asyncio.sleep(0.01)

        await asyncio.gather(*(caller() for _ in range(clients)))
    return stats


async def slow_plus_predict(  # type: ignore[no-untyped-def]
    port: int, slow: int, fast: int, seconds: float, reqs, method: pb.MethodParams
) -> tuple[Stats, Stats]:
    """``slow`` clients looping on an expensive Explain while ``fast`` clients loop on Predict,
    all in this process's one event loop (#18: "64 slow + 4 Predict")."""
    stop = time.perf_counter() + seconds
    slow_stats, fast_stats = await asyncio.gather(
        _loop_group(port, "slow", slow, stop, reqs, method),
        _loop_group(port, "fast", fast, stop, reqs, None),
    )
    return slow_stats, fast_stats


def _group_process(  # type: ignore[no-untyped-def]
    port: int, kind: str, clients: int, start: float, seconds: float, label: str, nice: int
):
    """One client group in a process of its own (``time.time`` is shared across processes)."""
    if nice:
        os.nice(nice)
    method = SLOW_METHODS[label] if kind == "slow" else None
    time.sleep(max(0.0, start - time.time()))
    stop = time.perf_counter() + seconds
    stats = asyncio.run(_loop_group(port, kind, clients, stop, requests(), method))
    return stats.latencies, stats.server, dict(stats.codes)


def slow_plus_predict_processes(
    port: int, slow: int, fast: int, seconds: float, label: str, slow_nice: int = 0
) -> tuple[Stats, Stats]:
    """The same load with the slow and the Predict clients in two processes, as they would be
    on two machines: the Predict client's latency is then not its own event loop's delay in
    serving 64 retrying callers (about 300 refusals/s). With ``slow_nice``, the slow callers'
    process yields these cores to the server, standing in for callers on other machines (it
    still keeps every expensive slot taken and retries 10 ms after each refusal)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        pool.submit(time.sleep, 0).result()  # both workers imported before the clock starts
        start = time.time() + 3.0
        slow_f = pool.submit(_group_process, port, "slow", slow, start, seconds, label, slow_nice)
        fast_f = pool.submit(_group_process, port, "fast", fast, start, seconds, label, 0)
        results = []
        for future in (slow_f, fast_f):
            latencies, server, codes = future.result()
            stats = Stats()
            stats.latencies, stats.server, stats.codes = latencies, server, Counter(codes)
            results.append(stats)
    return results[0], results[1]


def quantile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values) or [float("nan")]
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


def fairness_rows(port: int, seconds: float, reqs) -> list[list[object]]:  # type: ignore[no-untyped-def]
    rows: list[list[object]] = []
    for label, method in SLOW_METHODS.items():
        for where in ("one process", "two processes"):
            if where == "one process":
                slow, fast = asyncio.run(slow_plus_predict(port, 64, 4, seconds, reqs, method))
            else:
                slow, fast = slow_plus_predict_processes(port, 64, 4, seconds, label)
            for group, stats in (("Predict", fast), ("slow", slow)):
                total = sum(stats.codes.values()) or 1
                rows.append(
                    [
                        f"{label}: {group} ({where})",
                        *stats.row("", seconds)[1:],
                        stats.codes["OK"] / total,
                        quantile_ms(stats.server, 0.5),
                        quantile_ms(stats.server, 0.99),
                    ]
                )
    return rows


RUNNER_SETTINGS = {
    "runners auto (2 × CPUs)": {},
    "runners 24 (one per expensive slot)": {"XAISERVE_MAX_RUNNING_REQUESTS": "24"},
}


def fairness_table(seconds: float, reqs) -> None:  # type: ignore[no-untyped-def]
    """The "64 slow + 4 Predict" table, once per runner setting, each on a fresh server."""
    rows: list[list[object]] = []
    for setting, env in RUNNER_SETTINGS.items():
        server = ServerProcess(MODELS, **env)
        try:
            for row in fairness_rows(server.port, seconds, reqs):
                rows.append([setting, *row])
        finally:
            server.close()
    print_table(
        "64 slow + 4 Predict (demo model; slow = Explain in a closed loop, retried 10 ms after "
        f"a refusal; {seconds:g} s per row; server times from each reply's Timings)",
        [
            "server",
            "clients",
            "OK/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "errors",
            "OK share",
            "server p50 ms",
            "server p99 ms",
        ],
        rows,
    )


def scrape(metrics_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        return r.read().decode()


def batch_histogram(text: str) -> str:
    buckets = {}
    for m in re.finditer(
        r'xaiserve_batch_images_bucket\{[^}]*le="([^"]+)"[^}]*\} ([0-9.e+]+)', text
    ):
        buckets[m.group(1)] = float(m.group(2))
    prev, parts = 0.0, []
    for le, count in sorted(
        ((k, v) for k, v in buckets.items() if k != "+Inf"), key=lambda kv: float(kv[0])
    ):
        if count - prev:
            parts.append(f"≤{float(le):g}:{int(count - prev)}")
        prev = count
    return " ".join(parts)


def soak(port: int, proc: psutil.Process, total: int, reqs) -> list[object]:  # type: ignore[no-untyped-def]
    samples: list[tuple[int, float, int, int]] = []

    async def run() -> None:
        done = 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ExplainServiceStub(channel)

            async def client() -> None:
                nonlocal done
                while done < total:
                    done += 1
                    await stub.Predict(reqs[0], timeout=30)
                    if done % 500 == 0:
                        samples.append(
                            (
                                done,
                                proc.memory_info().rss / 2**20,
                                proc.num_threads(),
                                proc.num_fds(),
                            )
                        )

            await asyncio.gather(*(client() for _ in range(8)))

    t = time.perf_counter()
    asyncio.run(run())
    elapsed = time.perf_counter() - t
    warm = [s for s in samples if s[0] >= total // 5]
    x = np.array([s[0] for s in warm], float)
    y = np.array([s[1] for s in warm], float)
    slope = float(np.polyfit(x, y, 1)[0]) * 1000 if len(warm) > 2 else float("nan")
    threads = {s[2] for s in warm}
    fds = {s[3] for s in warm}
    return [
        total,
        total / elapsed,
        warm[0][1] if warm else float("nan"),
        warm[-1][1] if warm else float("nan"),
        slope,
        f"{min(threads)}–{max(threads)}",
        f"{min(fds)}–{max(fds)}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--only-fairness", action="store_true", help='only the "64 slow + 4 Predict" scenario'
    )
    args = parser.parse_args()
    window = 4.0 if args.quick else 10.0
    fairness_window = 8.0 if args.quick else 20.0  # p99 of ~4 × 80 Predicts/s needs ≥ 8 s
    soak_total = 4000 if args.quick else 20000
    reqs = requests()

    session = ort_session(DEMO / "model.onnx")
    name = session.get_inputs()[0].name
    x1 = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    t_best, n_best = best_batch_time(
        lambda x: session.run(None, {name: x}), x1, sizes=(1, 8, 32, 64, 128)
    )
    floor = 1.0 / t_best

    fairness_table(fairness_window, reqs)
    if args.only_fairness:
        return
    metrics_port = free_port()
    server = ServerProcess(MODELS, XAISERVE_METRICS_PORT=str(metrics_port))
    proc = psutil.Process(server.proc.pid)
    try:
        rows = []
        for clients in (1, 4, 16, 64):
            stats = asyncio.run(closed_loop(server.port, clients, window, reqs))
            rows.append([*stats.row(f"closed {clients}", window), proc.memory_info().rss / 2**20])
        capacity = max(r[1] for r in rows)  # type: ignore[type-var]
        stats = asyncio.run(open_loop(server.port, 3 * float(capacity), window, reqs))  # type: ignore[arg-type]
        rows.append(
            [
                *stats.row(f"open {3 * float(capacity):.0f}/s", window),
                proc.memory_info().rss / 2**20,
            ]
        )
        histogram = batch_histogram(scrape(metrics_port))
        print_table(
            "Load (demo model; 90 % Predict, 10 % Explain contextual_importance)",
            ["load", "OK/s", "p50 ms", "p90 ms", "p99 ms", "errors", "server RSS MiB"],
            rows,
        )
        predict_only = asyncio.run(closed_loop(server.port, 16, window, (reqs[0], reqs[0])))
        print_table(
            "Predict at 16 clients vs the session's best batch (same run)",
            [f"floor img/s (batch {n_best})", "Predict img/s", "ratio"],
            [
                [
                    floor,
                    len(predict_only.latencies) / window,
                    len(predict_only.latencies) / window / floor,
                ]
            ],
        )
        print(f"\nbatch sizes seen (from /metrics): {histogram}")
        print_table(
            "Soak (Predict, 8 clients)",
            [
                "requests",
                "req/s",
                "RSS after warm-up MiB",
                "RSS end MiB",
                "RSS slope MiB/1000 req",
                "threads",
                "fds",
            ],
            [soak(server.port, proc, soak_total, reqs)],
        )
    finally:
        server.close()


if __name__ == "__main__":
    main()
