"""The README's references cannot drift from the code: every metric and setting is listed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from xaiserve.config import Settings, env_names
from xaiserve.observability import Metrics, metric_names

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_every_metric_is_documented() -> None:
    for name in metric_names(Metrics()):
        assert f"`{name}" in README, f"{name} is missing from the README metrics reference"


def test_every_setting_is_documented() -> None:
    for field in dataclasses.fields(Settings):
        assert f"`{env_names()[field.name]}`" in README, f"{field.name} is missing from the README"


def test_the_two_commands_are_there() -> None:
    assert "make demo" in README and "make test" in README
