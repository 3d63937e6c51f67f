"""Data-set aggregation: means of hand-made per-image results (Samek et al. Eq. 12, Fig. 4)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from xaiserve.errors import InvalidInput
from xaiserve.evaluation.aggregate import DatasetAggregate, ImageEvaluation
from xaiserve.evaluation.complexity import ComplexityResult
from xaiserve.evaluation.convex_hull import ConvexHullResult
from xaiserve.evaluation.localisation import LocalisationResult
from xaiserve.evaluation.morf import MorfResult, aopc


def morf_result(morf: list[float], random: list[float] | None = None) -> MorfResult:
    m = np.array(morf)
    r = None if random is None else np.array(random)
    return MorfResult(
        morf_curve=m,
        lerf_curve=None,
        random_curve=r,
        aopc_morf=aopc(m),
        aopc_lerf=None,
        aopc_random=None if r is None else aopc(r),
        aopc_morf_minus_random=None if r is None else aopc(m) - aopc(r),
        area_between_lerf_morf=None,
        forward_passes=m.size,
        steps=m.size - 1,
        seed=0,
    )


def loc(mu: float, fraction: float, precision: list[float]) -> LocalisationResult:
    p = np.array(precision)
    return LocalisationResult(
        mu=mu,
        mu_weighted=mu / fraction,
        object_fraction=fraction,
        thresholds=np.array([0.0, 0.5, 1.0]),
        precision=p,
        recall=np.ones(3),
        f_measure=2 * p / (p + 1),
    )


def build() -> DatasetAggregate:
    agg = DatasetAggregate()
    agg.add(
        {
            "A": ImageEvaluation(
                morf=morf_result([1, 0.5, 0.2], [1, 0.8, 0.6]),
                localisation=loc(0.9, 0.25, [0.25, 1, 1]),
                complexity=ComplexityResult(png_bytes=100, entropy=1.0),
                convex_hull=ConvexHullResult(area_ratio=0.5, sensitivity=0.01),
            ),
            "B": ImageEvaluation(
                morf=morf_result([1, 0.9, 0.7], [1, 0.8, 0.6]),
                localisation=loc(float("nan"), 0.25, [0.25, 0, 0]),
            ),
        }
    )
    agg.add(
        {
            "A": ImageEvaluation(
                morf=morf_result([0.8, 0.4, 0.4], [0.8, 0.6, 0.5]),
                localisation=loc(0.5, 0.4, [0.5, 0.5, 0]),
                complexity=ComplexityResult(png_bytes=200, entropy=3.0),
                convex_hull=ConvexHullResult(area_ratio=0.3, sensitivity=0.03),
            ),
            "B": ImageEvaluation(morf=morf_result([0.8, 0.7, 0.6])),  # no random curve
        }
    )
    return agg


def test_mean_curves_and_fig4_relative_aopc() -> None:
    """AOPC(L) of [1, .5, .2] is [0, .25, 1.3/3]; of the random [1, .8, .6]: [0, .1, .2];
    image 2: A [0, .2, .8/3], random [0, .1, .5/3]. Relative A = mean([0, .15, .7/3],
    [0, .1, .3/3]) = [0, .125, .5/3]; B = [0, −.05, −.2/3] on both images (image 2 uses A's
    random curve)."""
    agg = build()
    curves = agg.mean_curves()
    np.testing.assert_allclose(curves["A"]["morf"], [0.9, 0.45, 0.3])
    np.testing.assert_allclose(curves["random"]["morf"], [0.9, 0.7, 0.55])
    relative = agg.relative_aopc_curves()
    np.testing.assert_allclose(relative["A"], [0, 0.125, 0.5 / 3])
    np.testing.assert_allclose(relative["B"], [0, -0.05, -0.2 / 3])
    np.testing.assert_allclose(agg.mean_aopc_curves()["random"], [0, 0.1, (0.2 + 0.5 / 3) / 2])


def test_table_rows() -> None:
    agg = build()
    rows = {row["method"]: row for row in agg.to_rows()}
    a, b, r = rows["A"], rows["B"], rows["random"]
    assert a["images"] == 2 and r["images"] == 2
    assert a["aopc_morf"] == pytest.approx((1.3 / 3 + 0.8 / 3) / 2)
    assert a["aopc_morf_sem"] == pytest.approx(abs(1.3 / 3 - 0.8 / 3) / 2)
    assert a["aopc_morf_minus_random"] == pytest.approx(0.5 / 3)
    assert r["aopc_random"] == pytest.approx((0.2 + 0.5 / 3) / 2)
    # μ: 0.9 (25 % object) and 0.5 (40 % object); μ_w = μ / fraction.
    assert a["mu"] == pytest.approx(0.7)
    assert a["mu_weighted"] == pytest.approx((3.6 + 1.25) / 2)
    assert a["mu_le_0.25"] == pytest.approx(0.9)
    assert a["mu_le_0.5"] == pytest.approx(0.7)
    assert math.isnan(float(b["mu"])) and agg.skipped()["B"]["mu"] == 1
    # Mean precision [.375, .75, .5] with recall 1: F = 2P/(P+1), max at P = .75.
    pr = agg.mean_precision_recall()["A"]
    np.testing.assert_allclose(pr["precision"], [0.375, 0.75, 0.5])
    assert a["f_measure_max"] == pytest.approx(np.mean([2 * 1 / 2, 2 * 0.5 / 1.5]))
    assert a["png_bytes"] == 150 and a["entropy"] == 2.0
    assert a["hull_area_ratio"] == pytest.approx(0.4)
    assert a["hull_sensitivity"] == pytest.approx(0.02)
    assert math.isnan(float(b["png_bytes"]))


def test_writers_and_plot(tmp_path: Path) -> None:
    agg = build()
    agg.write_csv(tmp_path / "table.csv")
    with open(tmp_path / "table.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["method"] for row in rows] == ["A", "B", "random"]
    assert float(rows[0]["mu"]) == pytest.approx(0.7)
    assert rows[1]["mu"] == ""
    agg.write_markdown(tmp_path / "table.md")
    lines = (tmp_path / "table.md").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("| method | images | aopc_morf |")
    assert lines[2].startswith("| A | 2 | 0.35 |")
    assert len(lines) == 5
    agg.plot(tmp_path / "aopc.png")
    data = (tmp_path / "aopc.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_curves_of_different_lengths_are_refused() -> None:
    agg = DatasetAggregate()
    agg.add({"A": ImageEvaluation(morf=morf_result([1, 0.5]))})
    with pytest.raises(InvalidInput, match="same size and steps"):
        agg.add({"A": ImageEvaluation(morf=morf_result([1, 0.5, 0.2]))})
    with pytest.raises(InvalidInput, match="reserved"):
        agg.add({"random": ImageEvaluation()})
