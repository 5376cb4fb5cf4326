"""The commands that hand an install on, or take it away: image, push, remove."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qemuprov.building.workspace import Workspace, timestamped_log
from qemuprov.ci import binary_cache, image
from qemuprov.commands.base import Command
from qemuprov.errors import UserError
from qemuprov.infra import render
from qemuprov.records import installs


def cmd_image(args: argparse.Namespace) -> int:
    entry = installs.find_install(args.name).intact()
    if args.tag:
        image.check_tag(args.tag)
    if args.tar:
        if not Path(args.tar).absolute().parent.is_dir():
            raise UserError(f"--tar: {Path(args.tar).absolute().parent} is not a directory",
                            hint="make it first, or write the tarball elsewhere")
        tarball = image.export_tarball(entry, Path(args.tar))
        if not args.json:
            print(f"{entry.name}: {tarball} ({tarball.stat().st_size / 1e6:.1f} MB); unpack anywhere and put "
                  f"<dir>/{entry.name}/bin on PATH")
        if not args.tag:
            if args.json:
                render.print_json({"name": entry.name, "tar": str(tarball), "size": tarball.stat().st_size})
            return 0
    tag = args.tag or f"qemuprov/{entry.name}:latest"
    with timestamped_log(Workspace.of(entry.name, entry.prefix).root, "image") as (log, log_path):
        print(f"==> image {tag} from {entry.prefix} (log {log_path})", file=sys.stderr)
        image_id = image.build_runtime_image(entry, tag, args.base, log)
    if args.json:
        render.print_json({"name": entry.name, "tag": tag, "image_id": image_id, "log": str(log_path),
                           **({"tar": str(Path(args.tar).absolute())} if args.tar else {})})
        return 0
    print(f"{tag}: {image_id[:19]} ({entry.summary()})")
    print(f"try it: docker run --rm {tag} qemu-system-x86_64 --version")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    entry = installs.find_install(args.name).intact()
    settings = binary_cache.configured(args.to)
    if settings is None:
        raise UserError("push: no binary cache given",
                        hint=f"qemuprov push NAME REGISTRY/REPO, or set {binary_cache.ENV}")
    tag = binary_cache.push(entry.prefix, entry.record, settings)
    signed = f"signed with {settings.signing_key}" if settings.signing_key else "unsigned"
    if args.json:
        render.print_json({"name": entry.name, "prefix": str(entry.prefix), "cache": str(settings.location),
                           "tag": tag, "signed_with": str(settings.signing_key) if settings.signing_key else None,
                           "summary": entry.summary()})
    else:
        print(f"{entry.name}: pushed to {settings.location}:{tag} ({entry.summary()}; {signed})")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    entry = installs.find_install(args.name)
    installs.remove(entry)
    if args.json:
        render.print_json({"removed": entry.name, "prefix": str(entry.prefix)})
    else:
        print(f"removed {entry.name} ({entry.prefix})")
    return 0


def _image_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME|PREFIX", help="an install: its name from `qemuprov list`, or its prefix")
    p.add_argument("--tag", metavar="T", help="image tag (default: qemuprov/NAME:latest)")
    p.add_argument("--base", metavar="IMAGE",
                   help="base image (default: the builder's base, or this host's distribution for host builds)")
    p.add_argument("--tar", metavar="FILE", help="write a relocatable .tar.gz of the prefix instead of an image")


def _push_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME|PREFIX", help="an install: its name from `qemuprov list`, or its prefix")
    p.add_argument("to", nargs="?", metavar="REGISTRY/REPO",
                   help="the binary cache, e.g. ghcr.io/me/qemu-cache (default: QEMUPROV_BINARY_CACHE or [cache] url)")


def _remove_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME|PREFIX", help="an install: its name from `qemuprov list`, or its prefix")


IMAGE = Command("image", "a runtime container image (or a tarball) of an install, for CI", cmd_image,
                _image_arguments, json=True,
                description="Build a container image holding the install on PATH with only the runtime libraries "
                            "it needs, labelled with its manifest; or, with --tar, a relocatable tarball of the "
                            "prefix.")
PUSH = Command("push", "publish an install to a binary cache (an OCI registry)", cmd_push, _push_arguments, json=True,
               description="Push the install as an OCI artifact (its prefix as a layer, qemuprov.json as the config) "
                           "tagged with its cache key, so that `qemuprov build --cache` elsewhere installs it in "
                           "seconds. Credentials: docker login (~/.docker/config.json or $DOCKER_CONFIG).")
REMOVE = Command("remove", "delete an installed build", cmd_remove, _remove_arguments, json=True)
