"""The GPU path, ready to verify: providers agree with the CPU, and what each method costs.

On a machine with an NVIDIA GPU (onnxruntime-gpu, torch with CUDA)::

    python bench/gpu.py                 # ResNet-50 (random weights, 224²)

1. **Agreement.** The CUDA (and TensorRT, when present) execution providers give the same logits
   as the CPU provider on the same batch, within tolerance (CUDA 1e-3, TensorRT 2e-2 relative to
   the largest logit: TensorRT may pick FP16/TF32 kernels).
2. **Segmentation on the GPU**: ``bench/segmentation_device.check`` (SLIC on CUDA vs
   scikit-image: agreement and times) and the segmenter's start-up ``gpu_slic.self_check``
   (``--cpu``: both on torch's CPU tensors, 64²).
3. **Times per image**, through the service's own facade (repository, batcher, I/O binding
   under CUDA, the method registry), each divided by the forward floor (best per-image time of
   the bare session over batch sizes, measured in the same run): Predict at the best batch,
   regional PD (r = 5), MoRF (L = 100, 10 repeats), LRP ε+flat and IG-50 — the white-box
   methods on CUDA through the torch pool.

The model loads through the repository with warm-up on, as served; the warm-up's seconds and
paths are printed, and each row's "first ÷ best" is its first call after that warm-up over the
best later one (the warm-up goal: ≤ 1.5). Times run on CUDA (TensorRT builds an engine per batch
shape; ``--tensorrt`` includes it). A TensorRT provider listed by onnxruntime but not usable (its
libraries missing) is reported, not failed: CUDA alone must agree.

``--cpu`` is the dry run (tested in CI): every step on the CPU provider, the agreement check
comparing the plain path with the I/O-binding path, on the demo model unless ``--model`` is
given. ``--quick`` cuts repeats and method sizes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, median_time, print_table, torchvision_onnx

ACCELERATORS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
TOLERANCE = {"CUDAExecutionProvider": 1e-3, "TensorrtExecutionProvider": 2e-2}


def agreement(onnx_path: Path, size: int, cpu_only: bool) -> tuple[list[list[object]], bool]:
    import onnxruntime as ort

    from xaiserve.runtime.onnx_session import OnnxSession

    x = np.random.default_rng(0).standard_normal((4, 3, size, size)).astype(np.float32)
    reference = OnnxSession(onnx_path, providers=("CPUExecutionProvider",), io_binding=False)
    ref = reference.run(x)
    scale = max(1.0, float(np.abs(ref).max()))
    candidates: list[tuple[str, Any]] = []
    if cpu_only:
        bound = OnnxSession(onnx_path, providers=("CPUExecutionProvider",), io_binding=True)
        candidates.append(("CPUExecutionProvider + I/O binding", bound))
    else:
        for provider in ACCELERATORS:
            if provider in ort.get_available_providers():
                session = OnnxSession(onnx_path, providers=(provider, "CPUExecutionProvider"))
                candidates.append((provider, session))
    rows: list[list[object]] = []
    ok = bool(candidates)
    for label, session in candidates:
        provider = label.split()[0]
        if provider == "TensorrtExecutionProvider" and session.providers[0] != provider:
            # onnxruntime-gpu lists TensorRT whether or not its libraries are installed: a
            # TensorRT that does not initialise is reported, and CUDA alone must agree.
            rows.append([label, ",".join(session.providers), "-", "-", "-", "not usable"])
            continue
        got = session.run(x)
        gap = float(np.abs(got - ref).max()) / scale
        tol = TOLERANCE.get(provider, 1e-6)
        same_top1 = bool((got.argmax(1) == ref.argmax(1)).all())
        passed = gap <= tol and same_top1 and session.providers[0] == provider
        ok &= passed
        rows.append([label, ",".join(session.providers), gap, tol, same_top1, passed])
    if not candidates:
        rows.append(
            ["(no CUDA/TensorRT provider in this onnxruntime build)", "-", "-", "-", "-", False]
        )
    return rows, ok


def load_model(  # type: ignore[no-untyped-def]
    onnx_path: Path, size: int, labels: int, providers: tuple[str, ...], workdir: Path
):
    """The model through the real repository, warm-up on (as served): returns it and a line
    saying how long the warm-up took and which of its paths ran."""
    from xaiserve.config import Settings
    from xaiserve.models.repository import ModelRepository
    from xaiserve.observability import Metrics
    from xaiserve.runtime.batcher import ImageBudget

    folder = workdir / "repo" / "bench" / "1"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(onnx_path, folder / "model.onnx")
    label_list = ", ".join(f'"c{i}"' for i in range(labels))
    (folder / "config.toml").write_text(
        f"[input]\nheight = {size}\nwidth = {size}\nmean = [0.485, 0.456, 0.406]\n"
        f"std = [0.229, 0.224, 0.225]\n[output]\nlabels = [{label_list}]\n"
        "[batching]\nmax_batch_size = 32\nmax_queue_delay_ms = 1.0\n"
    )
    settings = Settings(models_dir=str(workdir / "repo"), providers=providers)
    metrics = Metrics()
    repo = ModelRepository(workdir / "repo", settings, metrics, ImageBudget(100_000))
    entry = repo.load_version("bench", "1")
    if entry.model is None:
        raise RuntimeError(entry.error)
    return entry.model, warmup_summary(metrics)


def warmup_summary(metrics: Any) -> str:
    """``warm-up N s: k ok, failed [...], skipped [...]`` from the load's metrics."""
    seconds = 0.0
    by_outcome: dict[str, list[str]] = {"ok": [], "failed": [], "skipped": []}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "xaiserve_model_warmup_seconds":
                seconds = sample.value
            elif sample.name == "xaiserve_model_warmup_runs_total" and sample.value:
                by_outcome[sample.labels["outcome"]].append(sample.labels["path"])
    return (
        f"warm-up {seconds:.2f} s: {len(by_outcome['ok'])} paths ok, "
        f"failed {by_outcome['failed'] or 'none'}, skipped {by_outcome['skipped'] or 'none'}"
    )


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """The first call's seconds (after the load's warm-up) and the best of ``repeats`` more."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return first, best


def method_times(
    model: Any, size: int, quick: bool, repeats: int
) -> tuple[list[list[object]], str]:
    from xaiserve.evaluation.morf import MorfParams, region_perturbation
    from xaiserve.methods import catalog as _catalog  # noqa: F401 - registers the methods
    from xaiserve.methods.base import Target, get_method
    from xaiserve.methods.params import params_from_mapping
    from xaiserve.runtime import context
    from xaiserve.runtime.onnx_session import OnnxSession

    session = OnnxSession(model.folder / "model.onnx", providers=tuple(model.providers))
    x1 = np.random.default_rng(1).standard_normal((1, 3, size, size)).astype(np.float32)
    floor, floor_batch = float("inf"), 1
    for n in (1, 8, 32) if quick else (1, 2, 4, 8, 16, 32, 64):
        x = np.repeat(x1, n, axis=0)
        per_image = median_time(lambda x=x: session.run(x), repeats, warmup=1) / n
        if per_image < floor:
            floor, floor_batch = per_image, n
    image = np.random.default_rng(2).uniform(0, 255, (size, size, 3)).astype(np.float32)
    batch = np.repeat(image[None], floor_batch, axis=0)
    draws = np.random.default_rng(4)

    def fresh() -> np.ndarray:
        """A new image per call: a repeated one would be served from the segmentation cache."""
        return draws.uniform(0, 255, (size, size, 3)).astype(np.float32)

    target = Target(index=0)
    rows: list[list[object]] = []

    def run(name: str, fn: Callable[[], Any], passes: Callable[[], int]) -> None:
        ctx = context.RequestContext()
        with context.bind(ctx):
            first, seconds = timed(fn, repeats)
        n = passes() or ctx.forward_passes // (repeats + 1)
        rows.append([name, seconds * 1e3, n, seconds / (n * floor), first / seconds])

    run(
        f"Predict, batch {floor_batch} (per image)",
        lambda: model.predict(batch),
        lambda: floor_batch,
    )
    rows[-1][1] = float(rows[-1][1]) / floor_batch  # type: ignore[arg-type]
    rows[-1][2] = 1

    def explain(method: str, **params: Any) -> Callable[[], Any]:
        spec = get_method(method)
        parsed = params_from_mapping(spec.params_type, params, f"{method}.")
        return lambda: spec.explain(model, fresh(), target, parsed)

    run(
        "regional PD, r = 5", explain("regional_prediction_difference", scales=5, seed=0), lambda: 0
    )
    heatmap = np.random.default_rng(3).random((size, size)).astype(np.float32)
    steps, morf_repeats = (20, 2) if quick else (100, 10)
    morf = MorfParams(window=max(1, size // 24), steps=steps, repeats=morf_repeats, seed=0)
    run(
        f"MoRF, L = {steps}, {morf_repeats} repeats",
        lambda: region_perturbation(model, image, heatmap, 0, morf),
        lambda: 0,
    )
    whitebox = "torch" in model.backends
    if whitebox:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        run(
            "LRP ε+flat (forward+backward)",
            explain("lrp", composite="epsilon_plus_flat"),
            lambda: 1,
        )
        steps_ig = 10 if quick else 50
        run(
            f"IG-{steps_ig} (forward+backward each)",
            explain("integrated_gradients", steps=steps_ig),
            lambda: steps_ig,
        )
    else:
        device = "-"
    return rows, f"floor {floor * 1e3:.4g} ms/image at batch {floor_batch}; torch on {device}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cpu", action="store_true", help="dry run on the CPU provider")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="", help="torchvision architecture (default resnet50)")
    parser.add_argument(
        "--tensorrt", action="store_true", help="time the methods on TensorRT too (slow builds)"
    )
    args = parser.parse_args()
    import onnxruntime as ort

    if not args.cpu and not any(p in ort.get_available_providers() for p in ACCELERATORS):
        print(
            "no CUDA/TensorRT execution provider in this onnxruntime build: use --cpu for the dry run"
        )
        return 2
    if args.model or not args.cpu:
        arch = args.model or "resnet50"
        size, labels, onnx_path = 224, 1000, torchvision_onnx(arch)
    else:
        arch, size, labels = "demo (shapes)", 64, 5
        onnx_path = REPO / "models" / "shapes" / "1" / "model.onnx"
    providers = (
        ("CPUExecutionProvider",)
        if args.cpu
        else (
            *[p for p in ACCELERATORS if p in ort.get_available_providers()],
            "CPUExecutionProvider",
        )
    )
    rows, ok = agreement(onnx_path, size, args.cpu)
    print_table(
        f"Logits vs the CPU provider ({arch})",
        [
            "provider",
            "session providers",
            "max abs diff ÷ max abs logit",
            "tolerance",
            "same top-1",
            "ok",
        ],
        rows,
    )
    # Segmentation on the GPU too (#19): SLIC on CUDA against scikit-image. The dry run runs the
    # same check and the service's start-up self-check on torch's CPU tensors (64², few counts:
    # the CPU torch path is slow, and agreement is what it checks).
    import segmentation_device as seg

    from xaiserve.imaging import gpu_slic

    seg_device = "cpu" if args.cpu else "cuda"
    seg_size, seg_counts = (64, (4, 16)) if args.cpu else (224, seg.COUNTS)
    seg_rows, seg_ok = seg.check(
        seg.photographs(1 if args.cpu else 3, seg_size), seg_counts, seg_device, 1 if args.cpu else 3
    )
    why = gpu_slic.self_check(seg_device)
    seg_ok &= why is None
    ok &= seg_ok
    print_table(
        f"SLIC: scikit-image (CPU) vs xaiserve.imaging.gpu_slic on {seg_device}, {seg_size}²",
        ["segments", "ARI (min)", "same label", "regions", "CPU ms", f"{seg_device} ms", "speed-up"],
        seg_rows,
    )
    print(
        f"segmentation agreement on {seg_device}: {'ok' if seg_ok else 'FAILED'}; "
        f"start-up self-check: {why or 'passed'}"
    )
    if not args.tensorrt:
        # TensorRT builds an engine per new batch shape (minutes for ResNet-50), and the methods
        # make many shapes: the times are on CUDA unless --tensorrt asks for it.
        providers = tuple(p for p in providers if p != "TensorrtExecutionProvider")
    with tempfile.TemporaryDirectory() as tmp:
        model, warmed = load_model(onnx_path, size, labels, providers, Path(tmp))
        try:
            times, note = method_times(model, size, args.quick, 2 if args.quick else 3)
        finally:
            model.close()
    print_table(
        f"Per image through the service facade on {','.join(model.providers)} ({arch}; {note})",
        ["what", "ms", "forward passes", "÷ forward floor", "first ÷ best"],
        times,
    )
    print(f"{warmed}; first ÷ best: the first call after the load's warm-up (goal ≤ 1.5)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
