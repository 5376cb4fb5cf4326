"""Does a recipe name the newest release? One `git ls-remote` per git source (no clone): the newest release in
the series the recipe names (v11.0.x) and the newest overall; release candidates and other tags are ignored."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from packaging.version import InvalidVersion, Version

from qemuprov.errors import QemuprovError
from qemuprov.recipe import Recipe, Source
from qemuprov.sources import gitcmd, trees

RELEASE_TAG = re.compile(r"^v?(\d+\.\d+(?:\.\d+)?)$")  # v11.1.1, v1.14.0; not v11.1.0-rc3, not dax-2022-...


class Currency(StrEnum):
    CURRENT = "current"
    OUTDATED = "outdated"  # a newer release in the same series: a fix release is due
    NEWER_SERIES = "newer series"  # current in its series, but a newer series is out
    BRANCH = "branch"  # a branch (not a release): its head is reported
    MOVED = "moved"  # a branch whose head is no longer the recipe's pin
    NOT_CHECKABLE = "not checkable"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class Report:
    recipe: str
    section: str  # qemu, virtiofsd
    url: str
    names: str  # what the recipe names (its ref, and pin)
    series_newest: str | None = None
    newest: str | None = None
    status: Currency = Currency.CURRENT
    detail: str = ""

    @property
    def due(self) -> bool:
        return self.status in (Currency.OUTDATED, Currency.NEWER_SERIES, Currency.MOVED)


def release(tag: str) -> Version | None:
    match = RELEASE_TAG.match(tag)
    if not match:
        return None
    try:
        return Version(match.group(1))
    except InvalidVersion:
        return None


def remote_refs(url: str) -> dict[str, str]:
    """name -> commit of every tag and branch of the remote (peeled tags: the commit they point at)."""
    return trees.ls_remote(url, flags=("--tags", "--heads"))


def check_source(recipe: str, section: str, src: Source) -> Report:
    if not src.git:
        return Report(recipe, section, src.url, f"tarball (sha256 {str(src.sha256)[:12]}…)",
                      status=Currency.NOT_CHECKABLE, detail="a tarball names no release to compare")
    names = str(src.ref) + (f" @ {src.commit}" if src.commit else "")
    try:
        refs = remote_refs(src.git)
    except gitcmd.GitFailed as exc:
        problem = trees.git_failure(section, src.git, exc.stderr)
        return Report(recipe, section, src.git, names, status=Currency.UNREACHABLE, detail=_message(problem))
    releases = {v: name.removeprefix("refs/tags/") for name in refs if name.startswith("refs/tags/")
                if (v := release(name.removeprefix("refs/tags/"))) is not None and not v.is_prerelease}
    newest = max(releases, default=None)
    named = release(str(src.ref))
    if named is None:
        head = refs.get(f"refs/heads/{src.ref}")
        if head is None:
            return Report(recipe, section, src.git, names, None, releases.get(newest) if newest else None,
                          Currency.NOT_CHECKABLE, f"{src.ref} is neither a release tag nor a branch there")
        moved = src.commit is not None and not head.startswith(src.commit)
        return Report(recipe, section, src.git, names, None, releases.get(newest) if newest else None,
                      Currency.MOVED if moved else Currency.BRANCH, f"head {head[:12]}"
                      + (f", the recipe pins {src.commit}" if moved else ""))
    series = [v for v in releases if v.release[:2] == named.release[:2]]
    series_newest = max(series, default=None)
    status = Currency.CURRENT
    if series_newest is not None and series_newest > named:
        status = Currency.OUTDATED
    elif newest is not None and newest > named:
        status = Currency.NEWER_SERIES
    return Report(recipe, section, src.git, names, releases.get(series_newest) if series_newest else None,
                  releases.get(newest) if newest else None, status)


def check(recipe: Recipe) -> list[Report]:
    return [check_source(recipe.name, section, src) for section, src in recipe.sources().items()]


def _message(error: QemuprovError) -> str:
    return error.message + (f" ({error.hint})" if error.hint else "")
