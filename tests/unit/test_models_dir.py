"""The default model repository: explicit, and logged with where it came from."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from xaiserve import config
from xaiserve.config import INSTALLED_MODELS_DIR, Settings, default_models_dir, models_dir_origin

REPO = Path(__file__).resolve().parents[2]


def test_a_checkout_serves_its_bundled_models() -> None:
    path, why = default_models_dir()
    assert Path(path) == REPO / "models" and "checkout" in why
    assert Settings().models_dir == path


def test_an_installed_server_defaults_to_the_image_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # config.py as it lies in site-packages: no pyproject.toml + models/ above it
    installed = tmp_path / "site-packages" / "xaiserve" / "config.py"
    installed.parent.mkdir(parents=True)
    monkeypatch.setattr(config, "__file__", str(installed))
    assert default_models_dir() == (INSTALLED_MODELS_DIR, "default for an installed server")
    assert INSTALLED_MODELS_DIR == "/models"


def test_origin_names_the_source() -> None:
    default = default_models_dir()[0]
    assert models_dir_origin("/srv/m", {"XAISERVE_MODELS_DIR": "/srv/m"}) == (
        "from XAISERVE_MODELS_DIR"
    )
    said = models_dir_origin(default, {})
    assert said.startswith("default") and "XAISERVE_MODELS_DIR" in said and "--models" in said
    assert "--models" in models_dir_origin("/elsewhere", {})


def test_the_server_logs_its_repository(
    start_server: object, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        start_server(tmp_path)  # type: ignore[operator]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model repository")]
    assert lines == [f"model repository {tmp_path} (set by --models (or the caller's Settings))"]
