"""``compare`` from the SDK and the CLI against a real server on the demo model: the PNG grid,
the self-contained HTML page and the JSON numbers agree with each other and with the server."""

from __future__ import annotations

import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xaiserve.demo.shapes import heldout, save_folder
from xaiserve_client import ExplainClient
from xaiserve_client.cli import main
from xaiserve_client.compare import write_outputs

METHODS = ["regional_prediction_difference", "contextual_importance", "lrp", "gradient_times_input"]
MORF = {"steps": 20, "repeats": 2}
VOID = {"meta", "img", "br", "hr", "input", "link"}


class StrictTree(HTMLParser):
    """Checks nesting and collects resource references and element ids."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.refs: list[str] = []
        self.ids: set[str] = set()
        self.rows: dict[str, list[str]] = {}
        self._row: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for key in ("src", "href"):
            if a.get(key):
                self.refs.append(a[key] or "")
        if a.get("id"):
            self.ids.add(a["id"] or "")
        if tag == "tr" and a.get("data-method"):
            self._row = a["data-method"]
            self.rows[self._row or ""] = []
        if tag == "td" and self._row:
            self._cell = []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row and self._cell is not None:
            self.rows[self._row].append("".join(self._cell))
            self._cell = None
        if tag == "tr":
            self._row = None
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray]:
    ds = heldout(2)
    return ds.images[0], ds.masks[0]


def test_compare_renders_consistent_png_html_and_json(demo_server, sample, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, port = demo_server
    image, mask = sample
    with ExplainClient(f"127.0.0.1:{port}") as client:
        cmp = client.compare(image, methods=METHODS, mask=mask, contrast=1, morf=MORF)
    assert [r.method for r in cmp.results] == METHODS and all(not r.error for r in cmp.results)
    paths = write_outputs(cmp, tmp_path)

    # PNG: the grid has the input plus one panel per method, with colour bars
    fig = cmp.figure()
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0].startswith("input")
    for method in METHODS:
        assert any(t.startswith(method) for t in titles), method
    assert len(fig.axes) >= 8 + len(METHODS)  # 8 grid cells + a colour bar per method panel
    with Image.open(paths["png"]) as png:
        w, h = fig.get_size_inches() * 100
        assert png.size == (round(w), round(h))

    # JSON: all numbers, equal to what the server returned
    data = json.loads(paths["json"].read_text())
    assert data["model"] == "shapes" and data["contrast"] is not None and data["mask"] is True
    for entry, result in zip(data["methods"], cmp.results, strict=True):
        assert result.score is not None and result.explanation is not None
        assert entry["aopc_morf"] == pytest.approx(result.score.aopc_morf)
        assert entry["mu"] == pytest.approx(result.score.localisation.mu)  # type: ignore[union-attr]
        assert len(entry["morf_curve"]) == MORF["steps"] + 1
        assert entry["signed"] == result.explanation.signed
    signed = {e["method"]: e["signed"] for e in data["methods"]}
    assert (
        signed["lrp"]
        and signed["gradient_times_input"]
        and not signed["regional_prediction_difference"]
    )

    # HTML: well-formed, self-contained, same numbers as the JSON
    text = paths["html"].read_text()
    tree = StrictTree()
    tree.feed(text)
    tree.close()
    assert tree.errors == [] and tree.stack == []
    assert tree.refs and all(ref.startswith("data:image/png;base64,") for ref in tree.refs)
    assert not re.search(r"https?://", text)
    assert {"grid", "figures", "scales", "contrastive"} <= tree.ids
    for entry in data["methods"]:
        cells = tree.rows[entry["method"]]
        assert cells[3] == f"{entry['aopc_morf']:.4f}" and cells[6] == f"{entry['mu']:.4f}"
        assert cells[7] == str(entry["forward_passes"])


def test_cli_compare_image_and_folder(demo_server, sample, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, port = demo_server
    image, mask = sample
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    server = f"127.0.0.1:{port}"
    code = main(
        [
            "compare",
            str(tmp_path / "img.png"),
            "--server",
            server,
            "--methods",
            *METHODS[:2],
            "--mask",
            str(tmp_path / "mask.png"),
            "--steps",
            "10",
            "--repeats",
            "1",
            "--out",
            str(tmp_path / "one"),
            "--timeout",
            "120",
        ]
    )
    assert code == 0
    numbers = json.loads((tmp_path / "one" / "compare.json").read_text())
    assert [m["method"] for m in numbers["methods"]] == METHODS[:2]
    assert all(0.0 <= m["mu"] <= 1.0 for m in numbers["methods"])

    folder = save_folder(heldout(3), tmp_path / "data")
    code = main(
        [
            "compare",
            "--dir",
            str(folder),
            "--server",
            server,
            "--methods",
            "lrp",
            "saliency",
            "--steps",
            "10",
            "--repeats",
            "1",
            "--out",
            str(tmp_path / "many"),
            "--timeout",
            "300",
        ]
    )
    assert code == 0
    with (tmp_path / "many" / "aggregate.csv").open() as fh:
        rows = {row["method"]: row for row in csv.DictReader(fh)}
    assert {"lrp", "saliency", "random"} <= set(rows)
    assert float(rows["lrp"]["images"]) == 3
    assert (tmp_path / "many" / "aopc_curves.png").stat().st_size > 1000


SANITY_METHODS = ["saliency", "guided_backprop"]


def test_compare_with_sanity_adds_the_randomisation_test(
    demo_server, sample, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    _, port = demo_server
    image, _ = sample
    with ExplainClient(f"127.0.0.1:{port}") as client:
        cmp = client.compare(
            image, methods=SANITY_METHODS, morf={"steps": 5, "repeats": 1}, sanity=True
        )
        plain = client.score(image, method="saliency", morf={"steps": 5, "repeats": 1})
    assert all(not r.error for r in cmp.results)
    assert plain.randomisation is None
    paths = write_outputs(cmp, tmp_path)
    data = json.loads(paths["json"].read_text())
    curves = data["randomisation"]
    assert set(curves) == set(SANITY_METHODS)
    for method, curve in curves.items():
        assert curve["depths"] == [1, 2, 3, 4, 5, 6, 7]  # the demo model's 7 weighted layers
        assert curve["layers"][0].endswith("(Gemm)") and curve["full_randomisation"]
        assert curve["summary"] == curve["spearman_abs"][-1]
        assert curve["model_sensitivity"] == pytest.approx(1.0 - curve["summary"])
        entry = next(e for e in data["methods"] if e["method"] == method)
        assert entry["model_sensitivity"] == pytest.approx(curve["model_sensitivity"])

    # the plot: one line per method, from the original model down to full randomisation
    fig = cmp.randomisation_figure()
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines if not line.get_label().startswith("_")] == (
        SANITY_METHODS
    )
    assert all(len(line.get_xdata()) == 8 for line in lines[:2])
    assert paths["randomisation"].stat().st_size > 1000

    # the HTML page carries the plot and the column
    tree = StrictTree()
    tree.feed(paths["html"].read_text())
    assert "randomisation" in tree.ids
    assert "model sensitivity" in paths["html"].read_text()
    for method in SANITY_METHODS:
        assert f"{curves[method]['model_sensitivity']:.4f}" in tree.rows[method]


def test_cli_compare_sanity_image_and_folder(demo_server, sample, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, port = demo_server
    image, _ = sample
    Image.fromarray(image).save(tmp_path / "img.png")
    common = ["--server", f"127.0.0.1:{port}", "--steps", "5", "--repeats", "1"]
    common += ["--timeout", "300", "--sanity", "--sanity-stops", "3"]
    code = main(
        [
            "compare",
            str(tmp_path / "img.png"),
            "--methods",
            "saliency",
            *common,
            "--out",
            str(tmp_path / "one"),
        ]
    )
    assert code == 0
    numbers = json.loads((tmp_path / "one" / "compare.json").read_text())
    assert numbers["randomisation"]["saliency"]["depths"] == [1, 4, 7]
    assert (tmp_path / "one" / "randomisation.png").stat().st_size > 1000

    folder = save_folder(heldout(2), tmp_path / "data")
    code = main(
        [
            "compare",
            "--dir",
            str(folder),
            "--methods",
            "saliency",
            *common,
            "--out",
            str(tmp_path / "many"),
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "many" / "aggregate.json").read_text())
    curve = result["randomisation"]["methods"]["saliency"]
    assert curve["images"] == 2 and curve["depths"] == [1, 4, 7]
    assert (tmp_path / "many" / "randomisation.png").stat().st_size > 1000
