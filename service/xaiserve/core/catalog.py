"""``list_models`` and ``get_model``: what the repository serves, version by version."""

from __future__ import annotations

from xaiserve.contracts.names import validate_name
from xaiserve.core.services import Services
from xaiserve.errors import ModelNotFound
from xaiserve.models.repository import ModelEntry


def list_models(services: Services) -> list[ModelEntry]:
    return services.repository.entries()


def get_model(services: Services, name: str, version: str = "") -> ModelEntry:
    """The model's entry; with ``version``, only that version (NOT_FOUND when it has none)."""
    entry = services.repository.entry(name)
    if not version:
        return entry
    validate_name(version, "version")
    found = entry.versions.get(version)
    if found is None:
        raise ModelNotFound(f"model {name!r} has no version {version!r}")
    return ModelEntry(entry.name, {version: found})
