"""Where qemuprov keeps things: shipped data, the user's recipes, installs, caches (XDG through platformdirs)."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import platformdirs

_PACKAGE = Path(__file__).resolve().parent.parent  # qemuprov/, above infra/


def shipped_dir(kind: str) -> Path:
    """`recipes`, `containers` or `patches`: inside the wheel when installed, at the top of the checkout
    otherwise."""
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
        try:
            ours = os.lstat(leftover).st_uid == os.geteuid()  # in a shared directory, another user's is theirs
        except FileNotFoundError:
            continue
        if ours and ((not pid.isdigit() and pidless) or (pid.isdigit() and not Path(f"/proc/{pid}").exists())):
            remove_tree(leftover)


def remove_tree(top: Path) -> list[str]:
    """Remove top and everything below it, whatever made it (a guest, an engine, a tarball): iteratively and
    through directory descriptors, so neither the depth (shutil.rmtree's recursion) nor the length of the names
    (PATH_MAX) stops it; never following a link (a link goes, not what it names). What could not go, in words."""
    failed: list[str] = []
    try:
        if not stat.S_ISDIR(os.lstat(top).st_mode):
            os.unlink(top)
            return failed
        fd = os.open(top, _DIR_FLAGS)
    except FileNotFoundError:
        return failed
    except OSError as exc:
        return [f"{top}: {exc.strerror}"]
    levels: list[tuple[list[str], str]] = []  # above the current directory: (its siblings to do, its own name)
    pending = _empty_files(fd, top, failed)
    while True:
        if pending:
            name = pending.pop()
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                failed.append(f"{top}/…/{name}: {exc.strerror}")
                continue
            levels.append((pending, name))
            os.close(fd)
            fd = child
            pending = _empty_files(fd, top, failed)
            continue
        if not levels:
            os.close(fd)
            break
        pending, name = levels.pop()
        parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
        os.close(fd)
        fd = parent
        try:
            os.rmdir(name, dir_fd=fd)
        except OSError as exc:
            failed.append(f"{top}/…/{name}: {exc.strerror}")
    try:
        os.rmdir(top)
    except FileNotFoundError:
        pass
    except OSError as exc:
        failed.append(f"{top}: {exc.strerror}")
    return failed


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _empty_files(fd: int, top: Path, failed: list[str]) -> list[str]:
    """Unlink every entry of the directory fd that is not a directory; the names of those that are."""
    directories = []
    try:
        with os.scandir(fd) as entries:
            found = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    except OSError as exc:
        failed.append(f"{top}/…: {exc.strerror}")
        return []
    for name, is_dir in found:
        if is_dir:
            directories.append(name)
            continue
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            failed.append(f"{top}/…/{name}: {exc.strerror}")
    return directories


@contextlib.contextmanager
def scratch_dir(prefix: str, parent: Path | None = None) -> Iterator[Path]:
    """A fresh private directory (as tempfile.mkdtemp makes it), removed with remove_tree however deep what
    was put in it (a guest's share, an engine's output)."""
    made = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield made
    finally:
        remove_tree(made)


SIDE_KINDS = ("stage", "new", "old", "remove")  # what an install makes beside its prefix, and cleans up


def side_path(prefix: Path, kind: str) -> Path:
    """A path beside prefix for kind (the staging, the incoming and outgoing trees of the swap, a tree being
    removed): its pid, so a killed build's leftovers are known as such, and a random part, so nobody who can
    write the same directory (a shared one, with other users) can make it first."""
    assert kind in SIDE_KINDS
    return prefix.parent / f".qemuprov-{kind}-{prefix.name}-{os.getpid()}.{secrets.token_hex(6)}"


def make_side_dir(prefix: Path, kind: str) -> Path:
    """side_path, made here and now: a fresh directory only this user can enter (never one found there)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    while True:
        made = side_path(prefix, kind)
        try:
            made.mkdir(mode=0o700)
            return made
        except FileExistsError:
            continue


def remove_dead_side_paths(prefix: Path) -> None:
    """What a killed build or remove left beside prefix: the side paths whose pid no longer runs."""
    for kind in SIDE_KINDS:
        remove_dead_leftovers(prefix.parent, f".qemuprov-{kind}-{prefix.name}-*",
                              lambda name: name.rsplit("-", 1)[-1].split(".")[0])  # PID.random[.layer.tar.gz]
