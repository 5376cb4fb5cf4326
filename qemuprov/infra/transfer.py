"""Files between this machine and a container whose engine cannot see them (docker:dind, a tcp:// or ssh:// host,
another mount namespace), through the engine's archive API: inputs go in as tar archives, only what changed since
the last copy into the same volume; outputs come out as archives and are unpacked here as any archive from
outside is (infra.unpack: no names outside, no devices, a size limit)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from qemuprov.infra import paths, unpack

# What the last copy put where a container sees it: container path -> [kind, size, mtime_ns, mode, link].
Listing = dict[str, list[Any]]
LISTING_NAME = ".qemuprov-copied.json"  # kept in the work volume, beside what it describes
MAX_LISTING = 64 << 20  # a QEMU tree's listing is about 3 MB


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int


def listing(host: Path, inside: str) -> Listing:
    """Every directory, file and symlink at and under host, by the path a container sees it at (inside);
    empty where host does not exist."""
    found: Listing = {}
    try:
        top = os.lstat(host)
    except FileNotFoundError:
        return found
    found[inside] = _entry(host, top)
    if not stat.S_ISDIR(top.st_mode):
        return found
    for dirpath, dirnames, filenames in os.walk(host):
        relative = os.path.relpath(dirpath, host)
        base = inside if relative == "." else f"{inside}/{relative}"
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            if stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode):
                found[f"{base}/{name}"] = _entry(Path(path), info)
    return found


def _entry(path: Path, info: os.stat_result) -> list[Any]:
    if stat.S_ISLNK(info.st_mode):
        return ["l", 0, 0, 0, os.readlink(path)]
    kind = "d" if stat.S_ISDIR(info.st_mode) else "f"
    return [kind, info.st_size if kind == "f" else 0, info.st_mtime_ns if kind == "f" else 0,
            stat.S_IMODE(info.st_mode), ""]


@dataclass(frozen=True)
class Changes:
    put: list[str]  # container paths to (re)write, parents first
    removed: list[str]  # container paths that are gone here
    listing: Listing  # what the container holds once both are done


def changes(roots: Mapping[str, Listing], before: Listing) -> Changes:
    """What to copy so that each root (container path -> its listing here) matches this machine; entries of
    before outside every root stay as they are."""
    now = {path: entry for found in roots.values() for path, entry in found.items()}

    def under_a_root(path: str) -> bool:
        return any(path == root or path.startswith(root + "/") for root in roots)

    kept = {path: entry for path, entry in before.items() if not under_a_root(path)}
    put = sorted(path for path, entry in now.items() if before.get(path) != entry)
    removed = sorted(path for path in before if under_a_root(path) and path not in now)
    return Changes(put, removed, {**kept, **now})


def write_archive(out: IO[bytes], paths: Iterable[str], host_of: Mapping[str, Path], owner: Owner,
                  extra: Mapping[str, bytes] = {}) -> None:
    """A tar of the given container paths (from their host files), owned by owner, rooted at /; extra: files
    made from bytes."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for inside in paths:
            info = tar.gettarinfo(str(host_of[inside]), arcname=inside.lstrip("/"))
            info.uid, info.gid, info.uname, info.gname = owner.uid, owner.gid, "", ""
            if info.isreg():
                with open(host_of[inside], "rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
        for inside, data in extra.items():
            info = tarfile.TarInfo(inside.lstrip("/"))
            info.size, info.uid, info.gid, info.mode = len(data), owner.uid, owner.gid, 0o644
            tar.addfile(info, io.BytesIO(data))


def host_paths(roots: Mapping[str, Path], paths: Iterable[str]) -> dict[str, Path]:
    """The host file of each container path, from the roots (container path -> host path) it lies under."""
    found: dict[str, Path] = {}
    for inside in paths:
        root = max((r for r in roots if inside == r or inside.startswith(r + "/")), key=len)
        found[inside] = roots[root] / inside[len(root):].lstrip("/") if inside != root else roots[root]
    return found


def read_listing(container: Any, path: str) -> Listing:
    """The listing a previous copy left in the container at path; empty when there is none or it is not one."""
    import docker.errors

    try:
        chunks, _ = container.get_archive(path)
        with _spooled(chunks, MAX_LISTING) as archive, tarfile.open(fileobj=archive, mode="r|") as tar:
            for member in tar:
                handle = tar.extractfile(member) if member.isreg() else None
                found = json.loads(handle.read(MAX_LISTING)) if handle else None
                return found if isinstance(found, dict) else {}
    except (docker.errors.NotFound, tarfile.TarError, ValueError, OverflowError, RecursionError):
        return {}
    return {}


def copy_out(container: Any, inside: str, host_parent: Path) -> bool:
    """The container's file or directory at inside, unpacked into host_parent (under its own name); False
    when the container has none."""
    import docker.errors

    try:
        chunks, _ = container.get_archive(inside)
    except docker.errors.NotFound:
        return False
    host_parent.mkdir(parents=True, exist_ok=True)
    wanted = os.path.basename(inside.rstrip("/"))
    # Unpacked aside first: an engine that sends other names beside the one asked for (another install under
    # the same parent, say) gets nothing of this machine's overwritten.
    with paths.scratch_dir(".qemuprov-out-", host_parent) as scratch:
        archive, landed = scratch / "out.tar", scratch / "unpacked"
        with archive.open("wb") as out:
            _copy_bounded(chunks, out, unpack.limit())
        landed.mkdir()
        unpack.unpack(archive, landed, top=wanted)  # its own directory is its root: no link leads beside it
        found = sorted(p.name for p in landed.iterdir())
        if found != [wanted]:
            raise unpack.UnsafeArchive(f"the engine sent {found[:5]} for {inside}, not {wanted} alone")
        _merge(landed / wanted, host_parent / wanted)
    return True


def _merge(source: Path, target: Path) -> None:
    """Move source to target; into it, file by file, where target is a directory already (the staging of an
    earlier session of the same build)."""
    if not target.is_dir() or source.is_symlink() or not source.is_dir():
        os.replace(source, target)
        return
    shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True, copy_function=os.replace)


@contextlib.contextmanager
def _spooled(chunks: Iterable[bytes], most: int) -> Iterator[IO[bytes]]:
    with tempfile.SpooledTemporaryFile(max_size=8 << 20) as buffer:
        _copy_bounded(chunks, buffer, most)
        buffer.seek(0)
        yield buffer  # type: ignore[misc]


def _copy_bounded(chunks: Iterable[bytes], out: IO[bytes], most: int) -> None:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > most:
            raise unpack.UnsafeArchive(f"the engine sent more than {most >> 20} MiB")
        out.write(chunk)


class Copier:
    """Keeps a container's copies of this machine's inputs current and brings its outputs back: `prepare` once
    the container runs, `sync` before each step (only what changed goes in), `finish` after the last."""

    def __init__(self, container: Any, inputs: Mapping[str, Path], outputs: Mapping[str, Path], owner: Owner,
                 volume: str | None) -> None:
        self.container = container
        self.inputs = dict(inputs)  # container path -> host path
        self.outputs = dict(outputs)
        self.owner = owner
        self.volume = volume  # the container path of the volume that outlives the container, if any
        self._before: Listing = {}

    def prepare(self, owned: Iterable[str]) -> None:
        """Make the directories steps write in (owned by the step user) and the parents of the inputs; read what
        an earlier copy left in the volume."""
        made = sorted({*owned, *(os.path.dirname(p) for p in self.outputs)})
        parents = sorted({os.path.dirname(p) for p in self.inputs} - set(made))
        if made:
            self._root_exec(["sh", "-c", 'mkdir -p "$@" && chown "$0" "$@"', f"{self.owner.uid}:{self.owner.gid}",
                             *made])
        if parents:
            self._root_exec(["mkdir", "-p", *parents])
        if self.volume:
            self._before = read_listing(self.container, f"{self.volume}/{LISTING_NAME}")

    def sync(self) -> int:
        """Copy what changed here since the last copy; the number of paths written or removed."""
        roots = {inside: listing(host, inside) for inside, host in self.inputs.items()}
        found = changes(roots, self._before)
        if not found.put and not found.removed:
            return 0
        for start in range(0, len(found.removed), 500):
            self._root_exec(["rm", "-rf", "--", *found.removed[start:start + 500]])
        kept = {}
        if self.volume:
            saved = {p: e for p, e in found.listing.items() if p.startswith(self.volume + "/")}
            kept = {f"{self.volume}/{LISTING_NAME}": json.dumps(saved, separators=(",", ":")).encode()}
        with tempfile.TemporaryFile() as archive:
            write_archive(archive, found.put, host_paths(self.inputs, found.put), self.owner, kept)
            archive.seek(0)
            if not self.container.put_archive("/", archive):
                raise OSError("the engine refused the archive of the build's inputs")
        self._before = found.listing
        return len(found.put) + len(found.removed)

    def finish(self) -> None:
        for inside, host in self.outputs.items():
            copy_out(self.container, inside, host.parent)

    def _root_exec(self, argv: list[str]) -> None:
        status, output = self.container.exec_run(argv, user="0:0")
        if status != 0:
            raise OSError(f"{argv[0]} in the build container failed ({status}): "
                          f"{output.decode(errors='replace')[-200:]}")
