"""GAD benchmark (Mazini Rodrigues et al.) on the demo shapes model, CPU.

Usage::

    .venv/bin/python bench/gad.py            # 400 fitting images, 3 epochs, 10 images
    .venv/bin/python bench/gad.py --quick    # 100 fitting images, 2 epochs, 4 images
    .venv/bin/python bench/gad.py --table 100 --keep 0.5 0.2
                                  # also RC/RS (Tables 1–2) on the first 100 held-out images

Figures:

- Fit: seconds per epoch per 1000 images of the support-model regression (Section 4.2), one α,
  per batch size (median epoch; the time between two epoch progress reports).
- Explain: seconds per ``gad`` request ÷ (seconds of the base method on the original model ×
  number of models, 1 + support models). 1.0 means GAD costs exactly its base-method runs; the
  rest is the intersection, the convex hulls and the three occlusions of RS (Eq. 2).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import MODELS, load_model, print_table
from xaiserve.demo import shapes
from xaiserve.jobs.gad_fitting import GadFitConfig, fit_support_set
from xaiserve.methods.base import Target, get_method
from xaiserve.methods.gad import GadParams, base_params, gad
from xaiserve.models.model import Model
from xaiserve.models.support_models import load_support_set

BASES = (
    "saliency",
    "deconvolution",
    "gradient_times_input",
    "guided_backprop",
    "integrated_gradients",
)


class EpochClock:
    """Records when each epoch's progress report arrives (the job's ProgressHandle)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def update(self, **kwargs: Any) -> None:
        if kwargs.get("progress"):
            self.stamps.append(time.perf_counter())
        elif kwargs.get("done") == 0:
            self.stamps = [time.perf_counter()]

    def check_cancelled(self) -> None:
        return None


def bench_fit(model: Model, n: int, epochs: int, batch_sizes: list[int]) -> list[list[object]]:
    data = shapes.generate(n * 5 // 2, shapes.TRAIN_SEED)
    rows: list[list[object]] = []
    for bs in batch_sizes:
        clock = EpochClock()
        cfg = GadFitConfig(0, 1, alphas=(2.0,), epochs=epochs, batch_size=bs)
        record = fit_support_set(model, data.images.astype(np.float32), data.labels, cfg, clock)
        epoch_s = statistics.median(np.diff(clock.stamps))
        rows.append([bs, record.images, epoch_s, epoch_s / record.images * 1000])
    return rows


def bench_explain(model: Model, set_id: str, images: int, repeats: int) -> list[list[object]]:
    ho = shapes.heldout(images * 3)
    picks = [i for i in range(len(ho)) if ho.labels[i] in (0, 1)][:images]
    n_models = 1 + len(load_support_set(model, set_id).supports)
    rows: list[list[object]] = []
    for base in BASES:
        params = GadParams(support_set=set_id, base_method=base, steps=50)  # type: ignore[arg-type]
        spec, bp = get_method(base), base_params(params)
        base_s, gad_s = [], []
        for i in picks:
            image, target = ho.images[i].astype(np.float32), Target(int(ho.labels[i]))
            for _ in range(repeats):  # interleaved: base, then gad, same image
                t = time.perf_counter()
                spec.explain(model, image, target, bp)
                base_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                gad(model, image, target, params)
                gad_s.append(time.perf_counter() - t)
        b, g = statistics.median(base_s), statistics.median(gad_s)
        rows.append([base, n_models, b * 1000, g * 1000, g / (b * n_models)])
    return rows


def rc_rs_table(model: Model, set_id: str, n: int, keep: float) -> list[list[object]]:
    ho = shapes.heldout(n)
    picks = [i for i in range(n) if ho.labels[i] in (0, 1)]
    rows: list[list[object]] = []
    for base in BASES:
        rc, rs, orig, sup = [], [], [], []
        for i in picks:
            e = gad(
                model,
                ho.images[i].astype(np.float32),
                Target(int(ho.labels[i])),
                GadParams(support_set=set_id, base_method=base, steps=16, keep_fraction=keep),  # type: ignore[arg-type]
            )
            rc.append(e.values["rc"])
            rs.append(e.values.get("rs", 0.0))
            orig.append(e.values["rs_original"])
            sup.append(e.values.get("rs_supplementary", np.nan))
        rc_a, rs_a, orig_a = np.array(rc), np.array(rs), np.array(orig)
        rows.append(
            [
                base,
                f"{int((rc_a < 1).sum())}/{len(picks)}",
                float(rc_a.mean()),
                float(rs_a.mean() * 100),
                float(orig_a.mean() * 100),
                float(np.nanmean(sup) * 100),
                f"{int((rs_a > orig_a).sum())}/{len(picks)}",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", type=int, default=0, help="held-out images for RC/RS")
    parser.add_argument("--keep", type=float, nargs="+", default=[0.5], help="keep fractions")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n, epochs, images, repeats = (100, 2, 4, 2) if args.quick else (400, 3, 10, 3)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        shutil.copytree(MODELS, root)  # fitting writes support sets next to the model
        model = load_model(root, "shapes")
        try:
            fit_rows = bench_fit(model, n, epochs, [8, 32] if args.quick else [8, 32, 128])
            print_table(
                f"GAD fit, demo model, CPU, {args.threads} thread(s), one α",
                ["batch", "images", "s / epoch", "s / epoch / 1000 images"],
                fit_rows,
            )
            cfg = GadFitConfig(0, 1, epochs=epochs, batch_size=8, learning_rate=1e-4)
            data = shapes.generate(n * 5 // 2, shapes.TRAIN_SEED)
            record = fit_support_set(
                model, data.images.astype(np.float32), data.labels, cfg, EpochClock()
            )
            print(f"\nsupport set {record.id}: final MSE per α {np.round(record.final_loss, 3)}")
            print_table(
                "GAD explanation overhead (median ms per image, IG 50 steps)",
                ["base", "models", "base ms", "gad ms", "gad / (base × models)"],
                bench_explain(model, record.id, images, repeats),
            )
            for keep in args.keep if args.table else []:
                print_table(
                    f"RC/RS on held-out images of classes 0/1 (first {args.table}), "
                    f"keep_fraction {keep:g}, RS ×10²",
                    ["base", "RC<1", "mean RC", "RS(GAD)", "RS(orig)", "RS(sup)", "GAD>orig"],
                    rc_rs_table(model, record.id, args.table, keep),
                )
        finally:
            model.close()


if __name__ == "__main__":
    main()
