"""A recipe's sources, each resolved once: from the recipe's lock file where it has one, else from the remote
(git ls-remote, or the tarball's checksum); --update-lock moves the lock file to what the refs name now."""

from __future__ import annotations

from dataclasses import dataclass

from qemuprov.infra.progress import Reporter
from qemuprov.recipe import Recipe
from qemuprov.sources import lockfiles, trees
from qemuprov.sources.revision import Resolution


@dataclass(frozen=True)
class Resolved:
    qemu: Resolution | None
    virtiofsd: Resolution | None

    @property
    def revisions(self) -> tuple[str | None, str | None]:
        return (self.qemu.record.revision if self.qemu else None,
                self.virtiofsd.record.revision if self.virtiofsd else None)

    @property
    def lock(self) -> str | None:
        """The lock file the commits came from; None: resolved from the refs."""
        return next((str(r.locked) for r in (self.qemu, self.virtiofsd) if r and r.locked), None)


def resolve(recipe: Recipe, update_lock: bool, report: Reporter) -> Resolved:
    locked = lockfiles.read(recipe)
    if update_lock and lockfiles.git_sources(recipe):
        locked = lockfiles.make(recipe)
        lockfiles.write(locked)
        report.step("lock", f"{locked.path} moved to what the refs name now")
    found: dict[str, Resolution] = {}
    for section, src in recipe.sources().items():
        label = "" if section == "qemu" else "virtiofsd "
        if locked and section in locked.sources:
            found[section] = lockfiles.resolution(locked, section)
            report.step("resolve", f"{label}{src.describe()}: locked at {locked.sources[section].commit[:12]} "
                                   f"({locked.path})")
        else:
            report.step("resolve", label + src.describe())
            found[section] = trees.resolve(src, section)
    return Resolved(found.get("qemu"), found.get("virtiofsd"))
