"""Heatmap evaluation: plain functions returning plain numbers.

* :mod:`~xaiserve.evaluation.morf` — region perturbation (MoRF/LeRF/random) and AOPC
  (Samek et al., Eq. 9–12).
* :mod:`~xaiserve.evaluation.localisation` — inside-total relevance ratios μ, μ_w (Kohlbrenner et
  al., Eq. 2) and precision/recall/F-measure over thresholds (Seo et al., Fig. 5).
* :mod:`~xaiserve.evaluation.convex_hull` — convex hull of the most important pixels, RC and RS
  (Mazini Rodrigues et al., Eq. 1–2).
* :mod:`~xaiserve.evaluation.complexity` — PNG size and entropy of a heatmap (Samek et al., Fig. 5).
* :mod:`~xaiserve.evaluation.aggregate` — data-set means, tables and the Fig. 4 plot.
"""

from xaiserve.evaluation.morf import (
    MorfParams,
    MorfResult,
    aopc,
    aopc_curve,
    morf_cost,
    region_perturbation,
)

__all__ = [
    "MorfParams",
    "MorfResult",
    "aopc",
    "aopc_curve",
    "morf_cost",
    "region_perturbation",
]
