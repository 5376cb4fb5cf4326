"""Lock files: the exact commits a recipe's refs (and the QEMU tree's submodules) resolved to, so that a build
here next month, or on another machine, builds the same thing. `<recipe>.lock` beside the user's recipe (for a
shipped recipe, in the user's recipe directory); TOML, versioned, readable."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import tomli_w

from qemuprov.errors import UserError
from qemuprov.infra import paths, safefile
from qemuprov.recipe import Recipe, Source
from qemuprov.sources import trees
from qemuprov.sources.revision import Resolution, SourceRecord

FORMAT = 1


@dataclass(frozen=True)
class LockedSource:
    git: str
    ref: str
    commit: str
    submodules: dict[str, str] = field(default_factory=dict)  # path -> commit


@dataclass(frozen=True)
class Lock:
    recipe: str
    path: Path
    sources: dict[str, LockedSource]  # "qemu", "virtiofsd"
    locked_at: str = ""


COMMIT = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


def lock_path(recipe: Recipe) -> Path:
    directory = paths.user_recipes_dir() if recipe.origin == "shipped" else recipe.path.parent
    return directory / f"{recipe.name}.lock"


def git_sources(recipe: Recipe) -> dict[str, Source]:
    return {section: src for section, src in recipe.sources().items() if src.git}


def make(recipe: Recipe) -> Lock:
    """Resolve every git ref of the recipe now (and the submodules of the QEMU tree at that commit)."""
    locked = {}
    for section, src in git_sources(recipe).items():
        resolved = trees.resolve(src, section)
        commit = str(resolved.record.commit)
        subs = trees.submodule_commits(src, resolved, section) if section == "qemu" else {}
        locked[section] = LockedSource(str(src.git), str(src.ref), commit, subs)
    if not locked:
        raise UserError(f"{recipe.name}: nothing to lock (its sources are tarballs, which their sha256 pins)")
    return Lock(recipe.name, lock_path(recipe), locked, datetime.now(UTC).isoformat(timespec="seconds"))


def write(lock: Lock) -> None:
    """Written by a TOML writer: a ref or path with any character (outside the BMP, control characters) reads
    back as it was."""
    document: dict[str, object] = {"format": FORMAT, "recipe": lock.recipe, "locked_at": lock.locked_at}
    for section, locked in lock.sources.items():
        table: dict[str, object] = {"git": locked.git, "ref": locked.ref, "commit": locked.commit}
        if locked.submodules:
            table["submodules"] = dict(sorted(locked.submodules.items()))
        document[section] = table
    header = (f"# The exact sources of the recipe {lock.recipe}. `qemuprov lock {lock.recipe}` moves them;\n"
              f"# `qemuprov build {lock.recipe}` builds these commits while this file exists.\n")
    if not lock.recipe.isprintable():
        header = "# The exact sources of a recipe: `qemuprov lock` moves them.\n"
    lock.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = lock.path.with_name(f".{lock.path.name}.tmp")
    tmp.write_text(header + tomli_w.dumps(document))
    tmp.replace(lock.path)


def read(recipe: Recipe) -> Lock | None:
    """The recipe's lock, checked against what the recipe names now; None where there is none."""
    path = lock_path(recipe)
    try:
        data = tomllib.loads(safefile.read_text(path))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise UserError(f"{path}: not a lock file qemuprov can read ({exc})",
                        hint=f"qemuprov lock {recipe.name} writes it again") from None
    if data.get("format") != FORMAT or data.get("recipe") != recipe.name:
        raise UserError(f"{path}: a lock of format {data.get('format')!r} for {data.get('recipe')!r}, not of format "
                        f"{FORMAT} for {recipe.name}", hint=f"qemuprov lock {recipe.name} writes it again")
    locked: dict[str, LockedSource] = {}
    for section, src in git_sources(recipe).items():
        table = data.get(section)
        if not isinstance(table, dict) or "commit" not in table:
            raise UserError(f"{path}: [{section}] is missing; the recipe gained a git source since it was locked",
                            hint=f"qemuprov lock {recipe.name} (or build with --update-lock)")
        commit = table["commit"]
        if not isinstance(commit, str) or not COMMIT.match(commit):
            raise UserError(f"{path}: {section}.commit: {str(commit)[:60]!r} is not a full commit id (40 or 64 hex "
                            "digits); a lock names commits, never branches or tags",
                            hint=f"qemuprov lock {recipe.name} writes it again")
        subs = table.get("submodules", {})
        if not isinstance(subs, dict) or not all(isinstance(v, str) and COMMIT.match(v) for v in subs.values()):
            raise UserError(f"{path}: {section}.submodules: each must be a full commit id",
                            hint=f"qemuprov lock {recipe.name} writes it again")
        if (table.get("git"), table.get("ref")) != (src.git, src.ref):
            raise UserError(f"{path}: locked {table.get('ref')} of {table.get('git')}, but the recipe now names "
                            f"{src.ref} of {src.git}",
                            hint=f"qemuprov lock {recipe.name} (or build with --update-lock)")
        if src.commit and not table["commit"].startswith(src.commit):
            raise UserError(f"{path}: locked {table['commit']}, but the recipe pins {src.commit}",
                            hint=f"qemuprov lock {recipe.name}")
        locked[section] = LockedSource(str(src.git), str(src.ref), commit, {str(k): v for k, v in subs.items()})
    return Lock(recipe.name, path, locked, str(data.get("locked_at", "")))


def resolution(lock: Lock, section: str) -> Resolution:
    locked = lock.sources[section]
    return Resolution(SourceRecord(locked.git, locked.ref, locked.commit), refspec=locked.commit, locked=lock.path)
