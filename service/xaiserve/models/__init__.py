"""The model repository on disk (``repository``), per-model config (``config``) and the
``Model`` facade methods talk to (``model``).

Names are imported lazily so that ``imaging`` can use ``models.config`` without a cycle.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Model": "xaiserve.models.model",
    "ModelConfig": "xaiserve.models.config",
    "load_config": "xaiserve.models.config",
    "ModelRepository": "xaiserve.models.repository",
    "validate_name": "xaiserve.models.repository",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
