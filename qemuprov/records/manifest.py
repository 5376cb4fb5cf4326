"""qemuprov.json, the record of an install: typed, versioned, written atomically, checked on read, and described
by a JSON Schema generated from these classes (schemas/manifest.schema.json in the package) for CI users who
validate it or the `org.qemuprov.manifest` label of a runtime image."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from qemuprov.infra import jsonfile, safefile, typedjson
from qemuprov.knowledge.plan import PlanRecord
from qemuprov.knowledge.probe import QemuProbe, VirtiofsdProbe
from qemuprov.recipe import VirtiofsdFlavour
from qemuprov.sources.revision import SourceRecord

FILE = "qemuprov.json"
MANIFEST_CAP = 16 << 20  # a manifest with every probe and boot is tens of KB
FORMAT = 2  # 2: virtiofsd.kind is virtiofsd.flavour; a format 1 file still loads
SCHEMA_FILE = Path(__file__).resolve().parent / "schemas" / "manifest.schema.json"


class ManifestError(Exception):
    """A qemuprov.json that cannot be used: the message says why."""


class VerifyMode(StrEnum):
    """How verify boots its guest: qemuprov's own command lines, OSv's scripts/run.py lines, or through libvirt."""

    PLAIN = "plain"
    OSV = "osv"
    LIBVIRT = "libvirt"


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
    """How bin/virtiofsd is installed: QEMU's own C daemon, the Rust one, or none."""

    flavour: VirtiofsdFlavour
    wrapper: bool = False  # bin/virtiofsd is a wrapper that turns glibc's rseq off for binary
    binary: str | None = None


@dataclass(frozen=True)
class Tools:
    """What made the install."""

    qemuprov: str
    python: str
    cc: str | None = None  # the first line of the compiler's --version; None: no C compile (virtiofsd alone)
    precompiled_header: str | None = None  # "qemu/osdep.h" where clang built with one


@dataclass(frozen=True)
class CcacheStats:
    """The compiles of one build, from ccache's own per-call log."""

    hits: int
    misses: int
    hit_rate: float | None  # None: nothing was compiled
    remote_hits: int = 0  # of the hits, those served by a shared (remote) ccache


@dataclass(frozen=True)
class Substitution:
    """Where a pulled install came from, and what of it was checked on this machine."""

    cache: str
    tag: str
    digest: str
    built_at: str  # when the machine that pushed it built it
    checked_here: tuple[str, ...]
    from_entry: tuple[str, ...]  # the manifest fields taken from the entry as it describes its own bytes


@dataclass
class BootResult:
    """One arch's guest boot: PASS or FAIL with the side that failed, and what DAX did."""

    arch: str
    ok: bool
    seconds: float
    accel: str
    dax: bool | None = None  # None: not tried (the QEMU has no DAX window, or the guest kernel cannot use one)
    failure: str | None = None  # "virtiofsd", "qemu", "guest"
    message: str = ""
    log: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # combinations known to break (probe.pairing_warnings)
    mode: str = "plain"  # a VerifyMode
    dax_status: str = "-"  # "yes", "no", "not tested", "-" (no DAX window)
    dax_reason: str = ""  # why not "yes", and what to do
    kit: dict[str, str] = field(default_factory=dict)  # the guest that booted (Kit.record)
    dax_route: str | None = None  # the window offered: "cache-size" (the fork) or "shmem" (QEMU 11.1+)
    dax_sees_host_changes: bool | None = None  # a file the guest had mapped, changed on the host: seen at once?


@dataclass(frozen=True)
class Manifest:
    name: str
    prefix: str
    recipe: dict[str, Any]  # the resolved recipe, as `qemuprov show RECIPE --json` prints it
    inputs: str  # the inputs key: an unchanged rebuild has the same
    runner: str
    binaries: tuple[str, ...]  # under bin/
    probe: tuple[QemuProbe | VirtiofsdProbe, ...]  # one per binary, as `qemuprov probe --json` prints them
    virtiofsd: VirtiofsdRecord
    firmware: tuple[str, ...]  # -L directories QEMU needs
    tools: Tools
    timings: dict[str, float]  # seconds per phase, and total
    built_at: str
    log: str
    reproduce: str  # a command line that builds the same again
    source: SourceRecord | None = None  # QEMU's tree; None for the Rust virtiofsd alone
    virtiofsd_source: SourceRecord | None = None  # the Rust virtiofsd's tree
    plan: PlanRecord | None = None  # configure arguments with reasons, targets (see `qemuprov show`)
    builder_image: BuilderImageRecord | None = None
    virtiofsd_builder_image: BuilderImageRecord | None = None
    ccache: CcacheStats | None = None  # None: the build used no ccache (or pulled)
    verify: tuple[BootResult, ...] | None = None  # `qemuprov verify --json` of the install, after --verify
    lock: str | None = None  # the lock file the sources' commits came from; None: resolved from the refs
    cache_key: str | None = None  # the binary cache key of this build; None: not cacheable (a host build)
    substituted: Substitution | None = None  # where it came from when pulled from a binary cache
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # keys a newer qemuprov wrote

    def to_json(self) -> dict[str, Any]:
        data = typedjson.plain(self)
        return {**data.pop("extra"), **data}


def from_json(data: Any, where: str = FILE) -> Manifest:
    """Check a parsed qemuprov.json against the classes above and build the Manifest; ManifestError if not."""
    if not isinstance(data, dict):
        raise ManifestError(f"{where} holds no JSON object")
    found = data.get("format")
    if found == 1:
        data = _from_format_1(data)
    elif found != FORMAT:
        raise ManifestError(f"{where}: format {found!r}, but this qemuprov reads formats 1 to {FORMAT} "
                            "(build the install again with this qemuprov)")
    try:
        return typedjson.build(Manifest, data, where, rest="extra")
    except typedjson.Mismatch as exc:
        raise ManifestError(str(exc)) from None


def _from_format_1(data: dict[str, Any]) -> dict[str, Any]:
    virtiofsd = data.get("virtiofsd")
    if isinstance(virtiofsd, dict) and "kind" in virtiofsd:
        virtiofsd = {("flavour" if k == "kind" else k): v for k, v in virtiofsd.items()}
    return {**data, "virtiofsd": virtiofsd, "format": FORMAT}


def load(prefix: Path) -> Manifest | None:
    """The install's manifest; None where there is none; ManifestError where it is damaged."""
    file = prefix / FILE
    try:
        text = safefile.read_text(file, MANIFEST_CAP)  # a FIFO, /dev/zero or a 1.5 GB file is damaged, not read
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{file} cannot be read ({exc})") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ManifestError(f"{file} is not valid JSON ({exc})") from None
    return from_json(data, str(file))


def write(prefix: Path, manifest: Manifest) -> None:
    jsonfile.write_atomic(prefix / FILE, manifest.to_json())


def schema() -> dict[str, Any]:
    """The JSON Schema of qemuprov.json, from the classes above (shipped as schemas/manifest.schema.json)."""
    found = typedjson.schema(Manifest, rest="extra")
    found["properties"]["format"] = {"const": FORMAT}
    found["required"].append("format")
    found.pop("description", None)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "qemuprov.json: the record of a qemuprov install", **found}


def write_schema() -> None:
    """Regenerate the shipped schema file after a change to the classes above."""
    SCHEMA_FILE.write_text(json.dumps(schema(), indent=2) + "\n")


