"""qemuprov build: the options, the pipeline, and what it says when done."""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from qemuprov.building import pipeline
from qemuprov.building.workspace import Workspace
from qemuprov.ci import binary_cache, signing
from qemuprov.commands import timereport
from qemuprov.commands.base import Command, book
from qemuprov.commands.verify import render_outcomes
from qemuprov.errors import UserError
from qemuprov.infra import config, paths, render, unpack
from qemuprov.infra.progress import Reporter, notice
from qemuprov.infra.runners import get_runner
from qemuprov.recipe import chosen_arches
from qemuprov.records import installs
from qemuprov.records.manifest import VerifyMode
from qemuprov.sources import trees


def cmd_build(args: argparse.Namespace) -> int:
    recipe = book(args).load(args.recipe)
    arches = chosen_arches(recipe, args.arch)
    if args.trace and not Path(args.trace).absolute().parent.is_dir():
        raise UserError(f"--trace {args.trace}: its directory does not exist", hint="name a file in a directory")
    if args.jobs is not None and args.jobs < 1:
        raise UserError("-j: give a number of parallel jobs of 1 or more")
    if args.prefix is not None and not args.prefix.strip():
        raise UserError("--prefix: an empty directory name", hint="leave --prefix out for the default, or name a "
                                                                  "directory")
    prefix = Path(args.prefix).resolve() if args.prefix else paths.install_root() / recipe.name
    installs.check_prefix(prefix)
    settings = binary_cache.configured(args.cache)
    if (args.push or args.cache_only) and settings is None:
        raise UserError(f"{'--push' if args.push else '--cache-only'}: no binary cache configured",
                        hint=f"--cache REGISTRY/REPO, {binary_cache.ENV}, or [cache] url in "
                             "~/.config/qemuprov/config.toml")
    if args.cache_only and not args.use_cache:
        raise UserError("--cache-only and --no-cache contradict each other", hint="keep one of them")
    unpack.limit()  # every limit a build may need is checked before any work
    trees.download_limit()
    runner, notice = get_runner(args.runner, recipe.builder, args.builder_base, engine_needed=not args.cache_only)
    if notice:
        print(f"qemuprov: note: {notice}", file=sys.stderr)
    if settings is not None and runner.is_host:
        if args.push or args.cache_only:
            raise UserError(f"{'--push' if args.push else '--cache-only'}: {binary_cache.HOST_BUILD}",
                            hint="build with --runner docker (or podman)")
        print(f"qemuprov: note: the binary cache {settings.location} is not used: it holds container builds, and "
              "this is a host build", file=sys.stderr)
    opts = pipeline.Options(arches=arches, prefix=prefix, runner=runner, jobs=args.jobs or os.cpu_count() or 1,
                         force=args.force, argv=sys.argv[1:], precompiled_header=args.pch,
                         update_lock=args.update_lock, binary_cache=settings, use_cache=args.use_cache,
                         cache_only=args.cache_only, push=args.push,
                         verify=(VerifyMode.OSV if recipe.verify_osv else VerifyMode.PLAIN) if args.verify else None,
                         shared_ccache=config.setting(args.shared_ccache, "QEMUPROV_SHARED_CCACHE", "ccache",
                                                      "remote", "a URL in quotes"),
                         reshare=config.switch("QEMUPROV_CCACHE_RESHARE", "ccache", "reshare"))
    if args.push and settings is not None and settings.signing_key:
        signing.load_private(settings.signing_key)  # an unreadable key is found now, not after the build
    try:
        outcome = pipeline.Build(recipe, opts, Reporter()).run()
    except pipeline.VerifyFailed as failed:
        render_outcomes(failed.outcomes, args.json)
        raise
    say = functools.partial(print, file=sys.stderr if args.json else sys.stdout)  # --json: stdout is the JSON
    entry = installs.Install(prefix.name, prefix, outcome.manifest)
    if outcome.up_to_date:
        say(f"{recipe.name}: up to date in {outcome.prefix} ({outcome.timings['total']:.2f} s)")
    elif outcome.manifest.substituted:
        say(f"{recipe.name}: installed in {outcome.prefix} from the binary cache "
            f"{outcome.manifest.substituted.cache}: {entry.summary()} ({outcome.timings['total']:.1f} s)")
    else:
        cache = outcome.manifest.ccache
        cached = f", ccache {cache.hits}/{cache.hits + cache.misses} hits" if cache and cache.hit_rate else ""
        cached += f" ({cache.remote_hits} from the shared ccache)" if cache and cache.remote_hits else ""
        say(f"{recipe.name}: installed in {outcome.prefix}: {entry.summary()} "
            f"({outcome.timings['total']:.0f} s{cached}; log {outcome.log})")
        for line in timereport.lines(outcome.timings, cache):
            say(line)
        if args.trace:
            _trace(recipe.name, prefix, Path(args.trace), say)
    say(f'put it on PATH: eval "$(qemuprov env {shlex.quote(str(prefix) if args.prefix else recipe.name)})"')
    if args.push and settings is not None and outcome.manifest.substituted:
        say(f"not pushed: the binary cache {settings.location} already holds this build")
    elif outcome.pushed and settings is not None:
        signed = f", signed with {settings.signing_key}" if settings.signing_key else ", unsigned"
        say(f"pushed to the binary cache {settings.location}:{outcome.pushed[:16]}…{signed}")
    if outcome.verified is not None:
        return render_outcomes(outcome.verified, args.json)
    if args.json:
        render.print_json({"recipe": recipe.name, "prefix": str(outcome.prefix), "up_to_date": outcome.up_to_date,
                           "from_cache": bool(outcome.manifest.substituted),
                           "substituted": outcome.manifest.to_json()["substituted"], "pushed": outcome.pushed,
                           "summary": entry.summary(), "timings": outcome.timings,
                           "time": timereport.as_json(outcome.timings, outcome.manifest.ccache),
                           "log": str(outcome.log) if outcome.log else None})
    return 0


def _trace(recipe: str, prefix: Path, dest: Path, say: Callable[..., None]) -> None:
    """The compile units' times from the build tree's .ninja_log, as a trace for Perfetto or chrome://tracing."""
    built = [d / ".ninja_log" for d in Workspace.of(recipe, prefix).build_dirs() if (d / ".ninja_log").is_file()]
    logs = sorted(built, key=lambda p: p.stat().st_mtime)
    if not logs:
        notice(f"--trace: no .ninja_log of {recipe} on this machine (a build through a remote engine keeps its "
               "build tree in the engine's volume)")
        return
    units = timereport.write_trace(logs[-1], dest)
    say(f"wrote the compile trace {dest} ({units} units): open it in ui.perfetto.dev or chrome://tracing")


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", metavar="RECIPE", help="a recipe name from `qemuprov recipes`")
    p.add_argument("--trace", metavar="FILE",
                   help="write each compile unit's time (ninja's log) as a trace Perfetto or chrome://tracing opens")
    p.add_argument("--arch", metavar="A,B", help="build only these of the recipe's arches")
    p.add_argument("--runner", choices=("auto", "docker", "podman", "host"), default="auto",
                   help="where to build: auto uses a reachable Docker/Podman engine, else the host (default: auto)")
    p.add_argument("--builder-base", metavar="IMAGE",
                   help="base image for the recipe's builder Dockerfile (default: its ARG BASE)")
    p.add_argument("--prefix", metavar="DIR", help="install into DIR itself (default: <data dir>/installs/RECIPE)")
    p.add_argument("-j", "--jobs", type=int, metavar="N", help="parallel build jobs (default: all cores)")
    p.add_argument("--force", action="store_true", help="rebuild even when the install is up to date")
    p.add_argument("--no-pch", dest="pch", action="store_false",
                   help="compile without the precompiled qemu/osdep.h that clang builds use")
    p.add_argument("--verify", action="store_true", help="boot a guest over virtio-fs after installing")
    p.add_argument("--cache", metavar="REGISTRY/REPO",
                   help="a binary cache to install from when it has this very build (also QEMUPROV_BINARY_CACHE, "
                        "or [cache] url in ~/.config/qemuprov/config.toml)")
    p.add_argument("--no-cache", dest="use_cache", action="store_false", help="build even where the cache has it")
    p.add_argument("--cache-only", action="store_true",
                   help="install from the binary cache or fail (exit 1, with the reason), never compile: for CI jobs")
    p.add_argument("--push", action="store_true", help="push the result to the binary cache")
    p.add_argument("--shared-ccache", metavar="URL",
                   help="ccache's remote storage shared by machines: redis://HOST:PORT, or redis+unix:/PATH (also "
                        "QEMUPROV_SHARED_CCACHE, or [ccache] remote in config.toml)")
    p.add_argument("--update-lock", action="store_true",
                   help="resolve the refs again and move the recipe's lock file (qemuprov lock) to them")


BUILD = Command("build", "fetch, configure, build, install and probe a recipe", cmd_build, _arguments, json=True,
                description="Build RECIPE and install QEMU + virtiofsd into a prefix for PATH. An unchanged "
                            "rebuild is a no-op; a failed build leaves the previous install untouched.")
