"""What every use case works with: settings, the model repository, the operation store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from xaiserve.config import Settings
from xaiserve.imaging.decode import ImageLimits
from xaiserve.jobs.operations import OperationStore
from xaiserve.models.repository import ModelRepository
from xaiserve.runtime.memory import MemoryBudget


def _ignore(name: str) -> None:
    return None


@dataclass
class Services:
    """The server's shared parts, handed to each use case.

    ``observe_method`` is told the registered name of the method a request runs, as soon as it
    is known (the transport labels its metrics with it); the core never learns how.
    """

    settings: Settings
    repository: ModelRepository
    operations: OperationStore
    observe_method: Callable[[str], None] = _ignore
    limits: ImageLimits = field(init=False)
    memory: MemoryBudget = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.limits = ImageLimits(
            max_bytes=s.max_image_bytes,
            max_pixels=s.max_image_pixels,
            formats=tuple(s.allowed_image_formats),
        )
        self.memory = MemoryBudget(s.memory_budget_bytes)
