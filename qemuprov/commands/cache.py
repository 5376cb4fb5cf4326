"""`qemuprov cache`: what qemuprov keeps and where, with sizes; `qemuprov cache clean` removes what no install
needs, `--all` everything it keeps (builder images and the engines' volumes too). Never an install."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from qemuprov.commands.base import Command
from qemuprov.errors import UserError
from qemuprov.infra import engines, paths, render
from qemuprov.records import kept

ENGINE_WAIT = 5.0


def human(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _engine_parts() -> tuple[Any, list[dict[str, Any]], str]:
    """The reachable engine's client, qemuprov's builder images and volumes on it, and a word on the engine."""
    engine = engines.find_engine("any", ENGINE_WAIT)
    if not engine.reachable:
        return None, [], f"no engine reachable ({engine.detail[:120]}): builder images and volumes not counted"
    client = engines.client(engine, timeout=60)
    found = []
    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith("qemuprov-builder-"):
                found.append({"kind": "images", "name": tag, "size": int(image.attrs.get("Size") or 0),
                              "id": image.id})
    for volume in client.volumes.list(filters={"name": "qemuprov-"}):
        found.append({"kind": "volumes", "name": volume.name, "size": 0, "id": volume.name})
    return client, found, engine.detail


def cmd_cache(args: argparse.Namespace) -> int:
    if args.action == "show" and (args.all or args.yes or args.dry_run):
        raise UserError("cache: --all, --yes and --dry-run go with `qemuprov cache clean`")
    found = kept.inventory()
    client: Any = None
    engine_parts: list[dict[str, Any]] = []
    engine_word = ""
    if args.action == "show" or args.all:
        client, engine_parts, engine_word = _engine_parts()
    if args.action == "show":
        return _show(found, engine_parts, engine_word, args.json)
    doomed = [i for i in found.items if args.all or not i.needed]
    doomed_engine = engine_parts if args.all else []
    size = sum(i.size for i in doomed) + sum(p["size"] for p in doomed_engine)
    what = f"{len(doomed)} paths" + (f" and {len(doomed_engine)} images and volumes" if doomed_engine else "")
    if args.dry_run or not (doomed or doomed_engine):
        return _would_remove(doomed, doomed_engine, args)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError(f"cache clean would remove {what} ({human(size)}): give --yes to do it without asking",
                            hint="qemuprov cache clean --dry-run lists them")
        answer = input(f"remove {what} ({human(size)})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return 0
    freed, failed = kept.clean(doomed)
    for part in doomed_engine:
        try:
            if part["kind"] == "images":
                client.images.remove(part["name"])
            else:
                client.volumes.get(part["id"]).remove()
            freed += part["size"]
        except Exception as exc:  # the SDK's APIError (an image in use, a volume a container holds): say which
            failed.append(f"{part['name']}: {str(exc)[-120:]}")
    if args.json:
        render.print_json({"freed": freed, "failed": failed})
    else:
        print(f"freed {human(freed)}" + (f"; could not remove {len(failed)}: {failed[0]}" if failed else ""))
    return 1 if failed else 0


def _would_remove(doomed: list[kept.Kept], engine_parts: list[dict[str, Any]], args: argparse.Namespace) -> int:
    """--dry-run, or nothing to remove: what clean would take, removing nothing."""
    if args.json:
        render.print_json({"would_remove": [{"kind": i.kind, "path": str(i.path), "size": i.size, "why": i.why}
                                            for i in doomed], "engine": engine_parts, "freed": 0})
    elif not doomed and not engine_parts:
        print("nothing to clean" + ("" if args.all else " (`qemuprov cache clean --all` removes the caches too)"))
    else:
        for item in doomed:
            print(f"would remove {item.path} ({human(item.size)}): {item.why}")
        for part in engine_parts:
            print(f"would remove the {part['kind'][:-1]} {part['name']}")
    return 0


def _show(found: kept.Inventory, engine_parts: list[dict[str, Any]], engine_word: str, as_json: bool) -> int:
    if as_json:
        render.print_json({"cache": str(paths.cache_dir()), "total": found.total(),
                           "unneeded": found.total(unneeded_only=True),
                           "items": [{"kind": i.kind, "path": str(i.path), "size": i.size, "needed": i.needed,
                                      "why": i.why} for i in found.items],
                           "engine": engine_parts, "engine_detail": engine_word})
        return 0
    rows = []
    for kind, (count, size) in found.by_kind().items():
        spare = sum(i.size for i in found.items if i.kind == kind and not i.needed)
        rows.append((kind, count, human(size), human(spare) if spare else "-"))
    for kind in ("images", "volumes"):
        parts = [p for p in engine_parts if p["kind"] == kind]
        if parts:
            rows.append((kind, len(parts), human(sum(p["size"] for p in parts)), "-"))
    if not rows:
        print(f"qemuprov keeps nothing yet in {paths.cache_dir()}")
        if engine_word:
            print(engine_word)
        return 0
    print(f"qemuprov keeps in {paths.cache_dir()}:")
    print(render.table(("KIND", "COUNT", "SIZE", "NO INSTALL NEEDS"), rows))
    print(f"total {human(found.total())}; `qemuprov cache clean` frees {human(found.total(unneeded_only=True))}, "
          "`--all` everything (never an install)")
    if engine_word and not engine_parts:
        print(engine_word)
    return 0


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=("show", "clean"), default="show",
                   help="show (the default): what qemuprov keeps, with sizes; clean: remove what no install needs")
    p.add_argument("--all", action="store_true",
                   help="with clean: everything qemuprov keeps (caches, builder images, engine volumes), never an "
                        "install")
    p.add_argument("--yes", "-y", action="store_true", help="with clean: do not ask")
    p.add_argument("--dry-run", action="store_true", help="with clean: list what would go, remove nothing")


CACHE = Command("cache", "what qemuprov keeps (build trees, mirrors, kits, images) and cleaning it", cmd_cache,
                _arguments, json=True,
                description="Show what qemuprov keeps besides the installs, with sizes; `clean` removes what no "
                            "install needs (build trees of recipes with no install, mirrors and tarballs no "
                            "install came from, leftovers of killed runs); `clean --all` removes the compiler "
                            "caches, guest kits, probe caches, builder images and qemuprov's engine volumes too. "
                            "Installs are never removed: `qemuprov remove` does that.")
