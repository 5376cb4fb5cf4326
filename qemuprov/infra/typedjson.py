"""Dataclasses to and from JSON, checked field by field against their type hints, and the JSON Schema of them:
the one way qemuprov reads a record it wrote (qemuprov.json, the probe cache) and may have been sent.

Supported hints: str, bool, int, float, StrEnums, X | None, tuple[X, ...], list[X], dict[str, X], dataclasses,
and unions of dataclasses told apart by the default of their `kind` field."""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import Enum
from typing import Any

_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number"}


class Mismatch(ValueError):
    """The JSON does not fit the class; the message names the field and what is wrong."""


def plain(record: Any) -> dict[str, Any]:
    """The record as JSON values (tuples become lists; StrEnums stay strings)."""
    return _plain(dataclasses.asdict(record))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def build(cls: type, data: dict[str, Any], where: str, rest: str | None = None) -> Any:
    """cls from a parsed JSON object; rest: a dict field that keeps the keys cls does not know."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        if item.name == rest:
            continue
        if item.name not in data:
            if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                raise Mismatch(f"{where}: {item.name} is missing")
            continue
        values[item.name] = _value(hints[item.name], data[item.name], f"{where}: {item.name}")
    if rest is not None:
        values[rest] = {k: v for k, v in data.items() if k not in hints}
    return cls(**values)


def _value(hint: Any, value: Any, where: str) -> Any:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise Mismatch(f"{where} is null")
    records = [o for o in options if isinstance(o, type) and dataclasses.is_dataclass(o)]
    if records and isinstance(value, dict):
        return build(_which_record(records, value), value, where)
    for option in (o for o in options if o is not type(None) and o not in records):
        origin = typing.get_origin(option) or option
        if origin in (tuple, list) and isinstance(value, list):
            inner = typing.get_args(option)[0]
            return origin(_value(inner, v, where) for v in value)
        if origin is dict and isinstance(value, dict):
            (_, inner) = typing.get_args(option)
            return value if inner is Any else {k: _value(inner, v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(origin, type) and issubclass(origin, Enum):
            if value in {m.value for m in origin}:
                return origin(value)
            raise Mismatch(f"{where} is {str(value)[:40]!r}, none of " + ", ".join(m.value for m in origin))
        if origin in (str, bool) and type(value) is origin:
            return value
        if origin is int and type(value) is int:
            return value
        if origin is float and type(value) in (int, float):
            return value
    raise Mismatch(f"{where} has the wrong type ({type(value).__name__})")


def _which_record(records: list[type], value: dict[str, Any]) -> type:
    """Of a union of records, the one whose `kind` the value names; else the first."""
    for record in records:
        kind = next((f.default for f in dataclasses.fields(record) if f.name == "kind"), None)
        if kind is not None and kind == value.get("kind"):
            return record
    return records[0]


def schema(cls: type, rest: str | None = None) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of cls, its docstring as the description."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name != rest]
    required = [f.name for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    doc = (cls.__doc__ or "").strip()
    return {"type": "object", **({"description": doc} if doc else {}),
            "properties": {f.name: _type_schema(hints[f.name]) for f in fields}, "required": required}


def _type_schema(hint: Any) -> dict[str, Any]:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    schemas: list[dict[str, Any]] = []
    for option in options:
        origin = typing.get_origin(option) or option
        if option is type(None):
            schemas.append({"type": "null"})
        elif isinstance(origin, type) and dataclasses.is_dataclass(origin):
            schemas.append(schema(origin))
        elif origin in (tuple, list):
            schemas.append({"type": "array", "items": _type_schema(typing.get_args(option)[0])})
        elif origin is dict:
            (_, inner) = typing.get_args(option)
            values = {} if inner is Any else {"additionalProperties": _type_schema(inner)}
            schemas.append({"type": "object", **values})
        elif isinstance(origin, type) and issubclass(origin, Enum):
            schemas.append({"enum": [m.value for m in origin]})
        else:
            schemas.append({"type": _JSON_TYPES[origin]})
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
