"""``make demo``: start a server, explain a few held-out shapes with every method, score them.

Run as ``python -m xaiserve_client.demo --out demo-output``. The demo

1. starts ``xaiserve serve`` as a subprocess on a free loopback port (its log goes to
   ``OUT/server.log``) and waits for the gRPC health check to say SERVING;
2. lists the models and takes the first ready one;
3. draws a few held-out images from :mod:`xaiserve.demo.shapes` (true labels and object masks);
4. predicts each image, explains it with every method the model supports (methods the server
   does not implement are skipped), writes heatmap overlays, and scores every heatmap with
   MoRF region perturbation (AOPC) and the object mask;
5. writes ``scores.md`` and ``scores.csv``, prints the table, and stops the server (SIGTERM).

``--server HOST:PORT`` uses a running server instead of starting one.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from xaiserve_client.client import ExplainClient
from xaiserve_client.compare import write_outputs
from xaiserve_client.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unimplemented,
    XaiserveError,
)
from xaiserve_client.types import ModelInfo, ModelVersion

DEMO_PARAMS: dict[str, dict[str, Any]] = {
    # Lighter than the defaults so the demo runs in well under a minute on a laptop CPU.
    "regional_prediction_difference": {"scales": 3, "seed": 0},
    "pixelwise_prediction_difference": {"stride": 4, "samples": 4, "seed": 0},
    "contextual_importance": {"seed": 0},
    "integrated_gradients": {"steps": 16},
    "smoothgrad": {"samples": 8, "seed": 0},
}
"""Per-method parameters for the demo; other methods use the server's defaults."""

MORF = {"steps": 20, "repeats": 2, "seed": 0}
"""Region perturbation settings for the demo's scores (coarser than the defaults)."""

COLUMNS = [
    "image", "true label", "predicted", "method", "target score", "forward passes", "time (s)",
    "AOPC (MoRF)",
]  # fmt: skip


class DemoError(RuntimeError):
    """The demo could not run (the message says why)."""


@dataclass
class DemoImages:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: list[str]
    masks: np.ndarray | None  # (N, H, W) bool
    source: str


# ---------------------------------------------------------------------------------------------
# Server process


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty server log)"


def _python_path() -> str:
    """PYTHONPATH for the server process: ours plus the folders of both packages."""
    import xaiserve
    import xaiserve_client

    parts = [
        str(Path(xaiserve_client.__file__).resolve().parents[1]),
        str(Path(xaiserve.__file__).resolve().parents[1]),
    ]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


def start_server(port: int, log_path: Path, models: str | None = None) -> subprocess.Popen[bytes]:
    """``xaiserve serve`` on ``127.0.0.1:port`` (metrics off), logging to ``log_path``."""
    command = [
        sys.executable,
        "-m",
        "xaiserve_client",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-port",
        "0",
        "--log-format",
        "text",
    ]
    if models:
        command += ["--models", models]
    # The demo explains a couple of images: no warm-up, so the server is ready within seconds
    # (the first white-box request then builds the torch module, as warm-up would have).
    env = {
        **os.environ,
        "PYTHONPATH": _python_path(),
        "XAISERVE_DRAIN_SECONDS": "5",
        "XAISERVE_WARMUP": os.environ.get("XAISERVE_WARMUP", "0"),
    }
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_serving(
    client: ExplainClient,
    process: subprocess.Popen[bytes] | None,
    log_path: Path,
    timeout: float,
) -> None:
    """Wait for health SERVING; :class:`DemoError` with the log tail if the server dies."""
    end = time.monotonic() + timeout
    status = "no answer"
    while time.monotonic() < end:
        if process is not None and process.poll() is not None:
            raise DemoError(
                f"the server exited with status {process.returncode} before "
                f"serving; the end of its log:\n{_tail(log_path)}"
            )
        try:
            status = client.health(timeout=1.0)
            if status == "SERVING":
                return
        except XaiserveError as err:
            status = err.code.name
        time.sleep(0.2)
    raise DemoError(
        f"the server was not SERVING after {timeout:g} s (last: {status}); "
        f"the end of its log:\n{_tail(log_path)}"
    )


def stop_server(process: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``; returns its status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


# ---------------------------------------------------------------------------------------------
# Images


def demo_images(n: int, class_names: list[str]) -> DemoImages:
    """Held-out shapes images; synthetic ones drawn here if ``xaiserve.demo.shapes`` is absent."""
    try:
        from xaiserve.demo.shapes import heldout
    except ImportError:
        return _drawn_images(n, class_names)
    data = heldout(n)
    labels = [data.class_names[int(i)] for i in data.labels]
    return DemoImages(data.images, labels, data.masks, "xaiserve.demo.shapes.heldout")


def _drawn_images(n: int, class_names: list[str], size: int = 64) -> DemoImages:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    images, masks, labels = [], [], []
    for i in range(n):
        img = rng.integers(60, 140, (size, size, 3)).astype(np.uint8)
        cy, cx, r = size / 2 + rng.uniform(-8, 8), size / 2 + rng.uniform(-8, 8), size / 5
        if i % 2 == 0:
            mask, label = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2, "circle"
        else:
            mask, label = (abs(yy - cy) <= r) & (abs(xx - cx) <= r), "square"
        img[mask] = rng.integers(150, 256, 3).astype(np.uint8)
        images.append(img)
        masks.append(mask)
        labels.append(label if label in class_names else "?")
    return DemoImages(np.stack(images), labels, np.stack(masks), "drawn by the demo")


# ---------------------------------------------------------------------------------------------
# The demo


def _pick_model(models: list[ModelInfo]) -> tuple[ModelInfo, ModelVersion]:
    for model in models:
        if model.latest is not None:
            return model, model.latest
    states = (
        ", ".join(
            f"{m.name} v{v.version}: {v.state} {v.error}".strip()
            for m in models
            for v in m.versions
        )
        or "none"
    )
    raise DemoError(f"no ready model on the server (models: {states})")


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def explain_all(
    client: ExplainClient, images: DemoImages, model: ModelInfo, version: ModelVersion, out: Path
) -> list[dict[str, str]]:
    """Predict, explain with every method, score; returns the table rows."""
    rows: list[dict[str, str]] = []
    for i, image in enumerate(images.images):
        name = f"image{i}"
        PILImage.fromarray(image).resize(
            (image.shape[1] * 4, image.shape[0] * 4), PILImage.Resampling.NEAREST
        ).save(out / f"{name}.png")
        top = client.predict(image, model.name, top_k=1).top
        mask = images.masks[i] if images.masks is not None else None
        for method in version.methods:
            start = time.perf_counter()
            try:
                exp = client.explain(image, method, model.name, params=DEMO_PARAMS.get(method, {}))
            except (Unimplemented, InvalidArgument, FailedPrecondition, NotFound) as err:
                print(f"  {name} {method}: skipped ({err})", file=sys.stderr)
                continue
            seconds = time.perf_counter() - start
            exp.save_png(out / f"{name}_{method}.png", image=image, scale=4)
            aopc: float | None = None
            try:
                scored = client.score(
                    image,
                    model.name,
                    heatmap=exp.heatmap,
                    target=exp.target.index,
                    morf=MORF,
                    mask=mask,
                )
                aopc = scored.aopc_morf
            except Unimplemented:
                pass
            rows.append(
                {
                    "image": name,
                    "true label": images.labels[i],
                    "predicted": f"{top.label} ({top.probability:.2f})",
                    "method": method,
                    "target score": _fmt(exp.target.probability),
                    "forward passes": str(exp.forward_passes),
                    "time (s)": _fmt(seconds, 2),
                    "AOPC (MoRF)": _fmt(aopc),
                }
            )
            print(f"  {name} {method}: {seconds:.2f} s", file=sys.stderr)
    return rows


def markdown_table(rows: list[dict[str, str]], columns: list[str] = COLUMNS) -> str:
    """The rows as a Markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(row.get(c, "") for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict[str, str]], out: Path) -> tuple[Path, Path]:
    """``scores.md`` and ``scores.csv`` in ``out``."""
    md, table = out / "scores.md", out / "scores.csv"
    md.write_text(markdown_table(rows), encoding="utf-8")
    with open(table, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return md, table


def run(
    out: Path,
    n_images: int = 3,
    server: str | None = None,
    models: str | None = None,
    startup_timeout: float = 90.0,
) -> int:
    """The whole demo; returns the exit status."""
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "server.log"
    process = None
    if server is None:
        port = free_port()
        server = f"127.0.0.1:{port}"
        print(f"starting the server on {server} (log: {log_path})", file=sys.stderr)
        process = start_server(port, log_path, models)
    try:
        with ExplainClient(server, timeout=120.0) as client:
            wait_serving(client, process, log_path, startup_timeout)
            model, version = _pick_model(client.list_models())
            print(
                f"model {model.name} v{version.version}: methods {', '.join(version.methods)}",
                file=sys.stderr,
            )
            images = demo_images(n_images, version.labels)
            print(f"{len(images.images)} images from {images.source}", file=sys.stderr)
            rows = explain_all(client, images, model, version, out)
            print("comparing every method on the first image …", file=sys.stderr)
            comparison = client.compare(
                images.images[0],
                model.name,
                version=version.version,
                mask=images.masks[0] if images.masks is not None else None,
            )
            compare_paths = write_outputs(comparison, out / "compare")
    finally:
        if process is not None:
            status = stop_server(process)
            print(f"server stopped (exit status {status})", file=sys.stderr)
    md, table = write_tables(rows, out)
    print(markdown_table(rows))
    print(f"overlays, {md.name} and {table.name} written to {out.resolve()}")
    print(f"side-by-side comparison: {compare_paths['png']} and {compare_paths['html']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m xaiserve_client.demo``."""
    parser = argparse.ArgumentParser(prog="xaiserve-demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder")
    parser.add_argument("--images", type=int, default=3, help="held-out images to explain")
    parser.add_argument("--server", help="use this running server instead of starting one")
    parser.add_argument("--models", help="model repository for the started server")
    parser.add_argument("--startup-timeout", type=float, default=90.0)
    args = parser.parse_args(argv)
    try:
        return run(args.out, args.images, args.server, args.models, args.startup_timeout)
    except (DemoError, XaiserveError) as err:
        print(f"demo failed: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
