"""The artifact location: atomic reports, and sweeping what crashed writers left behind
without touching a live writer's temporary folder."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from xaiserve.errors import FailedPrecondition
from xaiserve.evaluation.aggregate import DatasetAggregate, ImageEvaluation
from xaiserve.evaluation.complexity import ComplexityResult
from xaiserve.imaging.decode import ImageLimits
from xaiserve.jobs import codec
from xaiserve.models import artifacts
from xaiserve.models.support_sets import SupportSetStore


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_sweep_removes_only_stale_temporary_folders(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    sets = artifacts.version_folder(root, "m", "1") / "support_sets"
    sets.mkdir(parents=True)
    crashed = sets / ".tmp-gad-0-1-dead"
    crashed.mkdir()
    (crashed / "alpha_2.pt").write_bytes(b"half")
    _age(crashed, 3600)
    live = sets / ".tmp-gad-0-1-live"
    live.mkdir()
    finished = sets / "gad-0-1-1"
    finished.mkdir()
    _age(finished, 3600)
    removed = artifacts.sweep_temporary(root, older_than=600)
    assert removed == [crashed]
    assert live.is_dir() and finished.is_dir() and not crashed.exists()


def test_a_live_writer_keeps_its_folder_fresh(tmp_path: Path) -> None:
    folder = tmp_path / ".tmp-live"
    folder.mkdir()
    _age(folder, 3600)
    with artifacts.keep_fresh(folder, every=0.05):
        time.sleep(0.3)
        assert time.time() - folder.stat().st_mtime < 5
        assert artifacts.sweep_temporary(tmp_path, older_than=60) == []


def test_a_support_set_writer_is_not_swept_while_it_writes(tmp_path: Path) -> None:
    store = SupportSetStore(tmp_path)
    with store.writer(0, 1) as writer:
        _age(writer.tmp, 3600)
        with artifacts.keep_fresh(writer.tmp, every=0.05):
            time.sleep(0.2)
        assert artifacts.sweep_temporary(tmp_path, older_than=60) == []
        assert writer.tmp.is_dir()


def test_reports_are_written_atomically_once(tmp_path: Path) -> None:
    aggregate = DatasetAggregate()
    aggregate.add({"m": ImageEvaluation(complexity=ComplexityResult(png_bytes=10, entropy=1.5))})
    result = {"images": 1, "columns": aggregate.columns(), "rows": aggregate.to_rows()}
    path = artifacts.write_report(tmp_path, "ab" * 16, aggregate, result)
    assert sorted(p.name for p in path.iterdir()) == ["report.csv", "report.json", "report.md"]
    assert json.loads((path / "report.json").read_text())["images"] == 1
    again = artifacts.write_report(tmp_path, "ab" * 16, aggregate, {"images": 99})
    assert again == path and json.loads((path / "report.json").read_text())["images"] == 1
    assert [p.name for p in (tmp_path / "reports").iterdir()] == ["ab" * 16]  # no .tmp-* left


def test_an_unwritable_artifact_location_names_itself(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(FailedPrecondition, match="not writable"):
        artifacts.check_writable(blocker / "sub")


def test_the_codec_is_lossless_and_refuses_unknown_types() -> None:
    value = {
        "a": np.array([[1.5, np.nan], [np.inf, -0.0]]),
        "b": float("nan"),
        "c": [np.float64(0.1), np.int64(3)],
        "d": ImageEvaluation(complexity=ComplexityResult(png_bytes=3, entropy=float("-inf"))),
    }
    back = codec.decode(json.loads(json.dumps(codec.encode(value))))
    np.testing.assert_array_equal(back["a"], value["a"])
    assert np.isnan(back["b"]) and back["c"] == [0.1, 3]
    assert back["d"] == value["d"]
    with pytest.raises(TypeError, match="not an encodable"):
        codec.encode(ImageLimits())  # a dataclass outside the allow-list
