"""Events as the journal keeps them: JSON that reads back equal to what was submitted (G6).

A pydantic model does not always survive its own JSON: a field with ``exclude=True`` is left
out, a secret is written as ``'**********'``, ``Any`` turns a set into a list, a float NaN
becomes null, a string with a lone surrogate cannot be written at all. So an event is encoded
once, on entry, read back and compared with the original; one that would not come back equal
is refused right there, naming the field, before it takes any room. What is journaled is then
exactly what the jobs see, on the first run and after any restart.

Secrets are refused when the pipeline is registered (``check_model``): the journal would have
to write them to disk in clear. Pass a reference to the secret (a vault key) instead.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from typing import Any

import pydantic
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from ._exceptions import InvalidEvent

_SECRETS: tuple[type, ...] = (pydantic.SecretStr, pydantic.SecretBytes)
_FIX = "or run this pipeline without a journal"


def check_model(model: type[BaseModel]) -> None:
    """Refuse a model whose events the journal could not keep exactly, naming the field."""
    for path, field, annotation in _fields(model, model.__name__, set()):
        if field.exclude is True:
            raise InvalidEvent(
                f"{path} is declared with exclude=True, so its JSON leaves it out and a "
                f"journal could not keep it; drop exclude=True from the field, {_FIX}"
            )
        secret = _secret_in(annotation)
        if secret is not None:
            raise InvalidEvent(
                f"{path} is a secret ({secret.__name__}): a journal would have to store it on "
                "disk in clear; keep secrets out of events (pass a reference, e.g. a vault "
                f"key), {_FIX}"
            )


def encode(model: type[BaseModel], event: BaseModel) -> bytes:
    """``event`` as JSON bytes that ``decode`` turns back into an equal event.

    Raises ``InvalidEvent`` naming the first field that cannot be written or read back.
    """
    try:
        data = event.__pydantic_serializer__.to_json(event, by_alias=True, round_trip=True)
    except PydanticSerializationError as error:
        where = _unwritable_field(event) or type(event).__name__
        raise InvalidEvent(
            f"{where} cannot be written as JSON ({error}); give it a value JSON can hold "
            f"(text without lone surrogates, a pydantic-typed value), {_FIX}"
        ) from None
    try:
        back = decode(model, data)
    except pydantic.ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in (type(event).__name__, *problem["loc"]))
        raise InvalidEvent(
            f"field {where} does not read back from its own JSON ({problem['msg']}); give it "
            f"a value JSON keeps exactly (finite floats, say), {_FIX}"
        ) from None
    except Exception as error:  # any validator may raise anything on odd input
        raise InvalidEvent(
            f"{type(event).__name__} does not read back from its own JSON "
            f"({type(error).__name__}: {error}); {_FIX}"
        ) from None
    if back != event:
        where = _first_difference(event, back, type(event).__name__) or type(event).__name__
        raise InvalidEvent(
            f"{where} changes in its JSON round trip (it would not be the same after a "
            f"restart); give it a type that JSON keeps exactly (e.g. list[str], not Any with "
            f"a set; finite floats), {_FIX}"
        )
    return data


def decode(model: type[BaseModel], data: bytes | str) -> BaseModel:
    return model.model_validate_json(data)


def _fields(
    model: type[BaseModel], prefix: str, seen: set[type[BaseModel]]
) -> Iterator[tuple[str, Any, Any]]:
    if model in seen:  # a recursive model: each class once
        return
    seen.add(model)
    for name, field in model.model_fields.items():
        path = f"field {prefix}.{name}"
        yield path, field, field.annotation
        for nested in _models_in(field.annotation):
            yield from _fields(nested, f"{prefix}.{name}", seen)


def _walk(annotation: object) -> Iterator[object]:
    yield annotation
    for arg in typing.get_args(annotation):
        yield from _walk(arg)


def _models_in(annotation: object) -> list[type[BaseModel]]:
    return [t for t in _walk(annotation) if isinstance(t, type) and issubclass(t, BaseModel)]


def _secret_in(annotation: object) -> type | None:
    for t in _walk(annotation):
        origin = typing.get_origin(t) or t
        if isinstance(origin, type) and issubclass(origin, (*_SECRETS, pydantic.Secret)):
            return origin
    return None


def _unwritable_field(event: BaseModel, prefix: str = "") -> str | None:
    name = prefix or type(event).__name__
    for field, value in _items(event):
        if isinstance(value, BaseModel):
            inner = _unwritable_field(value, f"{name}.{field}")
            if inner is not None:
                return inner
        try:
            pydantic.TypeAdapter(type(value)).dump_json(value)
        except Exception:
            return f"field {name}.{field}"
    return None


def _first_difference(original: BaseModel, back: BaseModel, prefix: str) -> str | None:
    theirs = dict(_items(back))
    for field, value in _items(original):
        other = theirs.get(field)
        if isinstance(value, BaseModel) and isinstance(other, type(value)):
            inner = _first_difference(value, other, f"{prefix}.{field}")
            if inner is not None:
                return inner
        elif type(value) is not type(other):
            kinds = f"{type(value).__name__} becomes {type(other).__name__}"
            return f"field {prefix}.{field} ({kinds})"
        elif value != other:
            return f"field {prefix}.{field} (its value changes)"
    mine, kept = original.__pydantic_private__ or {}, back.__pydantic_private__ or {}
    for name, value in mine.items():
        if kept.get(name) != value:
            return f"private attribute {prefix}.{name} (the journal keeps fields only)"
    return None


def _items(event: BaseModel) -> Iterator[tuple[str, Any]]:
    yield from event.__dict__.items()
    yield from (event.__pydantic_extra__ or {}).items()
