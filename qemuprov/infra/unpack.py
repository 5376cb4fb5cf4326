"""Unpack a tarball someone else made (a binary cache layer, a source tarball) without trusting it: checked
here, member by member, on every Python qemuprov accepts (3.11.2 has no extraction filters).

Kept: regular files, directories, symlinks whose target stays inside, and hard links to an earlier regular
member. Refused: absolute or `..` names, a member under a symlink, devices, fifos, sockets. Owners are the
installing user's; modes lose setuid, setgid, sticky and group/world write. The bytes written are counted
against a limit, so a small archive that inflates without end (a gzip bomb) stops there."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path, PurePosixPath
from typing import IO

from qemuprov.infra import config

DEFAULT_LIMIT = 8 << 30  # a QEMU source tree is about 1 GB unpacked, an install of both arches 0.3 GB
MAX_MEMBERS = 200_000
CHUNK = 1 << 20


class UnsafeArchive(Exception):
    """The archive holds a member that must not be unpacked, or more than the limit allows."""


HEADER_CAP = 1 << 20  # a pax or GNU long-name header: real ones are a few hundred bytes


class _BoundedInfo(tarfile.TarInfo):
    """tarfile reads a pax or GNU long-name header whole into memory: one past the cap is refused unread."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        headers = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                   tarfile.GNUTYPE_LONGLINK)
        if self.type in headers and self.size > HEADER_CAP:
            raise UnsafeArchive(f"a {self.size}-byte extended header (at most {HEADER_CAP} are read)")
        return super()._proc_member(tarfile_)  # type: ignore[misc]


def limit() -> int:
    return config.limit("QEMUPROV_UNPACK_LIMIT", "unpack", DEFAULT_LIMIT)


def unpack(archive: Path, dest: Path, max_bytes: int | None = None, top: str | None = None) -> int:
    """Unpack archive (any compression tarfile reads) into dest, which must exist; the bytes written.
    top: the one directory the archive may hold (an output of a build, named as asked): every member lies
    inside it and every symlink stays inside it, so nothing in it can point at its neighbours once it is moved
    into place. A refused member raises UnsafeArchive; what was unpacked before it stays in dest for the caller
    to remove."""
    budget = limit() if max_bytes is None else max_bytes
    written = members = 0
    files: set[str] = set()  # regular members so far, the only targets a hard link may name
    root = dest.resolve()
    with tarfile.open(archive, mode="r|*", tarinfo=_BoundedInfo) as tar:
        for member in tar:
            members += 1
            if members > MAX_MEMBERS:
                raise UnsafeArchive(f"more than {MAX_MEMBERS} members")
            name = _inside_name(member.name)
            if name is None:
                continue  # the archive's root, "." or "./"
            if top is not None and name != top and not name.startswith(f"{top}/"):
                raise UnsafeArchive(f"{member.name}: outside {top}, the one directory asked for")
            target = root / name
            members += _check_parent(root, target, member.name)
            if members > MAX_MEMBERS:
                raise UnsafeArchive(f"more than {MAX_MEMBERS} members and the directories their names imply")
            if member.isdir():
                _replace_non_dir(target, member.name)
                target.mkdir(exist_ok=True)
                os.chmod(target, _dir_mode(member.mode))
            elif member.isreg():
                if written + member.size > budget:
                    raise UnsafeArchive(f"unpacks to more than the limit of {budget >> 20} MiB (at {member.name}; "
                                        "QEMUPROV_UNPACK_LIMIT or [limits] unpack in config.toml raises it)")
                source = tar.extractfile(member)
                assert source is not None
                written += _write_file(source, target, member.size, member.name)
                os.chmod(target, _file_mode(member.mode))
                files.add(name)
            elif member.issym():
                _check_link_target(name if top is None else name[len(top):].lstrip("/") or ".", member.linkname)
                _remove(target, member.name)
                os.symlink(member.linkname, target)
                files.discard(name)
            elif member.islnk():
                try:
                    linked = _inside_name(member.linkname)
                except UnsafeArchive:
                    linked = None
                if linked is None or linked not in files:
                    raise UnsafeArchive(f"{member.name}: a hard link to {member.linkname}, which is no earlier "
                                        "file of the archive")
                _remove(target, member.name)
                os.link(root / linked, target, follow_symlinks=False)
                files.add(name)
            else:
                raise UnsafeArchive(f"{member.name}: a {_kind(member)}, which an install never holds")
            if not member.issym():
                os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)
    return written


def _inside_name(name: str) -> str | None:
    """The member's path relative to the archive's root, normalised; None for the root itself.
    Raises for absolute names and names that climb out with `..`."""
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/"):
        raise UnsafeArchive(f"{name}: an absolute name")
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if not parts:
                raise UnsafeArchive(f"{name}: leads outside the archive")
            parts.pop()
        elif part not in (".", ""):
            parts.append(part)
    return "/".join(parts) or None


def _check_link_target(name: str, linkname: str) -> None:
    """A symlink may climb with leading `..` no higher than the root, then only descend. (A `..` after a
    component could climb out through another symlink: `s -> ..` then `s/../x`.)"""
    parts = [p for p in PurePosixPath(linkname).parts if p not in (".", "")]
    climbs = 0
    while climbs < len(parts) and parts[climbs] == "..":
        climbs += 1
    depth = len(PurePosixPath(name).parts) - 1
    if linkname.startswith("/") or not parts or climbs > depth or ".." in parts[climbs:]:
        raise UnsafeArchive(f"{name}: a symlink to {linkname}, which may lead outside the archive")


def _check_parent(root: Path, target: Path, name: str) -> int:
    """Every directory on the way to target is a real directory inside root (not a symlink a member made); the
    number made, which count against the member budget (200 members of a few KB must not make 400,000)."""
    current, made = root, 0
    for part in target.relative_to(root).parts[:-1]:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            current.mkdir()
            made += 1
            continue
        if not stat.S_ISDIR(mode):
            raise UnsafeArchive(f"{name}: lies under {current.relative_to(root)}, which is not a directory")
    return made


def _remove(target: Path, name: str) -> None:
    """Make room for a member: an earlier file or link of the same name goes (the link, not what it names)."""
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        raise UnsafeArchive(f"{name}: replaces a directory of the archive")
    target.unlink()


def _replace_non_dir(target: Path, name: str) -> None:
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        raise UnsafeArchive(f"{name}: a directory where the archive put a file or link")


def _write_file(source: IO[bytes], target: Path, size: int, name: str) -> int:
    _remove(target, name)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    written = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(min(CHUNK, size - written)):
            out.write(chunk)
            written += len(chunk)
            if written >= size:
                break
    if written != size:
        raise UnsafeArchive(f"{name}: the archive ends inside this member")
    return written


def _file_mode(mode: int) -> int:
    """No setuid, setgid or sticky bit, no group or world write; the owner can always read and write."""
    return (mode & 0o755) | 0o600


def _dir_mode(mode: int) -> int:
    return (mode & 0o755) | 0o700


def _kind(member: tarfile.TarInfo) -> str:
    if member.ischr() or member.isblk():
        return "device node"
    if member.isfifo():
        return "fifo"
    return f"member of type {member.type!r}"
