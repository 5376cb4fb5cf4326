"""Debian packages pinned by version, size and sha256, fetched over HTTP from their pool path and unpacked in
Python: no apt, no dpkg, no container. Tried in turn: the Debian mirror this host's apt uses (or the one a
setting names), then Debian's snapshot archive, which keeps every version Debian ever published, so a pin
outlives the mirror's next point release. Each file is checked against its pin before anything of it is used."""

from __future__ import annotations

import hashlib
import re
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import requests

from qemuprov.errors import InfraError
from qemuprov.infra import config, http, unpack

MIRROR_ENV = "QEMUPROV_DEBIAN_MIRROR"
SNAPSHOT_ENV = "QEMUPROV_DEBIAN_SNAPSHOT"
SNAPSHOT = "https://snapshot.debian.org"  # Debian's own archive of every published version
APT_SOURCES = Path("/etc/apt")
DEBIAN_SUITES = ("bookworm", "trixie", "forky", "bullseye", "sid", "stable", "testing", "unstable")
MIN_RATE = 128 << 10  # bytes/s a package must average, past the first minute
MAX_MEMBER = 1 << 30  # no pinned package holds more than this in one ar member


@dataclass(frozen=True)
class Pin:
    """One Debian binary package, by exact version; size and sha256 as the archive's index gives them."""

    package: str
    version: str  # with its epoch, as apt names it
    source: str  # the source package: the pool directory
    size: int
    sha256: str

    def filename(self, deb_arch: str) -> str:
        return f"{self.package}_{self.version.split(':', 1)[-1]}_{deb_arch}.deb"

    def pool_path(self, deb_arch: str) -> str:
        letter = self.source[:4] if self.source.startswith("lib") else self.source[0]
        return f"pool/main/{letter}/{self.source}/{self.filename(deb_arch)}"


def host_mirror(sources: Path | None = None) -> str | None:
    """The Debian mirror this host's apt already uses (any Debian suite); None where its apt knows none."""
    sources = sources or APT_SOURCES
    files = [*sorted(sources.glob("sources.list.d/*.sources")), *sorted(sources.glob("sources.list.d/*.list")),
             sources / "sources.list"]
    for path in files:
        try:
            text = path.read_text(errors="replace") if path.is_file() else ""
        except OSError:
            continue
        for stanza in text.split("\n\n"):  # deb822: URIs and Suites of one stanza
            uris = re.findall(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = " ".join(re.findall(r"^Suites:\s*(.+)$", stanza, re.M)).split()
            if uris and any(s.split("-")[0] in DEBIAN_SUITES for s in suites):
                return uris[0]
        for line in text.splitlines():  # one-line style: deb [opts] URI SUITE COMPONENTS
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb" and words[2].split("-")[0] in DEBIAN_SUITES:
                return words[1]
    return None


def _setting(env: str, key: str) -> str | None:
    found = config.setting(None, env, "guest", key, "a URL in quotes")
    if found and not re.match(r"^(https?|file)://\S+$", found):
        raise InfraError(f'{env} or [guest] {key}: "{found[:60]}" is not an http(s) or file URL',
                         hint="e.g. http://deb.example.org/debian")
    return found.rstrip("/") if found else None


def mirror() -> str | None:
    """$QEMUPROV_DEBIAN_MIRROR, else [guest] debian_mirror in config.toml, else the host's apt mirror."""
    return _setting(MIRROR_ENV, "debian_mirror") or (m.rstrip("/") if (m := host_mirror()) else None)


def snapshot() -> str:
    return _setting(SNAPSHOT_ENV, "debian_snapshot") or SNAPSHOT


def candidate_urls(pin: Pin, deb_arch: str, stamp: str) -> list[str]:
    """Where pin may be: the mirror's pool, then the snapshot archive as it was at stamp."""
    path = quote(pin.pool_path(deb_arch))
    found = [f"{m}/{path}"] if (m := mirror()) else []
    return [*found, f"{snapshot()}/archive/debian/{stamp}/{path}"]


def fetch(pin: Pin, deb_arch: str, stamp: str, dest_dir: Path) -> Path:
    """The pinned package in dest_dir, checked; InfraError naming every place tried and what each said."""
    tried = []
    for url in candidate_urls(pin, deb_arch, stamp):
        target = dest_dir / pin.filename(deb_arch)
        try:
            _download(url, target, pin)
            return target
        except _NotThere as exc:
            tried.append(f"{url}: {exc}")
    raise InfraError(f"could not fetch {pin.package} {pin.version} ({deb_arch}): " + "; ".join(tried),
                     hint=f"set {MIRROR_ENV} to a Debian mirror that carries it (or {SNAPSHOT_ENV} to a copy of "
                          "Debian's snapshot archive), or bring your own guest with --kernel and --initrd")


class _NotThere(Exception):
    """This place does not serve the pinned file (absent, unreachable, or something else under its name)."""


def _download(url: str, target: Path, pin: Pin) -> None:
    if url.startswith("file://"):
        source = Path(url.removeprefix("file://"))
        if not source.is_file() or source.stat().st_size != pin.size:
            raise _NotThere("no such file of the pinned size")
        shutil.copyfile(source, target)
        _check(target, pin)
        return
    deadline = time.monotonic() + 60 + pin.size / MIN_RATE
    digest, done = hashlib.sha256(), 0
    try:
        with http.session() as client, client.get(url, stream=True, timeout=30, proxies=http.proxies_for(url),
                                                   headers={"Accept-Encoding": "identity"}) as answer:
            if answer.status_code != 200:
                raise _NotThere(f"answered {answer.status_code}")
            with target.open("wb") as out:
                for chunk in answer.iter_content(1 << 20):
                    done += len(chunk)
                    if done > pin.size:
                        raise _NotThere(f"sent more than the pinned {pin.size} bytes")
                    if time.monotonic() > deadline:
                        raise _NotThere(f"too slow: {done} of {pin.size} bytes by the deadline")
                    digest.update(chunk)
                    out.write(chunk)
    except requests.RequestException as exc:
        target.unlink(missing_ok=True)
        raise _NotThere(http.describe_failure(exc, url)) from None
    except _NotThere:
        target.unlink(missing_ok=True)
        raise
    if done != pin.size or digest.hexdigest() != pin.sha256:
        target.unlink(missing_ok=True)
        raise _NotThere(f"served {done} bytes with sha256 {digest.hexdigest()[:16]}…, not the pinned "
                        f"{pin.size} bytes {pin.sha256[:16]}…")


def _check(path: Path, pin: Pin) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != pin.sha256:
        path.unlink(missing_ok=True)
        raise _NotThere(f"sha256 {digest.hexdigest()[:16]}…, not the pinned {pin.sha256[:16]}…")


class BadPackage(Exception):
    """A .deb that is no ar archive of the shape dpkg makes."""


def ar_members(deb: Path) -> list[tuple[str, int, int]]:
    """(name, offset, size) of each member of the ar archive deb, checked against the file's size."""
    total = deb.stat().st_size
    found = []
    with deb.open("rb") as handle:
        if handle.read(8) != b"!<arch>\n":
            raise BadPackage("not an ar archive")
        offset = 8
        while offset < total:
            header = handle.read(60)
            if len(header) != 60 or header[58:60] != b"`\n":
                raise BadPackage(f"a damaged member header at byte {offset}")
            name = header[:16].decode("ascii", errors="replace").strip().rstrip("/")
            size_field = header[48:58].decode("ascii", errors="replace").strip()
            if not size_field.isdigit() or int(size_field) > min(MAX_MEMBER, total - offset - 60):
                raise BadPackage(f"member {name!r} claims {size_field!r} bytes, more than the file holds")
            size = int(size_field)
            found.append((name, offset + 60, size))
            offset += 60 + size + (size & 1)
            handle.seek(offset)
    return found


def unpack_deb(deb: Path, root: Path, work: Path) -> None:
    """The package's files (its data.tar.*) into root, through the checked unpack."""
    members = [m for m in ar_members(deb) if m[0].startswith("data.tar")]
    if len(members) != 1:
        raise BadPackage("no single data.tar member")
    name, offset, size = members[0]
    if name.endswith(".zst"):
        raise BadPackage("a zstd data member, which Python's tarfile cannot read")
    data = work / name
    with deb.open("rb") as source, data.open("wb") as out:
        source.seek(offset)
        left = size
        while left and (chunk := source.read(min(1 << 20, left))):
            out.write(chunk)
            left -= len(chunk)
    root.mkdir(parents=True, exist_ok=True)
    try:
        unpack.unpack(data, root)
    except (unpack.UnsafeArchive, tarfile.TarError, EOFError, OSError) as exc:
        raise BadPackage(f"its {name} cannot be unpacked ({exc})") from None
    finally:
        data.unlink(missing_ok=True)
