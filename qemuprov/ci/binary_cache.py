"""Build once, install everywhere: an install as an OCI artifact in a registry (its prefix as a gzipped tar layer,
its qemuprov.json as the config), tagged with a key that means "the same build". A build with a cache looks the
key up first and, on a hit, installs what it pulls (every digest checked, every member confined to staging,
probed against [expect]) instead of building. Only container builds are cached: a host build depends on the
host's libraries, which the key cannot see; and only relocatable trees (QEMU 5.2 and later)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import zlib
from pathlib import Path
from typing import Any

from qemuprov import __version__
from qemuprov.ci import signing
from qemuprov.ci.oci import BadAnswer, Client, Location, RegistryTrouble, RegistryUnreachable, parse, small_deadline
from qemuprov.errors import QemuprovError, UserError
from qemuprov.infra import config, paths, unpack
from qemuprov.infra.progress import Reporter
from qemuprov.infra.render import safe_text
from qemuprov.infra.timing import Timer
from qemuprov.infra.unpack import UnsafeArchive
from qemuprov.records import installs, manifest
from qemuprov.records.manifest import Manifest

CONFIG_MEDIA_TYPE = "application/vnd.qemuprov.install.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
ENV = "QEMUPROV_BINARY_CACHE"


@dataclasses.dataclass(frozen=True)
class Settings:
    location: Location
    signing_key: Path | None = None  # push signs with it
    trusted_keys: tuple[Path, ...] = ()  # pull takes only entries one of these signed
    allow_unsigned: bool = False  # ... unless this is set for the cache


def configured(option: str | None) -> Settings | None:
    """The cache: --cache, else $QEMUPROV_BINARY_CACHE, else `[cache] url` in ~/.config/qemuprov/config.toml; its
    keys: $QEMUPROV_SIGNING_KEY and $QEMUPROV_TRUSTED_KEYS (:-separated), else `signing_key` and
    `trusted_keys`; $QEMUPROV_ALLOW_UNSIGNED=1 or `allow_unsigned = true` takes unsigned entries."""
    url = config.setting(option, ENV, "cache", "url", "a registry in quotes")
    signing = config.setting(None, "QEMUPROV_SIGNING_KEY", "cache", "signing_key", "a path in quotes")
    listed = config.value("cache", "trusted_keys", list, "a list of paths")
    if listed is not None and not all(isinstance(p, str) for p in listed):
        raise UserError(f"{config.file()}: [cache] trusted_keys must be a list of paths in quotes")
    trusted_env = os.environ.get("QEMUPROV_TRUSTED_KEYS")
    trusted = trusted_env.split(os.pathsep) if trusted_env else listed or []
    unsigned = config.switch("QEMUPROV_ALLOW_UNSIGNED", "cache", "allow_unsigned")
    if not url:
        return None
    small_deadline()  # a deadline that is no number of seconds is one line now, not at the first request
    return Settings(parse(url), Path(signing).expanduser() if signing else None,
                    tuple(Path(p).expanduser() for p in trusted if p), unsigned)


HOST_BUILD = "a host build never comes from or goes to a binary cache (its libraries are the host's)"
NOT_RELOCATABLE = ("a tree before QEMU 5.2 is not relocatable (its binaries find their data only at the prefix they "
                   "were built for), so it never goes to a binary cache")


def why_not_cacheable(host_build: bool, relocatable: bool | None = None) -> str | None:
    """The one rule of what a binary cache holds: container builds of relocatable trees (None: not known yet,
    or no QEMU tree). Why not, or None where it can."""
    if host_build:
        return HOST_BUILD
    return NOT_RELOCATABLE if relocatable is False else None


def key(recipe: dict[str, object], arches: tuple[str, ...], qemu: str | None, virtiofsd: str | None,
        builder: list[dict[str, str]] | None) -> str | None:
    """What makes a build the same: the resolved commits, the recipe less what does not change the result
    (Recipe.build_inputs(of_the_bytes=True)), the arches, the builder image (its Dockerfile and base image; the
    compiler is the image's), and qemuprov's version and manifest format (the plan is a function of these).
    None: not cacheable (a host build)."""
    if builder is None:
        return None
    blob = json.dumps({"recipe": recipe, "arches": sorted(arches), "qemu": qemu, "virtiofsd": virtiofsd,
                       "builder": builder, "qemuprov": __version__, "format": manifest.FORMAT},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def push(prefix: Path, record: Manifest, settings: Settings) -> str:
    """Publish the install at prefix under its cache key, signed where a signing key is set; the tag."""
    if not record.cache_key:
        why = why_not_cacheable(record.runner == "host", record.plan.relocatable if record.plan else None)
        raise UserError(f"{prefix} cannot go into a binary cache: {why or 'it has no cache key'}",
                        hint="build it with --runner docker (or podman), then push" if record.runner == "host"
                        else "build a QEMU of 5.2 or later")
    if record.substituted:
        came_from = safe_text(record.substituted.cache)
        raise UserError(f"{prefix} was installed from the binary cache {came_from}, not built here: pushing it "
                        "would sign for a build this machine did not make",
                        hint="push from the machine that built it, or build it here with --no-cache and push that")
    if not installs.installed_here(prefix):
        raise UserError(f"{prefix}: qemuprov did not install there (its qemuprov.json may be a copy), so its cache "
                        "key is not one qemuprov computed", hint="build it with qemuprov, then push")
    key = signing.load_private(settings.signing_key) if settings.signing_key else None
    layer = _layer(prefix)
    config = json.dumps(record.to_json(), sort_keys=True).encode()
    cache = Client(settings.location)
    layer_digest, config_digest = cache.push_blob(layer), cache.push_blob(config)
    signature = signing.sign(key, signing.statement(record.cache_key, config_digest, layer_digest)) if key else {}
    cache.put_manifest(record.cache_key, {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": CONFIG_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": layer_digest, "size": len(layer)}],
        "annotations": {"org.qemuprov.recipe": str(record.recipe.get("name")),
                        "org.qemuprov.summary": f"qemuprov {__version__} install of {record.recipe.get('name')}",
                        **signature}})
    return record.cache_key


def owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """A tar member of a shipped install (a cache layer, an image, a tarball): owned by root, whoever built it."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _layer(prefix: Path) -> bytes:
    """The prefix as a gzipped tar, members relative to it, owned by root, without qemuprov.json (the config)."""
    def member(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if info.name == manifest.FILE else owned_by_root(info)

    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped, tarfile.open(fileobj=zipped, mode="w") as tar:
        for path in sorted(prefix.iterdir()):
            tar.add(path, arcname=path.name, filter=member)
    return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class Hit:
    record: Manifest  # as pushed: what the entry says of itself, to be taken only where it cannot mislead
    digest: str  # of the OCI manifest
    timings: dict[str, float]  # cache-lookup, cache-download, cache-unpack


@dataclasses.dataclass(frozen=True)
class Entry:
    """An OCI manifest as qemuprov pushes it, checked field by field before anything of it is used."""

    config_digest: str
    config_size: int
    layer_digest: str
    layer_size: int
    annotations: dict[str, str]


_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def parse_entry(oci: dict[str, Any]) -> Entry:
    """Raises BadAnswer for anything but one config and one layer, each with a sha256 digest and a size."""
    def blob(value: object, what: str) -> tuple[str, int]:
        if not isinstance(value, dict):
            raise BadAnswer(f"its {what} is not an object")
        digest, size = value.get("digest"), value.get("size")
        if not isinstance(digest, str) or not _DIGEST.match(digest):
            raise BadAnswer(f"its {what} has no sha256 digest")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadAnswer(f"its {what} has no size")
        return digest, size

    layers = oci.get("layers")
    if not isinstance(layers, list) or len(layers) != 1:
        raise BadAnswer(f"it has {len(layers) if isinstance(layers, list) else 'no list of'} layers, not one")
    annotations = oci.get("annotations", {})
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        raise BadAnswer("its annotations are not strings by name")
    config_digest, config_size = blob(oci.get("config"), "config")
    layer_digest, layer_size = blob(layers[0], "layer")
    return Entry(config_digest, config_size, layer_digest, layer_size, annotations)


@dataclasses.dataclass(frozen=True)
class Miss:
    """Why the cache gave no install: "no-entry", "refused" (the entry failed a check) or "unreachable"."""

    reason: str
    message: str


def pull(settings: Settings, cache_key: str, recipe: str, arches: tuple[str, ...], staged: Path,
         report: Reporter | None = None) -> Hit | Miss:
    """Unpack the install the key names into staged; a Miss where the cache has none, is down, or
    serves something it must not (unsigned or signed by no trusted key, another recipe, other arches, a blob
    that is not its digest or its size, an answer of the wrong shape, an unsafe layer). Nothing is downloaded
    before the signature is checked. The layer is streamed to a file beside staged (in the build's staging dir,
    which a killed build's successor removes)."""
    location = settings.location
    trusted = [signing.load_public(path) for path in settings.trusted_keys]
    timer = Timer()
    try:
        cache = Client(location)
        found = cache.get_manifest(cache_key)
        timer.lap("cache-lookup")
        if found is None:
            return Miss("no-entry", f"binary cache {location}: no build with this key yet ({cache_key[:16]}…)")
        oci, digest = found
        entry = parse_entry(oci)
        if not settings.allow_unsigned:
            why = signing.verify(entry.annotations, signing.statement(cache_key, entry.config_digest,
                                                                      entry.layer_digest), trusted)
            if why is not None:
                hint = "" if trusted else " (no trusted keys are set: QEMUPROV_TRUSTED_KEYS or [cache] trusted_keys)"
                return Miss("refused", f"binary cache {location}: refused the entry {cache_key[:16]}…: {why}{hint}")
        config = cache.get_blob(entry.config_digest, entry.config_size)
        try:
            record = manifest.from_json(json.loads(config), f"the cached {cache_key[:16]}…")
        except (ValueError, RecursionError) as exc:
            raise BadAnswer(f"its config is not a qemuprov.json ({str(exc)[:120]})") from None
        if record.recipe.get("name") != recipe or sorted(record.binaries) != sorted(_binaries(record, arches)):
            return Miss("refused", f"binary cache {location}: refused the entry {cache_key[:16]}…: it is of "
                        f"{safe_text(str(record.recipe.get('name')))} ({safe_text(', '.join(record.binaries))}), "
                        f"not of {recipe} for {', '.join(arches)}")
        download = staged.parent / f"{staged.name}.layer.tar.gz"
        download.parent.mkdir(parents=True, exist_ok=True)
        try:
            cache.download_blob(entry.layer_digest, entry.layer_size, download,
                                (lambda done, total: report.progress(done, total, "MB")) if report else None)
            if report is not None:
                report.finish_progress()
            timer.lap("cache-download")
            _unpack(download, staged)
        finally:
            download.unlink(missing_ok=True)
        timer.lap("cache-unpack")
        return Hit(record, digest, timer.timings)
    except (RegistryTrouble, manifest.ManifestError, UnsafeArchive, tarfile.TarError, EOFError, zlib.error) as exc:
        message = exc.message if isinstance(exc, QemuprovError) else str(exc)
        paths.remove_tree(staged)
        if isinstance(exc, RegistryUnreachable):
            return Miss("unreachable", message)
        return Miss("refused", f"binary cache {location}: refused the entry {cache_key[:16]}…: {safe_text(message)}; "
                               "nothing of it is installed")


def _binaries(record: Manifest, arches: tuple[str, ...]) -> list[str]:
    """The binaries a build for these arches installs (the daemon as the cached one has it)."""
    return [*(f"qemu-system-{a}" for a in arches), *(b for b in record.binaries if not b.startswith("qemu-system-"))]


def _unpack(layer: Path, staged: Path) -> None:
    staged.mkdir(parents=True, exist_ok=True)
    unpack.unpack(layer, staged)
