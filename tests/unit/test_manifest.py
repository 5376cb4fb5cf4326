"""qemuprov.json as a type: round trips, checks on read, and the shipped JSON Schema, which must match the code."""

from __future__ import annotations

import json
from dataclasses import asdict

import jsonschema
import pytest

from qemuprov.knowledge.probe import QemuProbe, VirtiofsdProbe
from qemuprov.recipe import VirtiofsdFlavour
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


@pytest.mark.parametrize(("changes", "why"), [({"format": 3}, "format 3, but this qemuprov reads formats 1 to 2"),
                                              ({"virtiofsd": {"wrapper": True}}, "virtiofsd: flavour is missing"),
                                              ({"virtiofsd": {"flavour": "go"}}, "virtiofsd: flavour is 'go', none of"),
                                              ({"timings": {"x": "1"}}, "timings.x has the wrong type (str)"),
                                              ({"tools": {"python": "3.13"}}, "tools: qemuprov is missing"),
                                              ({"recipe": {"cc": ["any", 1]}}, None),
                                              ({"probe": [{"path": "/q", "arch": "x86_64", "kind": "qemu",
                                                           "dax": "yes"}]},
                                               "probe: dax has the wrong type (str)"),
                                              ({"firmware": [1]}, "firmware has the wrong type (int)")])
def test_checks_on_read(changes: dict[str, object], why: str | None) -> None:
    data = json.loads(manifest_json(**changes))
    if why is None:  # a dict[str, Any] is the producer's business
        manifest.from_json(data)
        return
    with pytest.raises(ManifestError, match=why.replace("(", r"\(").replace(")", r"\)")):
        manifest.from_json(data)


def test_probes_come_back_as_the_kind_they_name() -> None:
    qemu = QemuProbe(path="/p/bin/qemu-system-x86_64", version="6.1.50", arch="x86_64", vhost_user_fs=True, dax=True,
                     devices={"vhost-user-fs-pci": True}, accels=["kvm", "tcg"])
    daemon = VirtiofsdProbe(path="/p/bin/virtiofsd", flavour=VirtiofsdFlavour.C, version="6.1.50")
    data = json.loads(manifest_json(probe=[asdict(qemu), asdict(daemon)]))
    record = manifest.from_json(data)
    assert record.probe == (qemu, daemon) and type(record.probe[1].flavour) is VirtiofsdFlavour
    assert record.to_json() == data
    jsonschema.validate(data, manifest.schema())


def test_a_format_1_manifest_still_loads() -> None:
    """Format 1 called the virtiofsd flavour `kind`; installs and cache entries of an older qemuprov keep working."""
    data = json.loads(manifest_json(format=1))
    data["virtiofsd"] = {"kind": "rust", "wrapper": False, "binary": None}
    record = manifest.from_json(data)
    assert record.virtiofsd.flavour is VirtiofsdFlavour.RUST and record.format == manifest.FORMAT
    assert record.to_json()["virtiofsd"] == {"flavour": "rust", "wrapper": False, "binary": None}
