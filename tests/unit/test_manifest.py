"""qemuprov.json as a type: round trips, checks on read, and the shipped JSON Schema, which must match the code."""

from __future__ import annotations

import json

import jsonschema
import pytest

from qemuprov.records import manifest
from qemuprov.records.manifest import ManifestError
from tests.manifests import manifest_json


def test_the_shipped_schema_is_the_one_the_code_makes() -> None:
    shipped = json.loads(manifest.SCHEMA_FILE.read_text())
    assert shipped == manifest.schema(), "regenerate it: python -c 'from qemuprov.records import manifest; " \
        "manifest.write_schema()'"


def test_round_trip_and_schema_validation() -> None:
    data = json.loads(manifest_json(source={"url": "file:///q", "ref": "v1", "commit": "a" * 40, "sha256": None}))
    record = manifest.from_json(data)
    assert record.source is not None and record.source.commit == "a" * 40
    assert record.to_json() == data
    jsonschema.validate(data, manifest.schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "binaries": "bin/qemu"}, manifest.schema())


def test_keys_of_a_newer_qemuprov_are_kept() -> None:
    data = json.loads(manifest_json(signature="ed25519:00"))
    record = manifest.from_json(data)
    assert record.extra == {"signature": "ed25519:00"} and record.to_json()["signature"] == "ed25519:00"


@pytest.mark.parametrize(("changes", "why"), [({"format": 2}, "format 2, but this qemuprov reads format 1"),
                                              ({"virtiofsd": {"wrapper": True}}, "virtiofsd: kind is missing"),
                                              ({"timings": {"x": "1"}}, None),
                                              ({"firmware": [1]}, "firmware has the wrong type (int)")])
def test_checks_on_read(changes: dict[str, object], why: str | None) -> None:
    data = json.loads(manifest_json(**changes))
    if why is None:  # dict values are the producer's business
        manifest.from_json(data)
        return
    with pytest.raises(ManifestError, match=why.replace("(", r"\(").replace(")", r"\)")):
        manifest.from_json(data)
