"""The ``xaiserve`` command's handlers: one ``cmd_<name>(args, client) -> exit status`` per
client command, and ``cmd_serve(args)``, which imports the server only when it runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from xaiserve_client.cli_format import (
    format_pairs,
    format_table,
    parse_class,
    parse_params,
    spinner,
)
from xaiserve_client.cli_format import print_json as _print_json
from xaiserve_client.client import ExplainClient
from xaiserve_client.errors import XaiserveError
from xaiserve_client.images import PLOT_EXTRA_HINT, plotting_available
from xaiserve_client.types import (
    Explanation,
    ModelInfo,
    Operation,
    Prediction,
    ScoreResult,
    jsonable,
)

SERVER_INSTALL_HINT = (
    "install the server: pip install 'xaiserve[cpu]' (or 'xaiserve[gpu]' for CUDA); "
    "from a source checkout: make venv"
)


def _server_missing(exc: ImportError) -> str | None:
    """What to install when importing the server failed, or None for an unrelated ImportError."""
    missing = (exc.name or "").split(".")[0]
    if missing == "xaiserve":
        return f"the xaiserve server is not installed (only its client is): {SERVER_INSTALL_HINT}"
    if missing:
        return f"the server needs {missing!r}, which is not installed: {SERVER_INSTALL_HINT}"
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    """Build settings from the environment and flags, then run the server until signalled."""
    import importlib.util
    import os

    # before the server imports torch: its OpenMP threads sleep between parallel regions
    # instead of spinning on the cores other requests need (xaiserve.runtime.thread_pools)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    try:  # lazily: client commands never import the server
        from xaiserve.config import Settings
    except ImportError as exc:
        hint = _server_missing(exc)
        if hint is None:
            raise
        print(f"xaiserve serve: {hint}", file=sys.stderr)
        return 1
    if importlib.util.find_spec("onnxruntime") is None:
        print(
            "xaiserve serve: no ONNX Runtime is installed: pip install 'xaiserve[cpu]' "
            "(onnxruntime) or 'xaiserve[gpu]' (onnxruntime-gpu)",
            file=sys.stderr,
        )
        return 1
    overrides = {
        "host": args.host,
        "port": args.port,
        "metrics_port": args.metrics_port,
        "models_dir": args.models,
        "reflection": False if args.no_reflection else None,
        "log_format": args.log_format,
        "log_level": args.log_level,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_client_ca": args.tls_client_ca,
        "auth_tokens_file": args.auth_tokens_file,
        "state_url": args.state_url,
        "data_dir": args.data_dir,
        "artifacts": args.artifacts,
    }
    try:
        settings = Settings.from_env(**overrides)
    except (TypeError, ValueError) as exc:
        print(f"xaiserve serve: {exc}", file=sys.stderr)
        return 2
    try:
        from xaiserve.api.server import serve_and_exit
    except ImportError as exc:
        hint = _server_missing(exc)
        if hint is None:
            raise
        print(f"xaiserve serve: {hint}", file=sys.stderr)
        return 1
    serve_and_exit(settings)


def _models_rows(models: list[ModelInfo]) -> list[list[Any]]:
    rows = []
    for model in models:
        for v in model.versions:
            size = f"{v.input.height}x{v.input.width}" if v.input.height else "-"
            state = v.state if not v.error else f"{v.state} ({v.error})"
            rows.append(
                [model.name, v.version, state, size, len(v.labels), ", ".join(v.methods) or "-"]
            )
    return rows


def cmd_models(args: argparse.Namespace, client: ExplainClient) -> int:
    models = client.list_models()
    if args.json:
        _print_json(models, sys.stdout)
    elif not models:
        print("no models")
    else:
        headers = ["MODEL", "VERSION", "STATE", "INPUT", "CLASSES", "METHODS"]
        print(format_table(headers, _models_rows(models)))
    return 0


def cmd_health(args: argparse.Namespace, client: ExplainClient) -> int:
    status = client.health()
    if args.json:
        _print_json({"status": status}, sys.stdout)
    else:
        print(status)
    return 0 if status == "SERVING" else 1


def _print_prediction(image: str, prediction: Prediction) -> None:
    print(f"{image}  ({prediction.model} v{prediction.version})")
    rows = [
        [i + 1, c.index, c.label, f"{c.probability:.4f}"] for i, c in enumerate(prediction.classes)
    ]
    print(format_table(["RANK", "INDEX", "LABEL", "PROBABILITY"], rows))


def cmd_predict(args: argparse.Namespace, client: ExplainClient) -> int:
    images: list[str] = args.images
    if len(images) == 1:
        with spinner("predicting"):
            predictions = [
                client.predict(images[0], args.model, version=args.version, top_k=args.top_k)
            ]
    else:
        from tqdm import tqdm

        stream = client.predict_many(images, args.model, version=args.version, top_k=args.top_k)
        predictions = list(
            tqdm(
                stream, total=len(images), desc="predict", unit="img", disable=None, file=sys.stderr
            )
        )
    if args.json:
        _print_json(
            [{"image": i, **jsonable(p)} for i, p in zip(images, predictions, strict=True)],
            sys.stdout,
        )
        return 0
    for n, (image, prediction) in enumerate(zip(images, predictions, strict=True)):
        if n:
            print()
        _print_prediction(image, prediction)
    return 0


def _input_resize(client: ExplainClient, model: str, version: str) -> str:
    """How the model fits images to its grid, for drawing the overlay like the server sees."""
    try:
        info = client.get_model(model, version)
    except XaiserveError:
        return "stretch"
    return info.versions[0].input.resize if info.versions else "stretch"


def _class_text(score: Any) -> str:
    return f"{score.index} {score.label} (p={score.probability:.4f})" if score else "-"


def cmd_explain(args: argparse.Namespace, client: ExplainClient) -> int:
    drawing = plotting_available()  # the overlay PNG needs the plot extra
    if args.out is not None and not drawing:
        print(f"xaiserve explain: --out draws with matplotlib: {PLOT_EXTRA_HINT}", file=sys.stderr)
        return 1
    params = parse_params(args.param)
    with spinner(f"explaining with {args.method}"):
        explanation: Explanation = client.explain(
            args.image,
            args.method,
            args.model,
            version=args.version,
            target=parse_class(args.target),
            contrast=parse_class(args.contrast),
            params=params,
        )
    default_out = Path(f"{Path(args.image).stem}.{args.method}.png")
    out: Path | None = args.out or default_out
    if not drawing:
        print(f"no overlay PNG: it needs matplotlib ({PLOT_EXTRA_HINT})", file=sys.stderr)
        out = None
    if out is not None:
        resize = _input_resize(
            client,
            explanation.provenance["model"] or (args.model or ""),
            explanation.provenance["version"] or args.version,
        )
        explanation.save_png(out, image=args.image, resize=resize, scale=args.scale)
    npy = (out or default_out).with_suffix(".npy") if args.save_npy else None
    if npy is not None:
        np.save(npy, explanation.heatmap)
    summary = {
        "method": explanation.method,
        "signed": explanation.signed,
        "target": explanation.target,
        "contrast": explanation.contrast,
        "forward_passes": explanation.forward_passes,
        "timings": explanation.timings,
        "values": explanation.values,
        "provenance": explanation.provenance,
        "heatmap_shape": list(explanation.heatmap.shape),
        "overlay": str(out) if out else None,
        "heatmap_npy": str(npy) if npy else None,
    }
    if args.json:
        _print_json(summary, sys.stdout)
        return 0
    rows: list[list[Any]] = [
        ["method", f"{explanation.method} ({'signed' if explanation.signed else 'unsigned'})"],
        ["target", _class_text(explanation.target)],
        ["contrast", _class_text(explanation.contrast)],
        ["heatmap", "x".join(str(s) for s in explanation.heatmap.shape)],
        ["forward passes", explanation.forward_passes],
        ["server time", f"{explanation.timings.total:.3f} s"],
        ["overlay", out or "-"],
    ]
    if npy is not None:
        rows.append(["heatmap .npy", npy])
    print(format_pairs(rows))
    return 0


def cmd_score(args: argparse.Namespace, client: ExplainClient) -> int:
    from xaiserve_client.images import load_mask

    morf = {
        k: v
        for k, v in {
            "steps": args.steps,
            "repeats": args.repeats,
            "window": args.window,
            "fill": args.fill,
            "seed": args.seed,
        }.items()
        if v is not None
    }
    heatmap = np.load(args.heatmap) if args.heatmap else None
    mask = load_mask(args.mask) if args.mask else None
    with spinner("scoring"):
        result: ScoreResult = client.score(
            args.image,
            args.model,
            version=args.version,
            heatmap=heatmap,
            method=args.method,
            params=parse_params(args.param) if args.method else None,
            target=parse_class(args.target),
            morf=morf,
            mask=mask,
        )
    if args.json:
        _print_json(result, sys.stdout)
        return 0
    rows: list[list[Any]] = [
        ["target", _class_text(result.target)],
        ["AOPC MoRF", f"{result.aopc_morf:.4f}"],
        ["AOPC LeRF", f"{result.aopc_lerf:.4f}"],
        ["AOPC random", f"{result.aopc_random:.4f}"],
        ["AOPC MoRF - random", f"{result.aopc_morf_minus_random:.4f}"],
        ["area LeRF - MoRF", f"{result.area_between_lerf_morf:.4f}"],
        ["steps", max(len(result.morf_curve) - 1, 0)],
        ["forward passes", result.forward_passes],
        ["server time", f"{result.timings.total:.3f} s"],
    ]
    if result.localisation is not None:
        rows += [
            ["mu (inside/total)", f"{result.localisation.mu:.4f}"],
            ["mu weighted", f"{result.localisation.mu_weighted:.4f}"],
        ]
    if result.complexity is not None:
        rows += [
            ["complexity (PNG bytes)", f"{result.complexity['png_bytes']:.0f}"],
            ["entropy (bits)", f"{result.complexity['entropy']:.3f}"],
        ]
    if result.convex_hull is not None:
        rows += [
            ["hull area ratio RC", f"{result.convex_hull['area_ratio']:.4f}"],
            ["hull sensitivity RS", f"{result.convex_hull['sensitivity']:.4f}"],
        ]
    print(format_pairs(rows))
    return 0


def folder_items(folder: Path, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Items of a local data-set folder, read lazily: ``labels.csv`` rows (``file``, ``label``
    as an index or name, optional ``label_name``) and ``masks/<file name>`` when present."""
    import csv

    from xaiserve_client.images import load_mask

    labels = folder / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"{labels} not found: a data-set folder needs labels.csv")
    with labels.open(newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.DictReader(fh)):
            if limit is not None and n >= limit:
                return
            path = folder / row["file"]
            raw = (row.get("label") or "").strip()
            label = int(raw) if raw.isdigit() else (raw or row.get("label_name") or None)
            mask = folder / "masks" / path.name
            yield {
                "image": path,
                "label": label,
                "name": row["file"],
                "mask": load_mask(mask) if mask.is_file() else None,
            }


def _follow(client: ExplainClient, operation: Operation) -> Operation:
    """Watch an operation to its end with a progress bar on stderr."""
    from tqdm import tqdm

    with tqdm(
        total=operation.total or None,
        desc=operation.kind or "operation",
        unit="img",
        disable=None,
        file=sys.stderr,
    ) as bar:

        def update(op: Operation) -> None:
            bar.total = op.total or bar.total
            bar.update(op.done - bar.n)
            bar.set_postfix_str(op.state.lower())

        return client.wait_operation(operation.id, on_update=update)


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return int(value) if value.is_integer() else f"{value:.4f}"
    return value


def _print_operation(op: Operation) -> None:
    rows: list[list[Any]] = [
        ["id", op.id],
        ["kind", op.kind],
        ["state", op.state],
        ["progress", f"{op.done}/{op.total}"],
        ["message", op.message or "-"],
    ]
    if op.error:
        rows.append(["error", f"{op.error[0]}: {op.error[1]}"])
    print(format_pairs(rows))
    table = op.result.get("rows") if op.result else None
    if isinstance(table, list) and table and isinstance(table[0], dict):
        wanted = ["method", "images", "aopc_morf", "aopc_morf_minus_random", "mu", "entropy"]
        columns = [c for c in wanted if c in table[0]]
        body = [[_cell(r.get(c, "")) for c in columns] for r in table]
        print()
        print(format_table([c.upper() for c in columns], body))


def cmd_evaluate(args: argparse.Namespace, client: ExplainClient) -> int:
    params = parse_params(args.param)
    unknown = set(params) - set(args.method)
    if unknown:
        raise ValueError(
            f"--param for {', '.join(sorted(unknown))}: not among --method; "
            "prefix each parameter with its method's name"
        )
    morf = {
        k: v
        for k, v in {"steps": args.steps, "repeats": args.repeats, "window": args.window}.items()
        if v is not None
    }
    items = folder_items(args.folder, args.limit) if args.folder else ()
    with spinner("starting the operation"):
        operation = client.evaluate_dataset(
            items,
            args.model,
            version=args.version,
            dataset=args.dataset or "",
            methods={m: params.get(m, {}) for m in args.method},
            morf=morf,
            limit=args.limit,
            timeout=None,
        )
    if not args.no_wait:
        operation = _follow(client, operation)
        if operation.state == "SUCCEEDED" and operation.result:
            from xaiserve_client.cli_compare import write_aggregate

            write_aggregate(operation.result, args.out)
            print(f"table and plot written to {args.out}", file=sys.stderr)
    if args.json:
        _print_json(operation, sys.stdout)
    else:
        _print_operation(operation)
    return 0 if operation.state in ("SUCCEEDED", "PENDING", "RUNNING") else 1


def cmd_operations(args: argparse.Namespace, client: ExplainClient) -> int:
    if not args.id:
        operations = client.list_operations()
        if args.json:
            _print_json(operations, sys.stdout)
        else:
            rows = [[o.id, o.kind, o.state, f"{o.done}/{o.total}", o.message] for o in operations]
            print(format_table(["ID", "KIND", "STATE", "DONE", "MESSAGE"], rows))
        return 0
    if args.cancel:
        operation = client.cancel_operation(args.id)
    else:
        operation = client.get_operation(args.id)
        if args.watch and not operation.finished:
            operation = _follow(client, operation)
    if args.json:
        _print_json(operation, sys.stdout)
    else:
        _print_operation(operation)
    return 0
