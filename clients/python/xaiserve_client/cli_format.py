"""Small pieces the ``xaiserve`` command is made of: argument parsers for values, and the
tables, JSON and spinner it prints."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from xaiserve_client.builders import method_names, unknown_method_message
from xaiserve_client.types import jsonable


def method_choice(text: str) -> str:
    """A ``--method`` value: a method the protocol knows, or a usage error that suggests one."""
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


def print_json(data: Any, out: TextIO) -> None:
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
