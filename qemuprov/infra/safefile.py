"""Read a small file someone else may control (a config, a lock file, Docker's config.json, a manifest) without
letting it steer us: only a regular file (a FIFO would block for ever, /dev/zero never ends), opened without
blocking, and never more than a cap. `follow=False` also refuses a symlink in the last component."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

SMALL = 4 << 20  # configs and lock files are a few KB


class NotReadable(OSError):
    """The path is there but is no regular file of at most the cap (errno and strerror say which)."""


def read_bytes(path: Path, cap: int = SMALL, *, follow: bool = True) -> bytes:
    """The whole file, at most cap bytes. FileNotFoundError where it is missing; NotReadable for a FIFO, a
    device, a directory, a link (follow=False), or a file larger than the cap."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link
            raise NotReadable(exc.errno, "a symbolic link, which is not followed", str(path)) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotReadable(errno.EINVAL, "not a regular file", str(path))
        if info.st_size > cap:
            raise NotReadable(errno.EFBIG, f"larger than {cap >> 10} KiB", str(path))
        chunks, size = [], 0
        while chunk := os.read(fd, min(1 << 20, cap + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:  # grew while read
                raise NotReadable(errno.EFBIG, f"larger than {cap >> 10} KiB", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: Path, cap: int = SMALL, *, follow: bool = True) -> str:
    """As read_bytes, decoded as UTF-8 (UnicodeDecodeError where it is not)."""
    return read_bytes(path, cap, follow=follow).decode()
