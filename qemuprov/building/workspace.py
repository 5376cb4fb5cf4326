"""Every path of one build, made in one place: the recipe's work directory (source trees and their stamps, build
trees, the cargo target, the running steps, timestamped logs), the file locks, and the install's side of it (the
staging directory beside the prefix, the staged tree, staged and final paths both ways, a pulled tree's paths
re-based). Cleanup after a killed build matches what is made here, because the names come from here."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import filelock

from qemuprov.errors import InfraError
from qemuprov.infra import paths
from qemuprov.infra.procs import RunningGroups
from qemuprov.infra.progress import Reporter
from qemuprov.recipe import Recipe
from qemuprov.sources import patching, trees
from qemuprov.sources.revision import Resolution

TREES = {"qemu": "src", "virtiofsd": "virtiofsd-src"}  # a recipe's source section -> its tree in the work dir
LATEST_LOG = "build.log"  # the work dir's link to the newest build log


def lock_key(prefix: Path) -> str:
    return "prefix-" + hashlib.sha256(str(prefix).encode()).hexdigest()[:16]


@contextmanager
def held_lock(key: str, what: str, hint: str) -> Iterator[None]:
    """A file lock under the cache's locks/, taken now or refused with `what` (no waiting)."""
    lock_file = paths.cache_dir() / "locks" / f"{key}.lock"
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    held = filelock.FileLock(str(lock_file))
    try:
        held.acquire(timeout=0)
    except filelock.Timeout:
        raise InfraError(f"{what} (lock {lock_file})", hint=hint) from None
    try:
        yield
    finally:
        held.release()


@contextmanager
def timestamped_log(root: Path, kind: str, latest: str | None = None) -> Iterator[tuple[IO[str], Path]]:
    """A new log root/logs/KIND-<UTC time>.log, open for writing; `latest`, where given, links to it."""
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"{kind}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.log"
    with path.open("w") as log:
        if latest:
            link = root / latest
            link.unlink(missing_ok=True)
            link.symlink_to(path)
        yield log, path


@dataclass
class Workspace:
    """One recipe's build into one prefix. The log and the staging exist between `begin` and its end."""

    recipe: str
    prefix: Path
    root: Path  # the recipe's work dir, under the cache
    tree_prefix: Path | None = None  # the prefix the QEMU tree is configured for, once planned (else the install's)
    _log: tuple[IO[str], Path] | None = field(default=None, repr=False)
    _staging: Path | None = None

    @classmethod
    def of(cls, recipe: str, prefix: Path) -> Workspace:
        return cls(recipe, prefix, paths.work_dir(recipe))

    # --- the work dir
    def tree(self, section: str) -> Path:
        return self.root / TREES[section]

    def stamp(self, section: str) -> Path:
        return self.root / f"{TREES[section]}.stamp"

    def fetch(self, section: str, recipe: Recipe, resolution: Resolution, report: Reporter) -> Path:
        """The section's tree at the resolved revision with the recipe's patches applied, fetched again only
        when the revision or a patch changed (the stamp is written once the tree is whole and patched)."""
        src, stamp = self.tree(section), self.stamp(section)
        patches = recipe.patches(section)
        wanted = resolution.record.revision + patching.stamp(patches)
        if src.is_dir() and stamp.exists() and stamp.read_text() == wanted:
            return src
        stamp.unlink(missing_ok=True)
        trees.fetch(recipe.sources()[section], src, section, report=report, resolution=resolution)
        if patches:
            report.step("patch", f"{', '.join(p.name for p in patches)} onto {src}")
            patching.apply(src, patches, recipe.path, section)
        stamp.write_text(wanted)
        return src

    def build_dir(self, runner_name: str | None, builder: str) -> Path:
        """One build tree per runner and builder (None: the host), so host and container builds don't undo each
        other."""
        return self.root / ("build" if runner_name is None else f"build-{runner_name}-{builder}")

    def build_dirs(self) -> list[Path]:
        return sorted(self.root.glob("build*/"))

    @property
    def pch_wrapper(self) -> Path:
        return self.root / "pch-cc"

    @property
    def cargo_target(self) -> Path:
        return self.root / "virtiofsd-target"

    @property
    def running(self) -> RunningGroups:
        return RunningGroups(self.root / "running")

    # --- locks: one build of a recipe at a time, and one install into a prefix at a time
    @contextmanager
    def locked(self) -> Iterator[None]:
        with ExitStack() as stack:
            stack.enter_context(held_lock(self.recipe, f"another qemuprov build of {self.recipe} is running",
                                          "wait for it to finish; builds of other recipes can run meanwhile"))
            stack.enter_context(held_lock(lock_key(self.prefix),
                                          f"another qemuprov build is installing into {self.prefix}",
                                          "wait for it to finish, or build into another --prefix"))
            yield

    def clean_up_after_killed_builds(self) -> RunningGroups:
        """Steps a killed build of this recipe left running (the lock is ours now) and what it left beside the
        prefix; the running groups, for this build's runner."""
        groups = self.running
        groups.stop_orphans()
        paths.remove_dead_side_paths(self.prefix)
        return groups

    # --- the build proper: its log and its staging
    @contextmanager
    def begun(self) -> Iterator[None]:
        """The build's log (root/logs, root/build.log links to it) and its staging directory beside the prefix
        (same file system: the swap is a rename), always removed at the end."""
        with timestamped_log(self.root, "build", LATEST_LOG) as log:
            staging = paths.make_side_dir(self.prefix, "stage")
            self._log, self._staging = log, staging
            try:
                yield
            finally:
                paths.remove_tree(staging)

    @property
    def log(self) -> IO[str]:
        assert self._log is not None, "the build has not begun"
        return self._log[0]

    @property
    def log_path(self) -> Path:
        assert self._log is not None, "the build has not begun"
        return self._log[1]

    @property
    def ccache_log(self) -> Path:
        return self.log_path.with_suffix(".ccache")

    @property
    def staging(self) -> Path:
        assert self._staging is not None, "the build has not begun"
        return self._staging

    @property
    def staged(self) -> Path:
        """Where the install is made: the tree's configured prefix under staging (as `DESTDIR=staging` puts it)."""
        return self.staging / (self.tree_prefix or self.prefix).relative_to("/")

    def final(self, staged: Path) -> Path:
        """Where a path of the staged tree will be once the install is swapped in."""
        return self.prefix / staged.relative_to(self.staged)

    def staged_of(self, final: str) -> str:
        """The staged twin of a final path under the prefix; a path elsewhere (the distribution's firmware) as is."""
        path = Path(final)
        return str(self.staged / path.relative_to(self.prefix)) if path.is_relative_to(self.prefix) else final

    def rebased(self, path: str, built_at: Path) -> str:
        """A path a pulled entry recorded under the prefix it was built at, moved under this install's prefix."""
        found = Path(path)
        return str(self.prefix / found.relative_to(built_at)) if found.is_relative_to(built_at) else path
