"""The commands about a recipe's sources: outdated, lock."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from qemuprov.commands.base import Command, book
from qemuprov.infra import render
from qemuprov.sources import lockfiles, outdated

OUTDATED_EXIT = 3  # `outdated`: an upgrade is due (0: all current, 1: a remote did not answer, 2: bad input)


def cmd_outdated(args: argparse.Namespace) -> int:
    found = book(args)
    recipes = [found.load(name) for name in (args.names or found.names())]  # a bad name: exit 2 before any lookup
    reports = [report for recipe in recipes for report in outdated.check(recipe)]
    if args.json:
        render.print_json([{**asdict(r), "due": r.due} for r in reports])
    else:
        rows = [(r.recipe, r.section, r.names, r.series_newest or "-", r.newest or "-", r.status.value,
                 r.detail) for r in reports]
        print(render.table(("RECIPE", "SOURCE", "NAMES", "NEWEST IN SERIES", "NEWEST", "STATUS", "DETAIL"), rows))
    if any(r.due for r in reports):
        return OUTDATED_EXIT
    return 1 if any(r.status == outdated.Currency.UNREACHABLE for r in reports) else 0


def cmd_lock(args: argparse.Namespace) -> int:
    recipe = book(args).load(args.recipe)
    locked = lockfiles.make(recipe)
    lockfiles.write(locked)
    if args.json:
        render.print_json({"recipe": recipe.name, "path": str(locked.path), "locked_at": locked.locked_at,
                           "sources": {section: {"git": src.git, "ref": src.ref, "commit": src.commit,
                                                 "submodules": src.submodules}
                                       for section, src in locked.sources.items()}})
        return 0
    for section, src in locked.sources.items():
        subs = f" and {len(src.submodules)} submodules" if src.submodules else ""
        print(f"{recipe.name}: {section} {src.ref} of {src.git} is {src.commit}{subs}")
    print(f"wrote {locked.path}; `qemuprov build {recipe.name}` builds these commits while it exists")
    return 0


def _outdated_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", metavar="RECIPE", help="recipe names (default: every recipe)")


def _lock_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", metavar="RECIPE", help="a recipe name from `qemuprov recipes`")


OUTDATED = Command("outdated", "do recipes name the newest releases? (exit 3 when an upgrade is due)", cmd_outdated,
                   _outdated_arguments, json=True,
                   description="For each git source of the recipes (all, or those named): the newest release in the "
                               "series the recipe names and the newest overall, from one `git ls-remote` each "
                               "(release candidates ignored). Exit 0: all current; 3: an upgrade is due; 1: a "
                               "remote did not answer; 2: bad input.")
LOCK = Command("lock", "pin the commits a recipe's refs name now, in RECIPE.lock beside the recipe", cmd_lock,
               _lock_arguments, json=True,
               description="Resolve every git ref of the recipe (and the QEMU tree's submodules) and write the "
                           "commits to RECIPE.lock beside the recipe (for a shipped recipe, in your recipe "
                           "directory). `qemuprov build RECIPE` then builds exactly those; run lock again to move "
                           "them.")
