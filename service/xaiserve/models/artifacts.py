"""The artifact location: what the service writes (GAD support sets, evaluation reports), kept
apart from the read-only model repository.

Layout under the artifact root (``XAISERVE_ARTIFACTS`` / ``--artifacts``; default
``<data_dir>/artifacts``)::

    models/<model>/<version>/support_sets/<id>/…    GAD support sets (models.support_sets)
    reports/<operation id>/report.{json,csv,md}      data-set evaluation reports

In a fleet every replica mounts the same writable volume here (ReadWriteMany), so a support set
fitted through one replica is used by ``gad`` on another. Every write is atomic: files are
written into a hidden ``.tmp-*`` sibling and renamed into place, so readers never see half a
set or half a report. A writer keeps its temporary folder's modification time fresh while it
works (:func:`keep_fresh`); :func:`sweep_temporary` removes the ones a crashed writer left
behind once they are older than :data:`STALE_TMP_SECONDS`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xaiserve.errors import FailedPrecondition
from xaiserve.models.repository import validate_name

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
STALE_TMP_SECONDS = 600.0
"""A temporary folder not touched for this long belongs to a writer that died."""
TOUCH_SECONDS = 30.0


def version_folder(root: Path | str, model: str, version: str) -> Path:
    """The artifact folder of one model version (names validated: no path escapes)."""
    validate_name(model, "model")
    validate_name(version, "version")
    return Path(root) / "models" / model / version


def check_writable(folder: Path) -> None:
    """:class:`FailedPrecondition` naming ``folder`` unless files can be created in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=folder)
        os.rmdir(probe)
    except OSError as exc:
        raise FailedPrecondition(
            f"the artifact location {folder} is not writable ({exc.strerror or exc}): mount a "
            "writable volume there (XAISERVE_ARTIFACTS / --artifacts)"
        ) from exc


@contextlib.contextmanager
def keep_fresh(folder: Path, every: float = TOUCH_SECONDS) -> Iterator[None]:
    """Touch ``folder`` every ``every`` seconds while the block runs (a live writer's
    temporary folder is never swept)."""
    stop = threading.Event()

    def touch() -> None:
        while not stop.wait(every):
            with contextlib.suppress(OSError):
                os.utime(folder)

    t = threading.Thread(target=touch, name="artifact-touch", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


def sweep_temporary(root: Path | str, older_than: float = STALE_TMP_SECONDS) -> list[Path]:
    """Remove ``.tmp-*`` folders and files under ``root`` untouched for ``older_than``
    seconds (left by crashed fits or report writers); returns what was removed."""
    removed: list[Path] = []
    base = Path(root)
    if not base.is_dir():
        return removed
    cutoff = time.time() - older_than
    for dirpath, dirnames, filenames in os.walk(base):
        for name in [*dirnames, *filenames]:
            if not name.startswith(TMP_PREFIX):
                continue
            path = Path(dirpath) / name
            try:
                if path.lstat().st_mtime >= cutoff:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except OSError:
                continue
            removed.append(path)
        dirnames[:] = [d for d in dirnames if not d.startswith(TMP_PREFIX)]
    if removed:
        log.info("swept %d temporary artifact folders", len(removed), extra={"root": str(base)})
    return removed


def write_report(root: Path | str, op_id: str, aggregate: Any, result: dict[str, Any]) -> Path:
    """Write a data-set evaluation's aggregate (a ``DatasetAggregate``) as
    ``reports/<id>/report.{json,csv,md}``, atomically: a temporary sibling renamed into place
    (when two replicas race, the first report stays; both are identical)."""
    reports = Path(root) / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    target = reports / op_id
    if target.exists():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=reports))
    try:
        (tmp / "report.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        aggregate.write_csv(tmp / "report.csv")
        aggregate.write_markdown(tmp / "report.md")
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if target.exists():
            return target
        raise
    return target
