"""The ``xaiserve`` command: run the server, or call it (see :data:`DESCRIPTION`)."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from xaiserve_client.builders import method_names
from xaiserve_client.channel import DEFAULT_TARGET
from xaiserve_client.client import ExplainClient
from xaiserve_client.errors import Unavailable, XaiserveError
from xaiserve_client.images import PLOT_EXTRA_HINT, plotting_available
from xaiserve_client.types import (
    Explanation,
    ModelInfo,
    Operation,
    Prediction,
    ScoreResult,
    jsonable,
)

DESCRIPTION = """\
Run the xaiserve server, or call it.

examples:
  xaiserve serve --port 50051 --models models/
  xaiserve models
  xaiserve predict cat.png dog.png --top-k 3
  xaiserve explain cat.png --method saliency --param channel_norm=linf --out cat-sal.png
  xaiserve explain cat.png --method regional_prediction_difference \\
      --param scales=3 --param segmentation.algorithm=felzenszwalb
  xaiserve score cat.png --method saliency --steps 50 --mask cat-mask.png
  xaiserve compare cat.png --json
  xaiserve evaluate data/ --method saliency --method lrp --param lrp.epsilon=0.1 --steps 20
  xaiserve operations 3d14...e7 --watch

Client commands talk to --server (default: $XAISERVE_SERVER, else localhost:50051) and print
a table, or JSON with --json. Errors go to stderr with the server's message; the exit status
is 1 (2 for usage errors). `serve` needs the server installed: pip install 'xaiserve[cpu]'.
"""
"""The parser's description: plain text, as ``--help`` prints it."""

# ---------------------------------------------------------------------------------------------
# Small helpers


def method_choice(text: str) -> str:
    """A ``--method`` value: a method the protocol knows, or a usage error that suggests one."""
    from xaiserve_client.builders import unknown_method_message

    if text in method_names():
        return text
    raise argparse.ArgumentTypeError(unknown_method_message(text))


def parse_class(text: str | None) -> int | str | None:
    """A ``--target``/``--contrast`` value: digits are an index, anything else a label."""
    if text is None or text == "":
        return None
    stripped = text.strip()
    return int(stripped) if stripped.isdigit() else stripped


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs as a nested dict: dotted keys nest, values parse as JSON if they can.

    ``scales=3 segmentation.algorithm=slic utility_fills=["black","white"]`` →
    ``{"scales": 3, "segmentation": {"algorithm": "slic"}, "utility_fills": ["black", "white"]}``
    """
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"--param wants key=value, got {pair!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = params
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise argparse.ArgumentTypeError(f"--param {key}: {part} is not a message")
        node[leaf] = value
    return params


def _print_json(data: Any, out: TextIO) -> None:
    json.dump(jsonable(data), out, indent=2)
    out.write("\n")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain left-aligned text table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_pairs(rows: Sequence[Sequence[Any]]) -> str:
    """Two aligned columns: name, value."""
    width = max((len(str(row[0])) for row in rows), default=0)
    return "\n".join(f"{str(name).ljust(width)}  {value}" for name, value in rows)


@contextlib.contextmanager
def spinner(label: str, stream: TextIO | None = None) -> Iterator[None]:
    """Show ``label`` with a spinner and the elapsed time on stderr while the block runs
    (only when stderr is a terminal)."""
    out = stream or sys.stderr
    if not out.isatty():
        yield
        return
    done = threading.Event()
    start = time.monotonic()

    def spin() -> None:
        for frame in itertools.cycle("|/-\\"):
            out.write(f"\r{frame} {label} {time.monotonic() - start:5.1f}s")
            out.flush()
            if done.wait(0.1):
                break
        out.write("\r" + " " * (len(label) + 10) + "\r")
        out.flush()

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


# ---------------------------------------------------------------------------------------------
# Arguments


def _client_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--server",
        default=os.environ.get("XAISERVE_SERVER", DEFAULT_TARGET),
        help="host:port, or dns:///host:port to balance over every address "
        "(default: $XAISERVE_SERVER or %(default)s)",
    )
    group.add_argument(
        "--timeout", type=float, default=60.0, help="deadline in seconds; 0 = none (default 60)"
    )
    group.add_argument(
        "--token",
        default=os.environ.get("XAISERVE_TOKEN"),
        help="bearer token (default: $XAISERVE_TOKEN)",
    )
    group.add_argument("--tls", action="store_true", help="connect with TLS")
    group.add_argument(
        "--tls-ca", metavar="PEM", help="CA bundle to verify the server (implies --tls)"
    )
    group.add_argument("--tls-client-cert", metavar="PEM", help="client certificate (mutual TLS)")
    group.add_argument("--tls-client-key", metavar="PEM", help="client private key (mutual TLS)")
    group.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parent


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the server (blocks until SIGTERM/SIGINT)")
    p.add_argument("--host", help="address to bind (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="gRPC port (default 50051; 0 = any free port)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (default 9464; 0 = off)")
    p.add_argument(
        "--models",
        metavar="DIR",
        help="model repository (default: $XAISERVE_MODELS_DIR, else a source checkout's "
        "models/, else /models; the server logs which one it uses)",
    )
    p.add_argument("--no-reflection", action="store_true", help="disable server reflection")
    p.add_argument("--log-format", choices=("json", "text"), help="log format (default json)")
    p.add_argument("--log-level", help="log level (default INFO)")
    p.add_argument("--tls-cert", metavar="PEM", help="server certificate chain")
    p.add_argument("--tls-key", metavar="PEM", help="server private key")
    p.add_argument(
        "--tls-client-ca", metavar="PEM", help="require client certificates from this CA"
    )
    p.add_argument("--auth-tokens-file", metavar="FILE", help="bearer tokens, one per line")
    p.set_defaults(handler=cmd_serve)


def _add_client_commands(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("models", parents=[parent], help="list models, versions and methods")
    p.set_defaults(handler=cmd_models)

    from xaiserve_client.cli_compare import add_compare_parser

    add_compare_parser(sub, parent)

    p = sub.add_parser("health", parents=[parent], help="the server's health status")
    p.set_defaults(handler=cmd_health)

    p = sub.add_parser("predict", parents=[parent], help="top classes of images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", help="model name (default: the first the server lists)")
    p.add_argument("--version", default="", help="model version (default: newest ready)")
    p.add_argument("--top-k", type=int, default=5)
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("explain", parents=[parent], help="a heatmap for an image")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument(
        "--method",
        required=True,
        type=method_choice,
        metavar="METHOD",
        help="one of: " + ", ".join(method_names()),
    )
    p.add_argument("--model", help="model name (default: the first the server lists)")
    p.add_argument("--version", default="", help="model version (default: newest ready)")
    p.add_argument("--target", help="class index or label (default: the predicted class)")
    p.add_argument("--contrast", help="contrast class index or label")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method parameter (repeatable; dotted keys for nested fields)",
    )
    p.add_argument("--out", type=Path, help="overlay PNG (default: IMAGE-stem.METHOD.png)")
    p.add_argument("--scale", type=int, default=1, help="enlarge the PNG by this factor")
    p.add_argument("--save-npy", action="store_true", help="also write the heatmap as .npy")
    p.set_defaults(handler=cmd_explain)

    p = sub.add_parser("score", parents=[parent], help="MoRF/LeRF AOPC of a heatmap")
    p.add_argument("image", metavar="IMAGE")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--heatmap", type=Path, help="heatmap .npy on the model's input grid")
    source.add_argument(
        "--method",
        type=method_choice,
        metavar="METHOD",
        help="compute the heatmap with this method",
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method parameter for --method (repeatable)",
    )
    p.add_argument("--model", help="model name (default: the first the server lists)")
    p.add_argument("--version", default="", help="model version (default: newest ready)")
    p.add_argument("--target", help="class index or label (default: the predicted class)")
    p.add_argument("--mask", type=Path, help="ground-truth object mask (PNG or .npy)")
    p.add_argument("--steps", type=int, help="perturbation steps L (default 100)")
    p.add_argument("--repeats", type=int, help="random draws averaged (default 10)")
    p.add_argument("--window", type=int, help="region size m (default 9)")
    p.add_argument("--fill", help="perturbation fill (default uniform)")
    p.add_argument("--seed", type=int)
    p.set_defaults(handler=cmd_score)

    p = sub.add_parser(
        "evaluate",
        parents=[parent],
        help="evaluate methods over a labelled data set (long-running operation)",
    )
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument(
        "folder",
        nargs="?",
        type=Path,
        help="local folder with labels.csv (file,label[,label_name]), images "
        "and optional masks/ (the layout xaiserve.demo.shapes.save_folder writes)",
    )
    data.add_argument("--dataset", help="a data-set folder on the server, by name")
    p.add_argument(
        "--method",
        action="append",
        required=True,
        type=method_choice,
        metavar="METHOD",
        help="method to evaluate (repeatable)",
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="method parameter, prefixed by the method's name (repeatable)",
    )
    p.add_argument("--model", help="model name (default: the first the server lists)")
    p.add_argument("--version", default="", help="model version (default: newest ready)")
    p.add_argument("--limit", type=int, help="at most this many images")
    p.add_argument("--steps", type=int, help="perturbation steps L (default 100)")
    p.add_argument("--repeats", type=int, help="random draws averaged (default 10)")
    p.add_argument("--window", type=int, help="region size m (default 9)")
    p.add_argument("--no-wait", action="store_true", help="print the operation id and return")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("evaluation-output"),
        help="where the table (CSV/Markdown/JSON) and the AOPC plot (PNG) go",
    )
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser(
        "operations",
        parents=[parent],
        help="list long-running operations, or show/watch/cancel one",
    )
    p.add_argument("id", nargs="?", help="an operation id")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--watch", action="store_true", help="follow it until it finishes")
    action.add_argument("--cancel", action="store_true", help="cancel it")
    p.set_defaults(handler=cmd_operations)


def build_parser() -> argparse.ArgumentParser:
    """The ``xaiserve`` argument parser."""
    from xaiserve_client import __version__

    parser = argparse.ArgumentParser(
        prog="xaiserve",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_client_commands(sub, _client_parent())
    return parser


# ---------------------------------------------------------------------------------------------
# Commands


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


def _connect(args: argparse.Namespace) -> ExplainClient:
    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    cert, key = read(args.tls_client_cert), read(args.tls_client_key)
    if bool(cert) != bool(key):
        raise ValueError("--tls-client-cert and --tls-client-key go together")
    return ExplainClient(
        args.server,
        timeout=args.timeout if args.timeout and args.timeout > 0 else None,
        tls=args.tls,
        root_certificates=read(args.tls_ca),
        client_certificate=(cert, key) if cert and key else None,
        token=args.token,
    )


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


# ---------------------------------------------------------------------------------------------
# Entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xaiserve`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    try:
        with _connect(args) as client:
            return int(args.handler(args, client))
    except Unavailable as err:
        print(f"error: {err} (is the server running at {args.server}?)", file=sys.stderr)
    except XaiserveError as err:
        print(f"error: {err}", file=sys.stderr)
    except BrokenPipeError:  # the reader went away (`xaiserve ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, argparse.ArgumentTypeError) as err:
        print(f"error: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
