"""The ``xaiserve`` command: run the server, or call it (see :data:`DESCRIPTION`).

This module builds the parser and dispatches; the handlers are in
:mod:`xaiserve_client.cli_commands`, the small helpers in :mod:`xaiserve_client.cli_format`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xaiserve_client.builders import method_names
from xaiserve_client.channel import DEFAULT_TARGET
from xaiserve_client.cli_commands import (
    cmd_evaluate,
    cmd_explain,
    cmd_health,
    cmd_models,
    cmd_operations,
    cmd_predict,
    cmd_score,
    cmd_serve,
)
from xaiserve_client.cli_format import method_choice, parse_class, parse_params
from xaiserve_client.client import ExplainClient
from xaiserve_client.errors import Unavailable, XaiserveError

# Handlers and value parsers live in cli_commands and cli_format; these stay importable here.
__all__ = ["DESCRIPTION", "build_parser", "main", "parse_class", "parse_params"]

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
    p.add_argument(
        "--state-url",
        metavar="URL",
        help="shared state store of a fleet (postgresql://…; default: SQLite in --data-dir)",
    )
    p.add_argument("--data-dir", metavar="DIR", help="SQLite state store and default artifacts")
    p.add_argument(
        "--artifacts", metavar="DIR", help="writable artifact location (support sets, reports)"
    )
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
# Connection


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
