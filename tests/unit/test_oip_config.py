"""``[backend] kind = "oip"`` in a model's config.toml: defaults, validation, messages."""

from __future__ import annotations

import tomllib

import pytest

from xaiserve.models.config import ConfigError, parse_config

BASE = """
[input]
height = 8
width = 8
[output]
labels = ["a", "b"]
"""


def parse(backend: str) -> object:
    return parse_config(tomllib.loads(BASE + "[backend]\n" + backend), "m/1/config.toml")


def test_oip_defaults_and_fields() -> None:
    cfg = parse(
        'kind = "oip"\nurl = "grpcs://triton:8001"\nmodel_name = "resnet"\n'
        'input_datatype = "fp16"\ntoken_file = "/run/secrets/token"\n'
        "max_batch_size = 8\ntimeout_ms = 250"
    )
    oip = cfg.backend.oip  # type: ignore[attr-defined]
    assert cfg.backend.kind == "oip"  # type: ignore[attr-defined]
    assert oip.tls and oip.target == "triton:8001" and oip.input_datatype == "FP16"
    assert oip.max_batch_size == 8 and oip.timeout_ms == 250.0 and oip.max_concurrency == 4
    plain = parse('kind = "oip"\nurl = "localhost:8001"\nmodel_name = "m"').backend.oip  # type: ignore[attr-defined]
    assert not plain.tls and plain.target == "localhost:8001" and plain.max_batch_size == 0


def test_local_backend_is_the_default() -> None:
    cfg = parse_config(tomllib.loads(BASE), "x")
    assert cfg.backend.kind == "onnx" and cfg.backend.oip is None


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ('kind = "oip"\nmodel_name = "m"', "backend.url must be"),
        ('kind = "oip"\nurl = "http://h:1"\nmodel_name = "m"', "backend.url must be"),
        ('kind = "oip"\nurl = "h:1"', "backend.model_name is required"),
        (
            'kind = "oip"\nurl = "h:1"\nmodel_name = "m"\ninput_datatype = "INT8"',
            "backend.input_datatype must be one of",
        ),
        (
            'kind = "oip"\nurl = "h:1"\nmodel_name = "m"\ntls_ca_file = "ca.pem"',
            "must start with grpcs://",
        ),
        (
            'kind = "oip"\nurl = "grpcs://h:1"\nmodel_name = "m"\ntls_cert_file = "c.pem"',
            "given together",
        ),
        (
            'kind = "oip"\nurl = "h:1"\nmodel_name = "m"\ntimeout_ms = 0',
            "backend.timeout_ms must be a positive",
        ),
        (
            'kind = "oip"\nurl = "h:1"\nmodel_name = "m"\nmax_concurrency = 0',
            "backend.max_concurrency must be a positive",
        ),
        (
            'kind = "oip"\nurl = "h:1"\nmodel_name = "m"\nurl_typo = 1',
            "backend.url_typo is not a known field",
        ),
        ('kind = "triton"', "backend.kind must be one of"),
        ('kind = "onnx"\nurl = "h:1"', "backend.url is not a known field"),
    ],
)
def test_oip_config_errors_name_the_field(backend: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(backend)
    assert "m/1/config.toml" in str(err.value) and message in str(err.value)
