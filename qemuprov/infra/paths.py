"""Where qemuprov keeps things: shipped data, the user's recipes, installs, caches (XDG through platformdirs)."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import platformdirs

_PACKAGE = Path(__file__).resolve().parent.parent  # qemuprov/, above infra/


def shipped_dir(kind: str) -> Path:
    """`recipes` or `containers`: inside the wheel when installed, at the top of the checkout otherwise."""
    inside = _PACKAGE / "_data" / kind
    return inside if inside.is_dir() else _PACKAGE.parent / kind


def user_recipes_dir() -> Path:
    return Path(platformdirs.user_config_dir("qemuprov")) / "recipes"


def user_containers_dir() -> Path:
    return Path(platformdirs.user_config_dir("qemuprov")) / "containers"


def builder_names() -> tuple[str, ...]:
    """Builder images: `containers/builder-<name>.Dockerfile`, shipped or the user's own."""
    names: set[str] = set()
    for directory in (shipped_dir("containers"), user_containers_dir()):
        if directory.is_dir():
            names.update(p.name[len("builder-"):-len(".Dockerfile")]
                         for p in directory.glob("builder-*.Dockerfile"))
    return tuple(sorted(names))


def install_root() -> Path:
    """Where `qemuprov build NAME` installs `<root>/NAME`; QEMUPROV_ROOT overrides."""
    override = os.environ.get("QEMUPROV_ROOT")
    return Path(override) if override else Path(platformdirs.user_data_dir("qemuprov")) / "installs"


def cache_dir() -> Path:
    override = os.environ.get("QEMUPROV_CACHE")
    return Path(override) if override else Path(platformdirs.user_cache_dir("qemuprov"))


def fingerprint(path: Path) -> str:
    """A file as caches know it: real path, size, mtime and ctime; any change to the file changes it."""
    real = path.resolve()
    st = real.stat()
    return f"{real}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"


def work_dir(recipe: str) -> Path:
    """A recipe's work directory: src/ (the fetched tree), build*/ (build trees), logs/, running/ (its steps)."""
    return cache_dir() / "work" / recipe


def remove_dead_leftovers(directory: Path, pattern: str, pid_of: Callable[[str], str], pidless: bool = False) -> None:
    """Remove what a killed qemuprov left in directory: the entries matching pattern whose name holds the pid
    (pid_of: the pid's part of the name) of a process that no longer runs; with pidless, also those whose name
    holds no pid (only in a directory qemuprov alone writes: beside a user's prefix, such a name is the user's)."""
    if not directory.is_dir():
        return
    for leftover in directory.glob(pattern):
        pid = pid_of(leftover.name)
        if (not pid.isdigit() and pidless) or (pid.isdigit() and not Path(f"/proc/{pid}").exists()):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def remove_tree(top: Path) -> list[str]:
    """Remove top and everything below it: iteratively (a tree of any depth, which shutil.rmtree's recursion
    cannot take), never following a link (a link goes, not what it names). What could not be removed, in words."""
    failed: list[str] = []
    stack: list[tuple[Path, bool]] = [(top, False)]
    while stack:
        path, emptied = stack.pop()
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            failed.append(f"{path}: {exc.strerror}")
            continue
        try:
            if not stat.S_ISDIR(mode):
                os.unlink(path)
            elif emptied:
                os.rmdir(path)
            else:
                stack.append((path, True))
                with os.scandir(path) as entries:
                    stack.extend((Path(entry.path), False) for entry in entries)
        except FileNotFoundError:
            continue
        except OSError as exc:
            failed.append(f"{path}: {exc.strerror}")
    return failed
