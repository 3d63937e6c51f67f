"""Evidence functions g of the prediction difference (Seo et al., Algorithm 1, line 4).

The prediction difference compares ``p(c|x)`` with ``p(c|x∖i)``, the prediction with feature
(pixel, patch or region) ``i`` excluded. Seo et al. leave ``g`` open and refer to Robnik-Šikonja
& Kononenko (2008) for three choices, all implemented here and selectable by name:

- ``"difference"``: ``g(a, b) = a − b`` (Seo et al., Sec. 3.1, "the simplest function").
- ``"information_difference"``: ``infDiff = log2 p(c|x) − log2 p(c|x∖i)``
  (Robnik-Šikonja & Kononenko, Sec. 2, "information difference").
- ``"weight_of_evidence"``: ``WE = log2 odds(c|x) − log2 odds(c|x∖i)`` with
  ``odds(z) = p(z) / (1 − p(z))`` (Robnik-Šikonja & Kononenko, Sec. 2, "weight of evidence";
  the measure Zintgraf et al. 2017 use, their Sec. 2).

The two logarithmic functions use the Laplace correction of Robnik-Šikonja & Kononenko as
Zintgraf et al. implement it: ``p ← (p·N + 1) / (N + K)`` with ``N`` the number of training
instances and ``K`` the number of classes, so that probabilities of exactly 0 or 1
give finite evidence. Zintgraf et al. use ``N = 100000`` for ImageNet; that is our default.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from xaiserve.errors import InvalidInput

Evidence = Literal["difference", "weight_of_evidence", "information_difference"]
EVIDENCES: tuple[str, ...] = get_args(Evidence)

DEFAULT_LAPLACE_TRAIN_SIZE = 100_000
"""``N`` of the Laplace correction (Zintgraf et al.'s ImageNet value)."""


def laplace_correction(p: np.ndarray, num_classes: int, train_size: int) -> np.ndarray:
    """``(p·N + 1) / (N + K)``: Robnik-Šikonja & Kononenko's Laplace correction."""
    return (np.asarray(p, dtype=np.float64) * train_size + 1.0) / (train_size + num_classes)


def log2_odds(p: np.ndarray) -> np.ndarray:
    """``log2(p / (1 − p))`` for ``0 < p < 1``."""
    p = np.asarray(p, dtype=np.float64)
    return np.log2(p) - np.log2(1.0 - p)


def evidence(
    name: Evidence,
    p: np.ndarray | float,
    p_without: np.ndarray | float,
    *,
    num_classes: int,
    train_size: int = DEFAULT_LAPLACE_TRAIN_SIZE,
) -> np.ndarray:
    """``g(p(c|x), p(c|x∖i))`` elementwise (broadcasting), as float64.

    ``num_classes`` and ``train_size`` set the Laplace correction of the logarithmic functions
    (ignored by ``"difference"``).
    """
    a = np.asarray(p, dtype=np.float64)
    b = np.asarray(p_without, dtype=np.float64)
    if name == "difference":
        return np.asarray(a - b)
    if train_size < 1:
        raise InvalidInput("laplace_train_size must be at least 1")
    a_l = laplace_correction(a, num_classes, train_size)
    b_l = laplace_correction(b, num_classes, train_size)
    if name == "weight_of_evidence":
        return np.asarray(log2_odds(a_l) - log2_odds(b_l))
    if name == "information_difference":
        return np.asarray(np.log2(a_l) - np.log2(b_l))
    raise InvalidInput(f"evidence {name!r} is unknown; choose one of {', '.join(EVIDENCES)}")
