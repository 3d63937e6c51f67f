"""Build a method's parameter dataclass from a plain mapping, resolving defaults.

The API layer turns a protobuf params message into a mapping holding only the fields the client
set (proto3 ``optional``), so an absent field takes the dataclass default. Nested dataclasses
come from nested mappings. Unknown keys and wrong types raise :class:`InvalidInput` naming the
field, so the client learns what to fix.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from xaiserve.errors import InvalidInput

T = TypeVar("T")


def params_from_mapping(cls: type[T], mapping: Mapping[str, Any], path: str = "") -> T:
    """Instantiate dataclass ``cls`` from ``mapping`` (missing keys → defaults)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in mapping.items():
        where = f"{path}{key}"
        if key not in names:
            raise InvalidInput(f"unknown parameter {where!r}")
        kwargs[key] = _coerce(hints[key], value, where)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(
            f"invalid parameters{' for ' + path.rstrip('.') if path else ''}: {exc}"
        ) from exc


def params_to_dict(params: Any) -> dict[str, Any]:
    """The resolved parameters as JSON-compatible values (for provenance)."""
    return typing.cast(dict[str, Any], _jsonable(dataclasses.asdict(params)))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for option in options:
            try:
                return _coerce(option, value, where)
            except InvalidInput as exc:
                errors.append(str(exc))
        raise InvalidInput(errors[0] if errors else f"parameter {where!r} has the wrong type")
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            raise InvalidInput(f"parameter {where!r} is {value!r}; choose one of {choices}")
        return value
    if origin in (list, tuple, collections_abc_sequence()):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise InvalidInput(f"parameter {where!r} must be a list")
        items = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        key_t, val_t = typing.get_args(hint)
        if not isinstance(value, Mapping):
            raise InvalidInput(f"parameter {where!r} must be a mapping")
        return {
            _coerce(key_t, k, where): _coerce(val_t, v, f"{where}[{k!r}]") for k, v in value.items()
        }
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, Mapping):
            raise InvalidInput(f"parameter {where!r} must be a message")
        return params_from_mapping(hint, value, f"{where}.")
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise InvalidInput(f"parameter {where!r} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"parameter {where!r} must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInput(f"parameter {where!r} must be a number")
        if not math.isfinite(value):
            raise InvalidInput(f"parameter {where!r} must be a finite number, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise InvalidInput(f"parameter {where!r} must be a string")
        return value
    return value


def collections_abc_sequence() -> Any:
    import collections.abc

    return collections.abc.Sequence
