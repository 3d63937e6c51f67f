"""Method parameters from request mappings: defaults, nesting, clear errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from xaiserve.errors import InvalidInput
from xaiserve.imaging.segmentation import SegmentationParams
from xaiserve.methods.params import params_from_mapping, params_to_dict


@dataclass(frozen=True)
class Example:
    steps: int = 50
    noise: float = 0.1
    mode: Literal["a", "b"] = "a"
    seed: int | None = None
    fills: list[str] = field(default_factory=lambda: ["black"])
    segmentation: SegmentationParams = field(default_factory=SegmentationParams)


def test_defaults_and_overrides() -> None:
    p = params_from_mapping(
        Example, {"steps": 7, "noise": 1, "segmentation": {"algorithm": "quickshift"}}
    )
    assert p.steps == 7 and p.noise == 1.0 and isinstance(p.noise, float)
    assert p.segmentation.algorithm == "quickshift" and p.segmentation.n_segments == 50
    assert params_to_dict(p)["segmentation"]["algorithm"] == "quickshift"


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"stepz": 1}, "unknown parameter 'stepz'"),
        ({"steps": "many"}, "'steps' must be an integer"),
        ({"mode": "c"}, "choose one of 'a', 'b'"),
        ({"fills": "black"}, "'fills' must be a list"),
        ({"segmentation": {"algorithm": "watershed"}}, "segmentation.algorithm"),
        ({"segmentation": {"n_segments": 0}}, "n_segments must be at least 1"),
    ],
)
def test_errors_name_the_field(mapping: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        params_from_mapping(Example, mapping)
