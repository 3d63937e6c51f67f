"""Settings from the environment and per-model config validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from xaiserve.config import Settings, env_names
from xaiserve.models.config import ConfigError, ExecutionConfig, load_config

GOOD = """
description = "x"
[input]
height = 32
width = 48
layout = "NHWC"
channel_order = "BGR"
resize = "center_crop"
value_range = [-1.0, 1.0]
mean = [0.1, 0.2, 0.3]
std = [0.5, 0.5, 0.5]
[output]
kind = "probabilities"
labels = ["a", "b"]
[batching]
max_batch_size = 8
max_queue_delay_ms = 0.5
"""


def test_settings_environment_and_overrides() -> None:
    env = {
        "XAISERVE_PORT": "7000",
        "XAISERVE_REFLECTION": "off",
        "XAISERVE_ALLOWED_IMAGE_FORMATS": "PNG, JPEG ,WEBP",
        "XAISERVE_DRAIN_SECONDS": "3.5",
    }
    s = Settings.from_env(env, metrics_port=9999, port=None)
    assert s.port == 7000 and s.reflection is False and s.metrics_port == 9999
    assert s.allowed_image_formats == ("PNG", "JPEG", "WEBP")
    assert s.drain_seconds == 3.5
    assert env_names()["max_queued_images"] == "XAISERVE_MAX_QUEUED_IMAGES"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"XAISERVE_PORT": "http"}, "XAISERVE_PORT='http' is not an integer"),
        ({"XAISERVE_REFLECTION": "maybe"}, "is not a boolean"),
        ({"XAISERVE_MAX_QUEUED_IMAGES": "0"}, "max_queued_images must be at least 1"),
        ({"XAISERVE_TLS_CERT": "/c.pem"}, "tls_cert and tls_key must be given together"),
    ],
)
def test_settings_errors_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(env)


def test_model_config_parses_every_field(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(GOOD)
    cfg = load_config(path)
    assert (cfg.input.height, cfg.input.width, cfg.input.layout) == (32, 48, "NHWC")
    assert cfg.input.channel_order == "BGR" and cfg.input.resize == "center_crop"
    assert cfg.input.value_range == (-1.0, 1.0) and cfg.input.mean == (0.1, 0.2, 0.3)
    assert cfg.output.kind == "probabilities" and cfg.output.labels == ("a", "b")
    assert cfg.batching.max_batch_size == 8 and cfg.batching.max_queue_delay_ms == 0.5


@pytest.mark.parametrize(
    ("mutation", "field"),
    [
        (('layout = "NHWC"', 'layout = "CHW"'), "input.layout"),
        (("height = 32", "height = 0"), "input.height"),
        (("height = 32", ""), "input.height is required"),
        (("std = [0.5, 0.5, 0.5]", "std = [0.5, 0.0, 0.5]"), "input.std"),
        (("mean = [0.1, 0.2, 0.3]", "mean = [0.1, 0.2]"), "input.mean"),
        (('labels = ["a", "b"]', "labels = []"), "output.labels"),
        (('labels = ["a", "b"]', 'labels = ["a", "a"]'), "output.labels"),
        (('kind = "probabilities"', 'kind = "scores"'), "output.kind"),
        (("max_batch_size = 8", "max_batch_size = -2"), "batching.max_batch_size"),
        (('description = "x"', 'descripton = "x"'), "descripton is not a known field"),
        (("value_range = [-1.0, 1.0]", "value_range = [1.0, -1.0]"), "input.value_range"),
    ],
)
def test_model_config_errors_name_file_and_field(
    tmp_path: Path, mutation: tuple[str, str], field: str
) -> None:
    path = tmp_path / "config.toml"
    old, new = mutation
    assert old in GOOD
    path.write_text(GOOD.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and field in str(info.value)


def test_model_config_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file missing"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "config.toml"
    bad.write_text("[input\nheight=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_model_config_execution_overrides(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(GOOD)
    assert load_config(path).execution == ExecutionConfig(intra_op_threads=0, workers=0)
    path.write_text(GOOD + "[execution]\nintra_op_threads = 1\nworkers = 4\n")
    assert load_config(path).execution == ExecutionConfig(intra_op_threads=1, workers=4)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("[execution]\nworkers = 65\n", "execution.workers must be at most 64"),
        ("[execution]\nintra_op_threads = -1\n", "execution.intra_op_threads must be a non-neg"),
        ("[execution]\nthreads = 2\n", "execution.threads is not a known field"),
        (
            '[execution]\nworkers = 2\n[backend]\nkind = "oip"\nurl = "h:1"\nmodel_name = "m"\n',
            "applies to a local onnxruntime model",
        ),
    ],
)
def test_model_config_execution_errors(tmp_path: Path, section: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(GOOD + section)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
