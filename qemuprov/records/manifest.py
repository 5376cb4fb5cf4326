"""qemuprov.json, the record of an install: typed, versioned, written atomically, checked on read, and described
by a JSON Schema generated from these classes (schemas/manifest.schema.json in the package) for CI users who
validate it or the `org.qemuprov.manifest` label of a runtime image."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemuprov.infra import jsonfile
from qemuprov.sources.revision import SourceRecord

FILE = "qemuprov.json"
FORMAT = 1
SCHEMA_FILE = Path(__file__).resolve().parent / "schemas" / "manifest.schema.json"


class ManifestError(Exception):
    """A qemuprov.json that cannot be used: the message says why."""


@dataclass(frozen=True)
class BuilderImageRecord:
    """The container image a build ran in."""

    tag: str
    id: str
    base: str
    dockerfile: str
    builder: str


@dataclass(frozen=True)
class VirtiofsdRecord:
    """How bin/virtiofsd is installed: kind "c" (QEMU's own daemon), "rust", or "none" (as probe's flavour)."""

    kind: str
    wrapper: bool = False  # bin/virtiofsd is a wrapper that turns glibc's rseq off for binary
    binary: str | None = None


@dataclass(frozen=True)
class Manifest:
    name: str
    prefix: str
    recipe: dict[str, Any]  # the resolved recipe, as `qemuprov show RECIPE --json` prints it
    inputs: str  # the inputs key: an unchanged rebuild has the same
    runner: str
    binaries: tuple[str, ...]  # under bin/
    probe: tuple[dict[str, Any], ...]  # one probe result per binary, as `qemuprov probe --json` prints them
    virtiofsd: VirtiofsdRecord
    firmware: tuple[str, ...]  # -L directories QEMU needs
    tools: dict[str, Any]  # qemuprov, python, cc (--version of the compiler), precompiled_header
    timings: dict[str, float]  # seconds per phase, and total
    built_at: str
    log: str
    reproduce: str  # a command line that builds the same again
    source: SourceRecord | None = None  # QEMU's tree; None for the Rust virtiofsd alone
    virtiofsd_source: SourceRecord | None = None  # the Rust virtiofsd's tree
    plan: dict[str, Any] | None = None  # configure arguments with reasons, targets (see `qemuprov show`)
    builder_image: BuilderImageRecord | None = None
    virtiofsd_builder_image: BuilderImageRecord | None = None
    ccache: dict[str, Any] | None = None  # hits, misses, hit_rate of this build's compiles
    verify: tuple[dict[str, Any], ...] | None = None  # `qemuprov verify --json` of the install, after --verify
    lock: str | None = None  # the lock file the sources' commits came from; None: resolved from the refs
    cache_key: str | None = None  # the binary cache key of this build; None: not cacheable (a host build)
    substituted: dict[str, Any] | None = None  # where it came from when pulled from a binary cache
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # keys a newer qemuprov wrote

    def to_json(self) -> dict[str, Any]:
        data = _plain(dataclasses.asdict(self))
        return {**data.pop("extra"), **data}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def from_json(data: Any, where: str = FILE) -> Manifest:
    """Check a parsed qemuprov.json against the classes above and build the Manifest; ManifestError if not."""
    if not isinstance(data, dict):
        raise ManifestError(f"{where} holds no JSON object")
    found = data.get("format")
    if found != FORMAT:
        raise ManifestError(f"{where}: format {found!r}, but this qemuprov reads format {FORMAT} "
                            "(build the install again with this qemuprov)")
    return _build(Manifest, data, where)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        if item.name == "extra":
            continue
        if item.name not in data:
            if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                raise ManifestError(f"{where}: {item.name} is missing")
            continue
        values[item.name] = _value(hints[item.name], data[item.name], f"{where}: {item.name}")
    if cls is Manifest:
        values["extra"] = {k: v for k, v in data.items() if k not in hints}
    return cls(**values)


def _value(hint: Any, value: Any, where: str) -> Any:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ManifestError(f"{where} is null")
    for option in (o for o in options if o is not type(None)):
        origin = typing.get_origin(option) or option
        if isinstance(origin, type) and dataclasses.is_dataclass(origin) and isinstance(value, dict):
            return _build(origin, value, where)
        if origin is tuple and isinstance(value, list):
            (inner, _) = typing.get_args(option)
            return tuple(_value(inner, v, where) for v in value)
        if origin is dict and isinstance(value, dict):
            return value
        if origin in (str, bool) and type(value) is origin:
            return value
        if origin is int and type(value) is int:
            return value
        if origin is float and type(value) in (int, float):
            return value
    raise ManifestError(f"{where} has the wrong type ({type(value).__name__})")


def load(prefix: Path) -> Manifest | None:
    """The install's manifest; None where there is none; ManifestError where it is damaged."""
    file = prefix / FILE
    try:
        text = file.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{file} cannot be read ({exc})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"{file} is not valid JSON ({exc})") from None
    return from_json(data, str(file))


def write(prefix: Path, manifest: Manifest) -> None:
    jsonfile.write_atomic(prefix / FILE, manifest.to_json())


def schema() -> dict[str, Any]:
    """The JSON Schema of qemuprov.json, from the classes above (shipped as schemas/manifest.schema.json)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "qemuprov.json: the record of a qemuprov install", **_object_schema(Manifest)}


def write_schema() -> None:
    """Regenerate the shipped schema file after a change to the classes above."""
    SCHEMA_FILE.write_text(json.dumps(schema(), indent=2) + "\n")


def _object_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name != "extra"]
    properties = {f.name: _type_schema(hints[f.name]) for f in fields}
    if cls is Manifest:
        properties["format"] = {"const": FORMAT}
    required = [f.name for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    doc = (cls.__doc__ or "").strip()
    return {"type": "object", **({"description": doc} if doc and cls is not Manifest else {}),
            "properties": properties, "required": [*required, *(["format"] if cls is Manifest else [])]}


_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number"}


def _type_schema(hint: Any) -> dict[str, Any]:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    schemas: list[dict[str, Any]] = []
    for option in options:
        origin = typing.get_origin(option) or option
        if option is type(None):
            schemas.append({"type": "null"})
        elif isinstance(origin, type) and dataclasses.is_dataclass(origin):
            schemas.append(_object_schema(origin))
        elif origin is tuple:
            schemas.append({"type": "array", "items": _type_schema(typing.get_args(option)[0])})
        elif origin is dict:
            schemas.append({"type": "object"})
        else:
            schemas.append({"type": _JSON_TYPES[origin]})
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
