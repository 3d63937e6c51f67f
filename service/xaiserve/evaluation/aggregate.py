"""Data-set aggregation of per-image evaluations: the ``⟨·⟩_{p(x)}`` of Samek et al. Eq. 12.

:class:`DatasetAggregate` consumes, image by image, ``method name → ImageEvaluation`` and keeps
running sums only (memory is independent of the number of images). It produces

* mean perturbation curves ``⟨f(x^(k))⟩`` per method (MoRF, LeRF) and for the random ordering;
* mean AOPC as a function of ``L`` and, as in Samek et al. Fig. 4, the curve
  ``⟨AOPC_method(L) − AOPC_random(L)⟩`` (each image's method curve minus the same image's random
  curve; when several methods of one image carry a random curve they are averaged — with one seed
  they are identical, since the random orderings and draws do not depend on the heatmap);
* mean ``μ``, ``μ_w`` and ``μ`` over objects covering at most 25 % / 50 % of the image
  (Kohlbrenner et al. Table 1: ``μ_{≤0.25}``, ``μ_{≤0.5}``), mean precision/recall/F curves
  (Seo et al. Fig. 5), mean PNG size and entropy (Samek et al. Fig. 5), mean RC/RS;
* ``to_rows()``, ``write_csv``, ``write_markdown`` and ``plot`` (matplotlib, Agg canvas).

NaN figures (e.g. ``μ`` of a heatmap without positive relevance) are skipped and counted.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xaiserve.errors import InvalidInput
from xaiserve.evaluation.complexity import ComplexityResult
from xaiserve.evaluation.convex_hull import ConvexHullResult
from xaiserve.evaluation.localisation import LocalisationResult
from xaiserve.evaluation.morf import MorfResult, aopc_curve

RANDOM = "random"
"""Row name of the random-ordering baseline."""

SIZE_LIMITS: tuple[float, ...] = (0.25, 0.5)
"""Object-size classes of Kohlbrenner et al. Table 1 (fraction of the image)."""

COLUMNS: tuple[str, ...] = (
    "method",
    "images",
    "aopc_morf",
    "aopc_morf_sem",
    "aopc_lerf",
    "aopc_random",
    "aopc_morf_minus_random",
    "area_between_lerf_morf",
    "mu",
    "mu_weighted",
    "mu_le_0.25",
    "mu_le_0.5",
    "f_measure_max",
    "png_bytes",
    "entropy",
    "hull_area_ratio",
    "hull_sensitivity",
)


@dataclass(frozen=True)
class ImageEvaluation:
    """One method's figures on one image; every part is optional."""

    morf: MorfResult | None = None
    localisation: LocalisationResult | None = None
    complexity: ComplexityResult | None = None
    convex_hull: ConvexHullResult | None = None


@dataclass
class RunningMean:
    """Welford's running mean and variance of a scalar; NaN/None values are counted, not used."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    skipped: int = 0

    def add(self, value: float | None) -> None:
        if value is None or not math.isfinite(value):
            self.skipped += 1
            return
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)

    @property
    def value(self) -> float:
        return self.mean if self.count else float("nan")

    @property
    def sem(self) -> float:
        """Standard error of the mean (NaN below two values)."""
        if self.count < 2:
            return float("nan")
        return math.sqrt(self.m2 / (self.count - 1) / self.count)


@dataclass
class RunningCurve:
    """Running mean of equal-length curves."""

    total: np.ndarray | None = None
    count: int = 0

    def add(self, curve: np.ndarray, what: str) -> None:
        c = np.asarray(curve, dtype=np.float64)
        if self.total is None:
            self.total = np.zeros_like(c)
        elif self.total.shape != c.shape:
            raise InvalidInput(
                f"{what} has {c.size} points but earlier images had {self.total.size}; "
                "evaluate every image of a data set at the same size and steps"
            )
        self.total += c
        self.count += 1

    @property
    def mean(self) -> np.ndarray | None:
        return None if self.total is None else self.total / self.count


@dataclass
class _MethodStats:
    images: int = 0
    scalars: dict[str, RunningMean] = field(default_factory=dict)
    curves: dict[str, RunningCurve] = field(default_factory=dict)
    thresholds: np.ndarray | None = None

    def scalar(self, name: str) -> RunningMean:
        return self.scalars.setdefault(name, RunningMean())

    def curve(self, name: str) -> RunningCurve:
        return self.curves.setdefault(name, RunningCurve())


class DatasetAggregate:
    """Running data-set means per method; see the module docstring."""

    def __init__(self, size_limits: Sequence[float] = SIZE_LIMITS) -> None:
        self.size_limits = tuple(size_limits)
        self.images = 0
        self._methods: dict[str, _MethodStats] = {}
        self._random = _MethodStats()

    @property
    def methods(self) -> list[str]:
        return list(self._methods)

    def add(self, results: Mapping[str, ImageEvaluation]) -> None:
        """Add one image's evaluations, keyed by method name."""
        if RANDOM in results:
            raise InvalidInput(f"method name {RANDOM!r} is reserved for the random baseline")
        self.images += 1
        randoms = [r.morf.random_curve for r in results.values() if r.morf is not None]
        present = [c for c in randoms if c is not None]
        image_random = np.mean(present, axis=0) if present else None
        if image_random is not None:
            self._random.images += 1
            self._random.curve("morf").add(image_random, "random curve")
            self._random.scalar("aopc_random").add(float(aopc_curve(image_random)[-1]))
        for name, result in results.items():
            self._add_method(self._methods.setdefault(name, _MethodStats()), result, image_random)

    def _add_method(
        self, stats: _MethodStats, result: ImageEvaluation, image_random: np.ndarray | None
    ) -> None:
        stats.images += 1
        m = result.morf
        if m is not None:
            stats.curve("morf").add(m.morf_curve, "MoRF curve")
            stats.scalar("aopc_morf").add(m.aopc_morf)
            if m.lerf_curve is not None:
                stats.curve("lerf").add(m.lerf_curve, "LeRF curve")
            stats.scalar("aopc_lerf").add(m.aopc_lerf)
            stats.scalar("area_between_lerf_morf").add(m.area_between_lerf_morf)
            if image_random is not None:
                relative = aopc_curve(m.morf_curve) - aopc_curve(image_random)
                stats.curve("relative_aopc").add(relative, "MoRF curve")
                stats.scalar("aopc_morf_minus_random").add(float(relative[-1]))
                stats.scalar("aopc_random").add(float(aopc_curve(image_random)[-1]))
        loc = result.localisation
        if loc is not None:
            stats.scalar("mu").add(loc.mu)
            stats.scalar("mu_weighted").add(loc.mu_weighted)
            for limit in self.size_limits:
                if loc.object_fraction <= limit:
                    stats.scalar(f"mu_le_{limit:g}").add(loc.mu)
            if stats.thresholds is None:
                stats.thresholds = np.asarray(loc.thresholds, dtype=np.float64)
            elif not np.array_equal(stats.thresholds, loc.thresholds):
                raise InvalidInput("localisation thresholds differ between images of a data set")
            stats.curve("precision").add(loc.precision, "precision curve")
            stats.curve("recall").add(loc.recall, "recall curve")
            stats.curve("f_measure").add(loc.f_measure, "F-measure curve")
        if result.complexity is not None:
            stats.scalar("png_bytes").add(float(result.complexity.png_bytes))
            stats.scalar("entropy").add(result.complexity.entropy)
        if result.convex_hull is not None:
            stats.scalar("hull_area_ratio").add(result.convex_hull.area_ratio)
            stats.scalar("hull_sensitivity").add(result.convex_hull.sensitivity)

    # ----------------------------------------------------------------------------------- curves

    def mean_curves(self) -> dict[str, dict[str, np.ndarray]]:
        """``⟨f(x^(k))⟩`` per method (keys ``morf``, ``lerf``) and for ``random`` (key ``morf``)."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for name, stats in [*self._methods.items(), (RANDOM, self._random)]:
            curves = {k: c.mean for k in ("morf", "lerf") if (c := stats.curves.get(k))}
            out[name] = {k: v for k, v in curves.items() if v is not None}
        return out

    def mean_aopc_curves(self) -> dict[str, np.ndarray]:
        """``⟨AOPC(L)⟩`` for ``L = 0..steps`` per method's MoRF curve and for ``random``."""
        return {
            name: aopc_curve(c["morf"]) for name, c in self.mean_curves().items() if "morf" in c
        }

    def relative_aopc_curves(self) -> dict[str, np.ndarray]:
        """``⟨AOPC_method(L) − AOPC_random(L)⟩`` per method: Samek et al. Fig. 4."""
        out = {}
        for name, stats in self._methods.items():
            curve = stats.curves.get("relative_aopc")
            if curve is not None and curve.mean is not None:
                out[name] = curve.mean
        return out

    def mean_precision_recall(self) -> dict[str, dict[str, np.ndarray]]:
        """Mean ``thresholds``, ``precision``, ``recall``, ``f_measure`` per method (Seo Fig. 5)."""
        out = {}
        for name, stats in self._methods.items():
            if stats.thresholds is None:
                continue
            curves = {k: stats.curves[k].mean for k in ("precision", "recall", "f_measure")}
            out[name] = {
                "thresholds": stats.thresholds,
                **{k: v for k, v in curves.items() if v is not None},
            }
        return out

    # ------------------------------------------------------------------------------------ table

    def to_rows(self) -> list[dict[str, str | int | float]]:
        """One row per method (in the order first seen) and a ``random`` row; columns are
        :data:`COLUMNS` (``mu_le_*`` follow ``size_limits``); NaN where nothing was measured."""
        nan = float("nan")
        rows: list[dict[str, str | int | float]] = []
        for name, stats in self._methods.items():
            row: dict[str, str | int | float] = {"method": name, "images": stats.images}
            for column in self.columns()[2:]:
                if column == "aopc_morf_sem":
                    row[column] = stats.scalar("aopc_morf").sem
                elif column == "f_measure_max":
                    f = stats.curves.get("f_measure")
                    row[column] = float(np.max(f.mean)) if f and f.mean is not None else nan
                else:
                    row[column] = stats.scalars[column].value if column in stats.scalars else nan
            rows.append(row)
        random_row: dict[str, str | int | float] = {c: nan for c in self.columns()}
        aopc_random = self._random.scalar("aopc_random")
        random_row.update(
            method=RANDOM,
            images=self._random.images,
            aopc_morf=aopc_random.value,
            aopc_morf_sem=aopc_random.sem,
            aopc_random=aopc_random.value,
            aopc_morf_minus_random=0.0 if self._random.images else nan,
        )
        rows.append(random_row)
        return rows

    def columns(self) -> list[str]:
        limits = [f"mu_le_{limit:g}" for limit in self.size_limits]
        base = [c for c in COLUMNS if not c.startswith("mu_le_")]
        i = base.index("mu_weighted") + 1
        return [*base[:i], *limits, *base[i:]]

    def skipped(self) -> dict[str, dict[str, int]]:
        """Per method, how many values of each figure were NaN/missing and left out."""
        return {
            name: {k: v.skipped for k, v in stats.scalars.items() if v.skipped}
            for name, stats in self._methods.items()
        }

    def write_csv(self, path: str | Path) -> None:
        """The table as CSV (full precision; empty cells where nothing was measured)."""
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns())
            writer.writeheader()
            for row in self.to_rows():
                writer.writerow({k: _csv_cell(v) for k, v in row.items()})

    def write_markdown(self, path: str | Path) -> None:
        """The table as a Markdown pipe table (4 significant digits; ``–`` where missing)."""
        columns = self.columns()
        lines = [
            "| " + " | ".join(columns) + " |",
            "|" + "|".join("---" if c == "method" else "---:" for c in columns) + "|",
        ]
        for row in self.to_rows():
            lines.append("| " + " | ".join(_md_cell(row[c]) for c in columns) + " |")
        Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")

    def plot(self, path: str | Path) -> None:
        """PNG: left, ``AOPC(L) − AOPC_random(L)`` per method (Samek et al. Fig. 4); right, the
        mean MoRF curves ``⟨f(x^(k))⟩`` with the random ordering dashed."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(10, 4), layout="constrained")
        FigureCanvasAgg(figure)
        left, right = figure.subplots(1, 2)
        for name, curve in self.relative_aopc_curves().items():
            left.plot(np.arange(curve.size), curve, label=name)
        left.axhline(0.0, color="black", linewidth=0.8, linestyle="--", label=RANDOM)
        left.set_xlabel("perturbation steps L")
        left.set_ylabel("AOPC − AOPC(random)")
        left.set_title(f"AOPC relative to random ({self.images} images)")
        for name, curves in self.mean_curves().items():
            if "morf" in curves:
                style = "--" if name == RANDOM else "-"
                right.plot(np.arange(curves["morf"].size), curves["morf"], style, label=name)
        right.set_xlabel("perturbation step k")
        right.set_ylabel("mean f(x^(k))")
        right.set_title("MoRF perturbation curves")
        for axes in (left, right):
            axes.grid(alpha=0.3)
            axes.legend(fontsize="small")
        figure.savefig(str(path), format="png", dpi=100)


def _csv_cell(value: str | int | float) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def _md_cell(value: str | int | float) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return str(value)
