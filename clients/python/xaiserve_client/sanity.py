"""The model-parameter randomisation test as the client sees it (Adebayo et al., "Sanity Checks
for Saliency Maps", NeurIPS 2018).

The server re-initialises the model's weighted layers from the logits down, one stop at a
time, explains the image again on each randomised variant and compares each map with the
original one. :class:`Randomisation` holds those figures for one method (``Score`` with
``randomisation=``, or averaged over a data set); :func:`randomisation_figure` draws the curves
of several methods like the paper's Fig. 2; :func:`model_sensitivity` turns the summary
similarity into the "model sensitivity" column of ``xaiserve compare --sanity``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS = ("spearman_abs", "spearman_signed", "ssim", "hog")
METRIC_LABELS = {
    "spearman_abs": "Spearman ρ of |maps|",
    "spearman_signed": "Spearman ρ (signed)",
    "ssim": "SSIM",
    "hog": "HOG similarity",
}


@dataclass(frozen=True)
class Randomisation:
    """One method's similarity to its original map after each randomisation stop.

    ``depths[i]`` weighted layers (counted from the logits) were randomised at stop ``i``;
    ``layers[i]`` names the deepest of them. ``summary`` is ``spearman_abs`` at the deepest
    stop (full randomisation by default): **low is good** — the map depends on the weights.
    """

    method: str
    depths: tuple[int, ...]
    layers: tuple[str, ...]
    spearman_abs: tuple[float, ...]
    spearman_signed: tuple[float, ...]
    ssim: tuple[float, ...]
    hog: tuple[float, ...]
    summary: float
    total_layers: int
    full_randomisation: bool
    seed: int = 0
    images: int = 1
    distribution: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def model_sensitivity(self) -> float:
        return model_sensitivity(self.summary)

    @classmethod
    def from_proto(cls, message: Any) -> Randomisation:
        points = list(message.points)
        return cls(
            method=message.method,
            depths=tuple(int(p.depth) for p in points),
            layers=tuple(p.layer for p in points),
            spearman_abs=tuple(float(p.spearman_abs) for p in points),
            spearman_signed=tuple(float(p.spearman_signed) for p in points),
            ssim=tuple(float(p.ssim) for p in points),
            hog=tuple(float(p.hog) for p in points),
            summary=float(message.summary),
            total_layers=int(message.total_layers),
            full_randomisation=bool(message.full_randomisation),
            seed=int(message.seed),
            images=int(message.images),
            distribution=message.distribution,
            notes=tuple(message.notes),
        )

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], seed: int = 0, distribution: str = ""
    ) -> Randomisation:
        """From a data-set evaluation result's ``randomisation.methods[name]`` entry."""

        def floats(key: str) -> tuple[float, ...]:
            return tuple(math.nan if v is None else float(v) for v in data.get(key, ()))

        return cls(
            method=str(data["method"]),
            depths=tuple(int(d) for d in data.get("depths", ())),
            layers=tuple(str(x) for x in data.get("layers", ())),
            spearman_abs=floats("spearman_abs"),
            spearman_signed=floats("spearman_signed"),
            ssim=floats("ssim"),
            hog=floats("hog"),
            summary=math.nan if data.get("summary") is None else float(data["summary"]),
            total_layers=int(data.get("total_layers", 0)),
            full_randomisation=bool(data.get("full_randomisation", False)),
            seed=seed,
            images=int(data.get("images", 1)),
            distribution=distribution,
            notes=tuple(str(n) for n in data.get("notes", ())),
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures (the ``randomisation`` entries of ``compare.json``)."""
        return {
            "method": self.method,
            "depths": list(self.depths),
            "layers": list(self.layers),
            **{m: list(getattr(self, m)) for m in METRICS},
            "summary": self.summary,
            "model_sensitivity": self.model_sensitivity,
            "total_layers": self.total_layers,
            "full_randomisation": self.full_randomisation,
            "seed": self.seed,
            "images": self.images,
            "distribution": self.distribution,
            "notes": list(self.notes),
        }


def model_sensitivity(summary: float) -> float:
    """``1 − ρ`` with ρ the Spearman correlation of |maps| at full randomisation: 0 when the
    map does not change at all when the weights are randomised (it ignores the model), about 1
    when the randomised map is unrelated to the original one (higher is better)."""
    return math.nan if summary is None or math.isnan(summary) else 1.0 - float(summary)


def randomisation_figure(
    curves: Mapping[str, Randomisation], metric: str = "spearman_abs"
) -> Figure:
    """Similarity against randomised depth, one line per method (Adebayo et al. Fig. 2): the
    x axis starts at the original model (similarity 1) and walks down from the logits."""
    from xaiserve_client.images import require_plot

    require_plot("the randomisation figure")
    from matplotlib.figure import Figure

    if metric not in METRICS:
        raise ValueError(f"metric {metric!r}: choose one of {', '.join(METRICS)}")
    fig = Figure(figsize=(7.5, 4.5), dpi=100)
    ax = fig.subplots()
    labels: tuple[str, ...] = ()
    for name, curve in curves.items():
        values = [1.0, *getattr(curve, metric)]
        ax.plot(range(len(values)), values, marker="o", ms=3, label=name)
        if len(curve.layers) > len(labels):
            labels = curve.layers
    ax.set_xticks(range(len(labels) + 1))
    ax.set_xticklabels(
        ["original", *(_short(x) for x in labels)], rotation=60, ha="right", fontsize=7
    )
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("cascading randomisation, from the logits down")
    ax.set_ylabel(METRIC_LABELS[metric])
    ax.set_title("model-parameter randomisation (Adebayo et al. 2018)", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def _short(layer: str, width: int = 28) -> str:
    """A layer label short enough for a tick: the end of its name keeps the op type."""
    return layer if len(layer) <= width else "…" + layer[-(width - 1) :]
