"""``xaiserve compare``: every method side by side on one image, or over a folder of images."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xaiserve_client.compare import (
    DEFAULT_PARAMS,
    NOT_BY_DEFAULT,
    compare,
    mean_curves_figure,
    write_outputs,
)
from xaiserve_client.images import PLOT_EXTRA_HINT, plotting_available
from xaiserve_client.sanity import Randomisation, randomisation_figure

if TYPE_CHECKING:
    from xaiserve_client.client import ExplainClient


def add_compare_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "compare",
        parents=[parent],
        help="every method side by side on one image (or a folder), with scores",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("image", nargs="?", help="the image to explain")
    source.add_argument("--dir", type=Path, help="a data-set folder (labels.csv, images, masks/)")
    p.add_argument("--model", help="model name (default: the first the server lists)")
    p.add_argument("--version", default="", help="model version (default: newest ready)")
    p.add_argument("--target", help="class index or label (default: the predicted class)")
    p.add_argument("--contrast", help="contrast class: 'why target and not contrast'")
    p.add_argument(
        "--methods", nargs="+", metavar="METHOD", help="methods (default: all the model supports)"
    )
    p.add_argument("--mask", help="ground-truth object mask (image or .npy) → μ per method")
    p.add_argument("--steps", type=int, help="MoRF steps L (default 100)")
    p.add_argument("--repeats", type=int, help="MoRF random draws (default 10)")
    p.add_argument("--limit", type=int, help="--dir: at most this many images")
    p.add_argument(
        "--sanity",
        action="store_true",
        help="add each method's model-parameter randomisation test (Adebayo et al. 2018): "
        "a 'model sensitivity' column and randomisation.png (similarity vs randomised depth)",
    )
    p.add_argument(
        "--sanity-stops",
        type=int,
        help="--sanity: layer stops (default: every weighted layer up to 20, else 10)",
    )
    p.add_argument("--sanity-seed", type=int, help="--sanity: re-initialisation seed (default 0)")
    p.add_argument("--out", type=Path, default=Path("compare-output"), help="output folder")
    p.set_defaults(handler=cmd_compare)


def _class(value: str | None) -> int | str | None:
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def _randomisation(args: argparse.Namespace) -> dict[str, int] | None:
    if not args.sanity:
        return None
    options = {"stops": args.sanity_stops, "seed": args.sanity_seed}
    return {k: v for k, v in options.items() if v is not None}


def cmd_compare(args: argparse.Namespace, client: ExplainClient) -> int:
    morf = {
        k: v for k, v in {"steps": args.steps, "repeats": args.repeats}.items() if v is not None
    }
    if args.dir is not None:
        return _compare_folder(args, client, morf)
    comparison = compare(
        client,
        args.image,
        args.model,
        version=args.version,
        target=_class(args.target),
        contrast=_class(args.contrast),
        methods=args.methods,
        mask=args.mask,
        morf=morf or None,
        progress=lambda m: print(f"  {m} …", file=sys.stderr, flush=True),
        sanity=args.sanity,
        randomisation=_randomisation(args),
    )
    paths = write_outputs(comparison, args.out)
    if "png" not in paths:
        print(f"no PNG/HTML figures: they need matplotlib ({PLOT_EXTRA_HINT})", file=sys.stderr)
    if args.json:
        print(json.dumps(comparison.to_dict(), indent=2, default=str))
        return 0
    print(
        f"{comparison.model} v{comparison.version}: target "
        f"{comparison.target.label if comparison.target else '?'}"
    )
    sanity = "  model sensitivity" if args.sanity else ""
    print(f"{'method':34} {'AOPC':>7} {'Δrandom':>8} {'μ':>6} {'seconds':>8}{sanity}")
    for r in comparison.results:
        if r.error:
            print(f"{r.method:34} {r.error}")
            continue
        s = r.score
        mu = s.localisation.mu if s is not None and s.localisation is not None else float("nan")
        sensitivity = ""
        if s is not None and s.randomisation is not None:
            sensitivity = f" {s.randomisation.model_sensitivity:18.3f}"
        print(
            f"{r.method:34} {s.aopc_morf if s else float('nan'):7.3f} "
            f"{s.aopc_morf_minus_random if s else float('nan'):+8.3f} {mu:6.3f} {r.seconds:8.2f}"
            f"{sensitivity}"
        )
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _compare_folder(args: argparse.Namespace, client: ExplainClient, morf: dict[str, Any]) -> int:
    from xaiserve_client.cli_commands import _follow, folder_items

    info = client.get_model(args.model) if args.model else client.list_models()[0]
    version = next(
        v for v in info.versions if v.ready and (not args.version or v.version == args.version)
    )
    methods = args.methods or [m for m in version.methods if m not in NOT_BY_DEFAULT]
    operation = client.evaluate_dataset(
        folder_items(args.dir, args.limit),
        info.name,
        version=version.version,
        methods={m: DEFAULT_PARAMS.get(m, {}) for m in methods},
        morf=morf or None,
        limit=args.limit,
        randomisation=_randomisation(args),
        timeout=None,
    )
    operation = _follow(client, operation)
    if operation.state != "SUCCEEDED":
        print(f"evaluation {operation.state}: {operation.error}", file=sys.stderr)
        return 1
    lines = write_aggregate(operation.result, args.out)
    print("\n".join(lines))
    names = ["aggregate.csv", "aggregate.md", "aggregate.json"]
    names += ["aopc_curves.png"] if plotting_available() else []
    names += ["randomisation.png"] if plotting_available() and args.sanity else []
    print(f"written: {args.out}/" + ", ".join(names))
    return 0


def write_aggregate(result: dict[str, Any], out: Path) -> list[str]:
    """The data-set evaluation's table (CSV, Markdown, JSON) and mean AOPC curves (PNG) in
    ``out``; returns the Markdown lines."""
    out.mkdir(parents=True, exist_ok=True)
    columns = list(result.get("columns", []))
    rows = list(result.get("rows", []))
    with (out / "aggregate.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    (out / "aggregate.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if plotting_available():
        curves = mean_curves_figure(result.get("relative_aopc_curves", {}))
        curves.savefig(out / "aopc_curves.png")
    else:
        print(f"no aopc_curves.png: it needs matplotlib ({PLOT_EXTRA_HINT})", file=sys.stderr)
    sanity = result.get("randomisation")
    if sanity:
        sanity_curves = {
            name: Randomisation.from_dict(data, int(sanity.get("seed", 0)))
            for name, data in sanity.get("methods", {}).items()
        }
        lines += ["", "| method | images | ρ at full randomisation | model sensitivity |"]
        lines += ["|---|---|---|---|"]
        lines += [
            f"| {name} | {c.images} | {c.summary:.4f} | {c.model_sensitivity:.4f} |"
            for name, c in sanity_curves.items()
        ]
        if plotting_available() and sanity_curves:
            randomisation_figure(sanity_curves).savefig(out / "randomisation.png")
    (out / "aggregate.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return lines


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)
