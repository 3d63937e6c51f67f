"""Every method side by side on one image, each scored — the figure people choose methods by.

``compare(client, image)`` asks the server for each method's heatmap, scores each with
MoRF/AOPC (and μ when a ground-truth mask is given), and returns a :class:`Comparison` that
renders a matplotlib figure (``.figure()``), a PNG grid (``.save_png``), a self-contained HTML
page (``.to_html``) and a JSON file of all numbers (``.save_json``). Signed maps (LRP,
gradient×input, IG) use a diverging colormap centred at zero; unsigned ones a sequential one.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from xaiserve_client.errors import XaiserveError
from xaiserve_client.images import (
    ImageInput,
    fit_to_grid,
    load_mask,
    load_rgb,
    plotting_available,
    require_plot,
)
from xaiserve_client.sanity import Randomisation, randomisation_figure
from xaiserve_client.types import ClassScore, Explanation, ScoreResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from xaiserve_client.client import ExplainClient

#: Methods left out of the default set: ``gad`` needs a fitted support set.
NOT_BY_DEFAULT = frozenset({"gad"})

#: Per-method parameters for a comparison run (cheaper than the papers' defaults where those
#: would dominate the run time); override with ``method_params``.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "pixelwise_prediction_difference": {"stride": 4},
    "regional_prediction_difference": {"return_scale_maps": True},
    "smoothgrad": {"samples": 16},
}

SEQUENTIAL_CMAP = "inferno"
DIVERGING_CMAP = "RdBu_r"


@dataclass
class MethodResult:
    """One method's heatmap, its score, its wall time, or the error the server gave."""

    method: str
    explanation: Explanation | None
    score: ScoreResult | None
    seconds: float
    error: str = ""

    def figures(self) -> dict[str, Any]:
        """The numbers of this panel, JSON-ready."""
        out: dict[str, Any] = {"method": self.method, "seconds": self.seconds}
        if self.error:
            out["error"] = self.error
        e = self.explanation
        if e is not None:
            out.update(
                signed=e.signed,
                target=e.target.label,
                target_index=e.target.index,
                target_probability=e.target.probability,
                forward_passes=e.forward_passes,
                server_seconds=e.timings.total,
                values=dict(e.values),
                parameters=e.provenance.get("parameters", {}),
                seed=e.provenance.get("seed"),
            )
        s = self.score
        if s is not None:
            out.update(
                aopc_morf=s.aopc_morf,
                aopc_random=s.aopc_random,
                aopc_morf_minus_random=s.aopc_morf_minus_random,
                aopc_lerf=s.aopc_lerf,
                area_between_lerf_morf=s.area_between_lerf_morf,
                morf_curve=s.morf_curve.tolist(),
                random_curve=s.random_curve.tolist(),
            )
            if s.localisation is not None:
                out.update(mu=s.localisation.mu, mu_weighted=s.localisation.mu_weighted)
            if s.complexity is not None:
                out.update(complexity=dict(s.complexity))
            if s.randomisation is not None:
                out.update(
                    randomisation_summary=s.randomisation.summary,
                    model_sensitivity=s.randomisation.model_sensitivity,
                )
        return out


@dataclass
class Comparison:
    """The result of :func:`compare`."""

    image: NDArray[np.uint8]  # (H, W, 3) on the model's input grid
    model: str
    version: str
    target: ClassScore | None
    contrast: ClassScore | None
    results: list[MethodResult]
    mask: NDArray[np.bool_] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def succeeded(self) -> list[MethodResult]:
        return [r for r in self.results if r.explanation is not None]

    @property
    def randomisation(self) -> dict[str, Randomisation]:
        """Each method's randomisation test (``compare(..., sanity=True)``), by method."""
        return {
            r.method: r.score.randomisation
            for r in self.results
            if r.score is not None and r.score.randomisation is not None
        }

    # -- numbers ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        sanity = self.randomisation
        return {
            "model": self.model,
            "version": self.version,
            "target": None if self.target is None else self.target.label,
            "target_index": None if self.target is None else self.target.index,
            "target_probability": None if self.target is None else self.target.probability,
            "contrast": None if self.contrast is None else self.contrast.label,
            "mask": self.mask is not None,
            "methods": [r.figures() for r in self.results],
            **({"randomisation": {k: v.as_dict() for k, v in sanity.items()}} if sanity else {}),
        }

    def save_json(self, path: str | Path) -> Path:
        out = Path(path)
        out.write_text(json.dumps(_finite(self.to_dict()), indent=2), encoding="utf-8")
        return out

    # -- figure ----------------------------------------------------------------------------
    def figure(self, columns: int = 4, panel_inches: float = 3.0) -> Figure:
        """A grid: the input, then one overlay per method with its name, target and score,
        AOPC and time, each with a colour bar."""
        require_plot("Comparison.figure")
        from matplotlib.figure import Figure

        panels = 1 + len(self.succeeded)
        cols = max(1, min(columns, panels))
        rows = math.ceil(panels / cols)
        fig = Figure(figsize=(cols * panel_inches * 1.25, rows * panel_inches * 1.15), dpi=100)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax in axes:
            ax.axis("off")
        axes[0].imshow(self.image)
        title = "input"
        if self.target is not None:
            title += f"\n{self.target.label} ({self.target.probability:.3f})"
        axes[0].set_title(title, fontsize=9)
        for ax, result in zip(axes[1:], self.succeeded, strict=False):
            _panel(fig, ax, self.image, result)
        fig.suptitle(f"{self.model} v{self.version}", fontsize=11)
        fig.tight_layout()
        return fig

    def randomisation_figure(self, metric: str = "spearman_abs") -> Figure:
        """Similarity against randomised depth, one line per method (Adebayo et al. Fig. 2)."""
        require_plot("Comparison.randomisation_figure")
        if not self.randomisation:
            raise ValueError("no randomisation test in this comparison: compare(..., sanity=True)")
        return randomisation_figure(self.randomisation, metric)

    def save_png(self, path: str | Path, dpi: int = 100) -> Path:
        out = Path(path)
        self.figure().savefig(out, dpi=dpi, format="png")
        return out

    # -- HTML ------------------------------------------------------------------------------
    def to_html(self, path: str | Path) -> Path:
        """A self-contained page: the grid, per-scale maps, the contrastive pair and a table."""
        require_plot("Comparison.to_html")
        out = Path(path)
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f"<title>xaiserve comparison: {html.escape(self.model)}</title>",
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
            "th:first-child,td:first-child{text-align:left}img{max-width:100%}</style>",
            "</head>",
            "<body>",
            f"<h1>{html.escape(self.model)} v{html.escape(self.version)}</h1>",
        ]
        if self.target is not None:
            parts.append(
                f"<p>Target: <b>{html.escape(self.target.label)}</b> "
                f"(p = {self.target.probability:.4f})"
                + (
                    f"; contrast: <b>{html.escape(self.contrast.label)}</b>"
                    if self.contrast
                    else ""
                )
                + "</p>"
            )
        parts.append("<h2>Methods side by side</h2>")
        parts.append(_img_tag(_png_of(self.figure()), "comparison grid", "grid"))
        parts.append("<h2>Figures</h2>")
        parts.append(self._table_html())
        if self.randomisation:
            parts.append("<h2>Model-parameter randomisation (Adebayo et al. 2018)</h2>")
            parts.append(
                "<p>Each method explained again on copies of the model whose weighted layers "
                "are re-initialised from the logits down; the similarity (Spearman ρ of |maps|) "
                "to the original map should fall. Model sensitivity = 1 − ρ at full "
                "randomisation: near 0, the map does not depend on the model.</p>"
            )
            parts.append(
                _img_tag(_png_of(self.randomisation_figure()), "randomisation", "randomisation")
            )
        scales = self._scale_maps_html()
        if scales:
            parts.append("<h2>Regional prediction difference per scale</h2>")
            parts.append(scales)
        contrastive = self._contrastive_html()
        if contrastive:
            parts.append("<h2>Contrastive contextual importance</h2>")
            parts.append(contrastive)
        failed = [r for r in self.results if r.error]
        if failed:
            parts.append("<h2>Not shown</h2><ul>")
            parts.extend(
                f"<li>{html.escape(r.method)}: {html.escape(r.error)}</li>" for r in failed
            )
            parts.append("</ul>")
        parts.append("</body>")
        parts.append("</html>")
        out.write_text("\n".join(parts), encoding="utf-8")
        return out

    def _table_html(self) -> str:
        header = [
            "method",
            "signed",
            "target p",
            "AOPC MoRF",
            "AOPC random",
            "MoRF − random",
            "μ",
            "forward passes",
            "seconds",
        ]
        sanity = bool(self.randomisation)
        if sanity:
            header.append("model sensitivity")
        rows = ['<table id="figures">', "<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"]
        for r in self.succeeded:
            f = r.figures()
            cells = [
                html.escape(r.method),
                "yes" if f.get("signed") else "no",
                _fmt(f.get("target_probability")),
                _fmt(f.get("aopc_morf")),
                _fmt(f.get("aopc_random")),
                _fmt(f.get("aopc_morf_minus_random")),
                _fmt(f.get("mu")),
                str(f.get("forward_passes", "")),
                _fmt(r.seconds),
            ]
            if sanity:
                cells.append(_fmt(f.get("model_sensitivity")))
            rows.append(
                f'<tr data-method="{html.escape(r.method)}">'
                + "".join(f"<td>{c}</td>" for c in cells)
                + "</tr>"
            )
        rows.append("</table>")
        return "\n".join(rows)

    def _scale_maps_html(self) -> str:
        result = next(
            (r for r in self.succeeded if r.method == "regional_prediction_difference"), None
        )
        if result is None or result.explanation is None:
            return ""
        maps = {k: v for k, v in result.explanation.maps.items() if k.startswith("scale_")}
        if not maps:
            return ""
        from matplotlib.figure import Figure

        keys = sorted(maps, key=lambda k: int("".join(c for c in k if c.isdigit()) or 0))
        fig = Figure(figsize=(2.4 * len(keys), 2.6), dpi=100)
        axes = fig.subplots(1, len(keys), squeeze=False).ravel()
        for ax, key in zip(axes, keys, strict=True):
            ax.imshow(np.asarray(maps[key], dtype=np.float32), cmap=SEQUENTIAL_CMAP)
            ax.set_title(key.replace("_", " "), fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        return _img_tag(_png_of(fig), "regional prediction difference per scale", "scales")

    def _contrastive_html(self) -> str:
        result = next((r for r in self.succeeded if r.method == "contextual_importance"), None)
        if result is None or result.explanation is None or self.contrast is None:
            return ""
        e = result.explanation
        if "ci_contrast" not in e.maps:
            return ""
        from matplotlib.figure import Figure

        panels = [
            (f"CI {self.target.label if self.target else 'target'}", e.heatmap, False),
            (f"CI {self.contrast.label}", np.asarray(e.maps["ci_contrast"], np.float32), False),
        ]
        if "ci_difference" in e.maps:
            panels.append(("difference", np.asarray(e.maps["ci_difference"], np.float32), True))
        fig = Figure(figsize=(3.0 * len(panels), 3.0), dpi=100)
        axes = fig.subplots(1, len(panels), squeeze=False).ravel()
        for ax, (title, data, signed) in zip(axes, panels, strict=True):
            _show(fig, ax, self.image, data, signed)
            ax.set_title(title, fontsize=9)
        fig.tight_layout()
        return _img_tag(_png_of(fig), "contrastive contextual importance", "contrastive")


def compare(
    client: ExplainClient,
    image: ImageInput,
    model: str | None = None,
    *,
    version: str = "",
    target: int | str | None = None,
    contrast: int | str | None = None,
    methods: Sequence[str] | None = None,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    mask: Any = None,
    morf: Mapping[str, Any] | None = None,
    progress: Any = None,
    sanity: bool = False,
    randomisation: Mapping[str, Any] | None = None,
) -> Comparison:
    """Explain ``image`` with every chosen method (default: all the model supports) and score
    each heatmap with MoRF/AOPC (and μ when ``mask`` is given). ``progress`` is an optional
    callable ``progress(method_name)`` called before each method.

    ``sanity=True`` adds each method's model-parameter randomisation test (Adebayo et al.
    2018): the server scores the method's own map (same parameters and seed) and explains the
    image again on every randomised variant of the model. ``randomisation`` sets its options
    (``stops``, ``seed``). The figures are in ``Comparison.randomisation``, the JSON's
    ``randomisation`` key, the "model sensitivity" column and ``randomisation_figure()``."""
    info = client.get_model(model) if model else client.list_models()[0]
    name = info.name
    ready = next(
        (v for v in info.versions if (not version or v.version == version) and v.ready), None
    )
    if ready is None:
        raise ValueError(f"model {name!r} has no ready version {version!r}")
    chosen = list(methods) if methods else [m for m in ready.methods if m not in NOT_BY_DEFAULT]
    grid = fit_to_grid(load_rgb(image), (ready.input.height, ready.input.width), ready.input.resize)
    mask_arr = None if mask is None else _mask_on_grid(mask, ready.input.height, ready.input.width)
    params = {**DEFAULT_PARAMS, **{k: dict(v) for k, v in (method_params or {}).items()}}
    results: list[MethodResult] = []
    target_score: ClassScore | None = None
    contrast_score: ClassScore | None = None
    for method in chosen:
        if progress is not None:
            progress(method)
        start = time.perf_counter()
        try:
            explanation = client.explain(
                grid,
                method,
                name,
                version=ready.version,
                target=target,
                contrast=contrast,
                params=params.get(method, {}),
            )
        except XaiserveError as exc:
            results.append(
                MethodResult(
                    method,
                    None,
                    None,
                    time.perf_counter() - start,
                    f"{exc.code.name}: {exc.details}",
                )
            )
            continue
        seconds = time.perf_counter() - start
        target_score = target_score or explanation.target
        contrast_score = contrast_score or explanation.contrast
        try:
            if sanity:
                # the server recomputes the same map (same parameters and seed) and runs the
                # method on every randomised variant of the model
                score = client.score(
                    grid,
                    name,
                    version=ready.version,
                    method=method,
                    params=_replayable(params.get(method, {}), explanation),
                    target=explanation.target.index,
                    morf=morf,
                    mask=mask_arr,
                    randomisation=dict(randomisation or {}),
                )
            else:
                score = client.score(
                    grid,
                    name,
                    version=ready.version,
                    heatmap=explanation.heatmap,
                    target=explanation.target.index,
                    morf=morf,
                    mask=mask_arr,
                )
            results.append(MethodResult(method, explanation, score, seconds))
        except XaiserveError as exc:
            results.append(
                MethodResult(
                    method, explanation, None, seconds, f"score: {exc.code.name}: {exc.details}"
                )
            )
    return Comparison(
        image=grid,
        model=name,
        version=ready.version,
        target=target_score,
        contrast=contrast_score,
        results=results,
        mask=mask_arr,
    )


def _replayable(requested: Mapping[str, Any], explanation: Explanation) -> dict[str, Any]:
    """The requested parameters, plus the seed the server drew for the explanation (so that a
    stochastic method gives the same map again)."""
    out = dict(requested)
    seed = explanation.provenance.get("seed")
    if seed is not None and "seed" in explanation.provenance.get("parameters", {}):
        out.setdefault("seed", int(seed))
    return out


def write_outputs(
    comparison: Comparison, out_dir: str | Path, stem: str = "compare"
) -> dict[str, Path]:
    """The JSON numbers in ``out_dir``, and with matplotlib (the ``plot`` extra) the PNG grid
    and the HTML page too."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written = {"json": comparison.save_json(folder / f"{stem}.json")}
    if plotting_available():
        written["png"] = comparison.save_png(folder / f"{stem}.png")
        written["html"] = comparison.to_html(folder / f"{stem}.html")
        if comparison.randomisation:
            path = folder / "randomisation.png"
            comparison.randomisation_figure().savefig(path, format="png")
            written["randomisation"] = path
    return written


# -- rendering helpers ---------------------------------------------------------------------


def _panel(fig: Figure, ax: Any, image: NDArray[np.uint8], result: MethodResult) -> None:
    e = result.explanation
    assert e is not None
    _show(fig, ax, image, e.heatmap, e.signed)
    lines = [result.method, f"{e.target.label} p={e.target.probability:.3f}"]
    if result.score is not None:
        lines.append(
            f"AOPC {result.score.aopc_morf:.3f} (Δrand {result.score.aopc_morf_minus_random:+.3f})"
        )
    lines.append(f"{result.seconds:.2f} s")
    ax.set_title("\n".join(lines), fontsize=8)


def _show(
    fig: Figure, ax: Any, image: NDArray[np.uint8], heatmap: NDArray[Any], signed: bool
) -> None:
    from matplotlib.colors import Normalize, TwoSlopeNorm

    data = np.asarray(heatmap, dtype=np.float64)
    ax.imshow(image.mean(axis=2), cmap="gray", alpha=0.6)
    if signed:
        bound = float(np.nanpercentile(np.abs(data), 99.5)) or 1e-12
        norm: Normalize = TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)
        artist = ax.imshow(data, cmap=DIVERGING_CMAP, norm=norm, alpha=0.75)
    else:
        lo, hi = float(np.nanmin(data)), float(np.nanpercentile(data, 99.5))
        artist = ax.imshow(
            data,
            cmap=SEQUENTIAL_CMAP,
            norm=Normalize(lo, hi if hi > lo else lo + 1e-12),
            alpha=0.75,
        )
    fig.colorbar(artist, ax=ax, fraction=0.046, pad=0.04)
    ax.axis("off")


def _png_of(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _img_tag(png: bytes, alt: str, ident: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img id="{ident}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return html.escape(str(value))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _mask_on_grid(mask: Any, height: int, width: int) -> NDArray[np.bool_]:
    arr = np.asarray(load_mask(mask) if isinstance(mask, (str, Path)) else mask)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    arr = (arr > 0).astype(np.float32)
    if arr.shape != (height, width):
        from PIL import Image

        arr = np.asarray(Image.fromarray(arr).resize((width, height), Image.Resampling.NEAREST))
    return arr > 0.5


def mean_curves_figure(relative: Mapping[str, Iterable[float]]) -> Figure:
    """Mean AOPC − AOPC_random as a function of perturbation steps (Samek et al. Fig. 4)."""
    require_plot("the AOPC curves figure")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    for method, curve in relative.items():
        values = list(curve)
        ax.plot(range(len(values)), values, label=method)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("perturbation steps L")
    ax.set_ylabel("AOPC − AOPC random")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
