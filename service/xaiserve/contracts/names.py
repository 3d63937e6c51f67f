"""Names that address folders on the server: models, versions, data sets, support sets."""

from __future__ import annotations

import re

from xaiserve.errors import InvalidInput

MAX_NAME_LENGTH = 128
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def validate_name(value: str, field_name: str) -> str:
    """Refuse names that could address anything outside the repository.

    Allowed: letters, digits, ``.``, ``_``, ``-``, starting with a letter or digit, at most 128
    characters. So ``../etc``, ``a/../b``, ``/etc/passwd``, ``..``, NUL and over-long names are
    INVALID_ARGUMENT, while an odd but valid name such as ``model..1`` reaches NOT_FOUND.
    """
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidInput(
            f"{field_name} is {len(value)} characters long; the limit is {MAX_NAME_LENGTH}"
        )
    if not _NAME.fullmatch(value):
        raise InvalidInput(
            f"{field_name} {value[:64]!r} is not a valid name: use letters, digits, '.', '_' "
            "and '-', starting with a letter or digit"
        )
    return value
