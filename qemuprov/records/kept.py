"""What qemuprov keeps besides the installs, where, how large, and which of it no install needs: build trees, git
mirrors, source tarballs, guest kits and fio, the compiler caches, the probe caches, and leftovers of runs that
were killed. The installs themselves are never part of it."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from qemuprov.infra import paths
from qemuprov.records import installs
from qemuprov.sources import trees


@dataclass(frozen=True)
class Kept:
    kind: str  # work, mirrors, tarballs, guest, ccache, cargo, probes, leftovers
    path: Path
    size: int  # bytes on disk
    needed: bool  # an install's recorded source, or a cache that makes the next build or verify faster
    why: str


@dataclass
class Inventory:
    items: list[Kept] = field(default_factory=list)

    def total(self, unneeded_only: bool = False) -> int:
        return sum(i.size for i in self.items if not (unneeded_only and i.needed))

    def by_kind(self) -> dict[str, tuple[int, int]]:
        """kind -> (count, bytes)."""
        found: dict[str, tuple[int, int]] = {}
        for item in self.items:
            count, size = found.get(item.kind, (0, 0))
            found[item.kind] = (count + 1, size + item.size)
        return found


def disk_usage(top: Path) -> int:
    """Bytes on disk under top, never following a link (iterative: any depth)."""
    total, stack = 0, [top]
    while stack:
        path = stack.pop()
        try:
            info = os.lstat(path)
        except OSError:
            continue
        total += info.st_blocks * 512
        if stat.S_ISDIR(info.st_mode):
            try:
                with os.scandir(path) as entries:
                    stack.extend(Path(e.path) for e in entries)
            except OSError:
                continue
    return total


def _protected() -> list[Path]:
    """Never touched: the install root and every install, wherever a setting put them."""
    return [paths.install_root().absolute(), *(e.prefix.absolute() for e in installs.list_installs())]


def inventory() -> Inventory:
    cache = paths.cache_dir()
    found = Inventory()
    if not cache.is_dir():
        return found
    every = installs.list_installs()
    recipes = {e.recipe for e in every}
    sources = [r for e in every if e.manifest for r in (e.manifest.source, e.manifest.virtiofsd_source) if r]
    mirrors = {trees.mirror_dir(r.url).name for r in sources if r.commit}
    tarballs = {r.sha256 for r in sources if r.sha256}
    protected = _protected()

    def add(kind: str, path: Path, needed: bool, why: str) -> None:
        if any(path.absolute() == p or p.is_relative_to(path.absolute()) for p in protected):
            return
        found.items.append(Kept(kind, path, disk_usage(path), needed, why))

    for path in _children(cache / "work"):
        installed = path.name in recipes
        add("work", path, installed, "the build tree of an installed recipe (rebuilds are incremental)"
            if installed else "the build tree of a recipe with no install")
    for path in _children(cache / "git"):
        add("mirrors", path, path.name in mirrors, "an install's source" if path.name in mirrors
            else "no install's source")
    for path in _children(cache / "tarballs"):
        used = path.name.split("-", 1)[0] in tarballs
        add("tarballs", path, used, "an install's source" if used else "no install's source")
    for path in _children(cache / "guest"):
        add("guest", path, True, "verify's and bench's guest kit, or bench's fio (fetched or built once)")
    for kind in ("ccache", "cargo"):
        if (cache / kind).exists():
            add(kind, cache / kind, True, "the compiler cache: the next build compiles less")
    for name in ("probes.json", "kvm.json"):
        if (cache / name).exists():
            add("probes", cache / name, True, "what binaries and KVM could do, known without asking again")
    stale = time.time() - LEFTOVER_AGE
    for path in [*_children(cache, "qemuprov-*-*"), *_children(cache / "guest", ".kit-*"),
                 *_children(cache / "git", ".init-*")]:
        info = path.lstat()
        # a run of an hour ago is over; and in a shared directory, another user's is theirs
        if stat.S_ISDIR(info.st_mode) and info.st_mtime < stale and info.st_uid == os.geteuid():
            add("leftovers", path, False, "left by a run that was killed")
    return found


LEFTOVER_AGE = 3600.0


def _children(directory: Path, pattern: str = "[!.]*") -> Iterable[Path]:
    return sorted(directory.glob(pattern)) if directory.is_dir() else []


def clean(items: list[Kept]) -> tuple[int, list[str]]:
    """Remove items (never an install); the bytes freed and what could not be removed."""
    protected = _protected()
    freed, failed = 0, []
    for item in items:
        if any(item.path.absolute() == p or p.is_relative_to(item.path.absolute()) for p in protected):
            continue
        left = paths.remove_tree(item.path)
        failed += left
        if not left:
            freed += item.size
    return freed, failed
