"""Command line: parse, call, render, choose the exit code. The only place that ends the process."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import shlex
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from qemuprov import __version__
from qemuprov.errors import InfraError, QemuprovError, UserError
from qemuprov.infra import render
from qemuprov.knowledge import probe
from qemuprov.recipe import Recipe, RecipeBook, default_layers, split_arches
from qemuprov.records import installs

Command = Callable[[argparse.Namespace], int]
OUTDATED_EXIT = 3  # `outdated`: an upgrade is due (0: all current, 1: a remote did not answer, 2: bad input)


def _book(args: argparse.Namespace) -> RecipeBook:
    return RecipeBook(default_layers(args.recipes or ()))


def cmd_recipes(args: argparse.Namespace) -> int:
    recipes, errors = _book(args).load_all()
    if args.json:
        render.print_json([r.to_dict() for r in recipes])
    else:
        rows = [(r.name, (r.qemu.source.ref or "tarball") if r.qemu else "-", ",".join(r.arches) or "-",
                 r.virtiofsd.source.value,
                 render.yes_no(r.expect.dax) if r.qemu else "-", r.origin, r.description) for r in recipes]
        print(render.table(("NAME", "REF", "ARCHES", "VIRTIOFSD", "DAX", "FROM", "DESCRIPTION"), rows))
    for error in errors:
        print(f"qemuprov: error: {error.message}", file=sys.stderr)
    return 2 if errors else 0


def describe_recipe(recipe: Recipe) -> list[tuple[str, str]]:
    expect = recipe.expect
    promised = [f"dax={render.yes_no(expect.dax)}"] if recipe.qemu else []
    if expect.arches:
        promised.append("arches=" + ",".join(expect.arches))
    if expect.virtiofsd:
        promised.append(f"virtiofsd={expect.virtiofsd.value}")
    if expect.version:
        promised.append(f"version={expect.version}")
    if expect.netdevs:
        promised.append("netdevs=" + ",".join(expect.netdevs))
    if expect.aio_native is not None:
        promised.append(f"aio-native={render.yes_no(expect.aio_native)}")
    rows = [
        ("name", recipe.name),
        ("description", recipe.description),
        ("file", str(recipe.path) + (f" (extends {recipe.extends})" if recipe.extends else "")),
        ("builder", recipe.builder),
    ]
    if recipe.qemu:
        rows += [("qemu source", recipe.qemu.source.describe()), ("arches", ", ".join(recipe.qemu.arches)),
                 ("extra configure", " ".join(recipe.qemu.configure) or "-")]
    else:
        rows.append(("qemu source", "none: this recipe builds virtiofsd alone"))
    verify = "with OSv's scripts/run.py command lines" if recipe.verify_osv else "plain guest boot"
    return [*rows, ("virtiofsd", _virtiofsd_line(recipe)), ("expect", " ".join(promised)),
            ("build --verify", verify)]


def _virtiofsd_line(recipe: Recipe) -> str:
    spec = recipe.virtiofsd
    if spec.tree is None:
        return spec.source.value
    how = [f"builder {spec.builder or recipe.builder}", f"{spec.crates.value} crates", *(["static"] * spec.static)]
    return f"{spec.source.value} from {spec.tree.describe()} ({', '.join(how)})"


def _fetched_plan(recipe: Recipe) -> dict[str, object] | None:
    """The plan the last install of this recipe recorded; else, once an earlier build fetched the source, the
    plan a default build (--runner auto) would follow."""
    from qemuprov.infra import paths
    from qemuprov.infra.runners import get_runner
    from qemuprov.knowledge import plan

    if recipe.qemu is None:
        return None
    for entry in installs.list_installs():
        if entry.recipe == recipe.name and entry.manifest and entry.manifest.plan:
            return dict(entry.manifest.plan)
    src = paths.work_dir(recipe.name) / "src"
    if not (src / "VERSION").exists():
        return None
    runner, _ = get_runner("auto", recipe.builder)
    prefix = paths.install_root() / recipe.name
    return plan.make_plan(recipe, plan.inspect(src), prefix, recipe.arches, runner.tree_python).to_dict()


def cmd_show(args: argparse.Namespace) -> int:
    recipe = _book(args).load(args.recipe)
    try:
        the_plan, problem = _fetched_plan(recipe), None
    except UserError as exc:  # the recipe is fine; this host cannot build the fetched tree as it is
        the_plan, problem = None, f"{exc.message}; {exc.hint}"
    if args.json:
        render.print_json({"recipe": recipe.to_dict(), "plan": the_plan, "plan_problem": problem})
        return 0
    width = max(len(key) for key, _ in describe_recipe(recipe))
    for key, value in describe_recipe(recipe):
        print(f"{key.ljust(width)}  {value}")
    if problem:
        print(f"\nplan: {problem}")
        return 0
    if recipe.qemu is None:
        print("\nplan: cargo build of virtiofsd, installed as bin/virtiofsd")
        return 0
    if the_plan is None:
        print(f"\nplan: not fetched yet (`qemuprov build {recipe.name}` fetches it)")
        return 0
    print(f"\nplan for QEMU {the_plan['version']} (virtiofsd: {the_plan['virtiofsd']}):")
    for arg in the_plan["configure"]:  # type: ignore[attr-defined]
        print(f"  {arg['arg']:<40}  {arg['reason']}")
    print("  targets: " + (" ".join(the_plan["targets"]) or "make (all)"))  # type: ignore[arg-type]
    for note in the_plan["notes"]:  # type: ignore[attr-defined]
        print(f"  note: {note}")
    return 0


def probe_rows(probes: list[probe.Probe]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for item in probes:
        if item.error:
            rows.append((item.path, item.kind, "-", "-", "-", "-", f"error: {item.error}"))
        elif isinstance(item, probe.QemuProbe):
            notes = [f"accel={','.join(item.accels) or '?'}",
                     "shared-mem=" + ("memfd" if "memory-backend-memfd" in item.memory_backends
                                      else "file" if item.shared_memory else "none"),
                     f"netdev-user={render.yes_no(item.user_networking) if item.netdevs is not None else '?'}",
                     f"aio-native={render.yes_no(item.aio_native)}"]
            rows.append((item.path, "qemu", item.version or "?", item.arch or "?",
                         render.yes_no(item.vhost_user_fs), render.yes_no(item.dax), " ".join(notes)))
        else:
            notes = [f"shared-dir={item.source_option}", f"sandbox={'|'.join(item.sandboxes)}",
                     "needs-root" if item.needs_root else "unprivileged-ok", *([item.note] if item.note else [])]
            if item.rseq_wrapper:
                notes.append("rseq-wrapper")
            if item.rseq_risk:
                notes.append("RSEQ-KILL-RISK (run with GLIBC_TUNABLES=glibc.pthread.rseq=0)")
            rows.append((item.path, "virtiofsd", item.version or "?", item.flavour or "?", "-", "-",
                         " ".join(notes)))
    return rows


def cmd_probe(args: argparse.Namespace) -> int:
    targets = probe.expand_targets(args.paths) if args.paths else probe.default_binaries()
    if not targets:
        raise InfraError("no QEMU or virtiofsd found on PATH or in the usual distro places",
                         hint="give paths: qemuprov probe /path/to/qemu-system-x86_64 /path/to/virtiofsd")
    cache = probe.ProbeCache()
    results = [probe.probe_binary(path, cache) for path in targets]
    cache.save()
    if args.json:
        render.print_json([asdict(r) for r in results])
    else:
        print(render.table(("PATH", "KIND", "VERSION", "ARCH/FLAVOUR", "VHOST-USER-FS", "DAX", "NOTES"),
                           probe_rows(results)))
    return 2 if any(r.error for r in results) else 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from qemuprov.host import doctor

    checks = doctor.run_checks()
    if args.json:
        render.print_json([asdict(c) for c in checks])
    else:
        print(render.checks(checks))
    return 1 if any(c.status == doctor.Status.FAIL for c in checks) else 0


def cmd_build(args: argparse.Namespace) -> int:
    import functools
    import os

    from qemuprov.build import pipeline
    from qemuprov.ci import binary_cache, signing
    from qemuprov.infra import config, paths
    from qemuprov.infra.progress import Reporter
    from qemuprov.infra.runners import get_runner

    recipe = _book(args).load(args.recipe)
    arches = pipeline.validate_arches(recipe, args.arch)
    if args.jobs is not None and args.jobs < 1:
        raise UserError("-j: give a number of parallel jobs of 1 or more")
    if args.prefix is not None and not args.prefix.strip():
        raise UserError("--prefix: an empty directory name", hint="leave --prefix out for the default, or name a "
                                                                  "directory")
    prefix = Path(args.prefix).resolve() if args.prefix else paths.install_root() / recipe.name
    installs.check_prefix(prefix)
    settings = binary_cache.configured(args.cache)
    if args.push and settings is None:
        raise UserError("--push: no binary cache configured",
                        hint=f"--cache PREFIXES_FILE/REPO, {binary_cache.ENV}, or [cache] url in "
                             "~/.config/qemuprov/config.toml")
    runner, notice = get_runner(args.runner, recipe.builder, args.builder_base)
    if notice:
        print(f"qemuprov: note: {notice}", file=sys.stderr)
    if args.cache_only and (settings is None or not args.use_cache):
        raise UserError("--cache-only: " + ("no binary cache configured" if settings is None else
                                            "and --no-cache contradict each other"),
                        hint=f"--cache PREFIXES_FILE/REPO, {binary_cache.ENV}, or [cache] url in config.toml")
    if settings is not None and runner.key == "host":
        if args.push or args.cache_only:
            raise UserError(f"{'--push' if args.push else '--cache-only'}: a host build never comes from or goes "
                            "to a binary cache (its libraries are the host's)",
                            hint="build with --runner docker (or podman)")
        print(f"qemuprov: note: the binary cache {settings.location} is not used: it holds container builds, and "
              "this is a host build", file=sys.stderr)
    opts = pipeline.Options(arches=arches, prefix=prefix, runner=runner, jobs=args.jobs or os.cpu_count() or 1,
                         force=args.force, argv=sys.argv[1:], precompiled_header=args.pch,
                         update_lock=args.update_lock, binary_cache=settings, use_cache=args.use_cache,
                         cache_only=args.cache_only,
                         shared_ccache=args.shared_ccache or os.environ.get("QEMUPROV_SHARED_CCACHE")
                         or config.value("ccache", "remote", str, "a URL in quotes"))
    if args.push and settings is not None and settings.signing_key:
        signing.load_private(settings.signing_key)  # an unreadable key is found now, not after the build
    outcome = pipeline.Build(recipe, opts, Reporter()).run()
    say = functools.partial(print, file=sys.stderr if args.json else sys.stdout)  # --json: stdout is the JSON
    entry = installs.Install(prefix.name, prefix, outcome.manifest)
    if outcome.up_to_date:
        say(f"{recipe.name}: up to date in {outcome.prefix} ({outcome.timings['total']:.2f} s)")
    elif outcome.manifest.substituted:
        say(f"{recipe.name}: installed in {outcome.prefix} from the binary cache "
            f"{outcome.manifest.substituted['cache']}: {entry.summary()} ({outcome.timings['total']:.1f} s)")
    else:
        cache = outcome.manifest.ccache or {}
        cached = f", ccache {cache['hits']}/{cache['hits'] + cache['misses']} hits" if cache.get("hit_rate") else ""
        cached += f" ({cache['remote_hits']} from the shared ccache)" if cache.get("remote_hits") else ""
        say(f"{recipe.name}: installed in {outcome.prefix}: {entry.summary()} "
            f"({outcome.timings['total']:.0f} s{cached}; log {outcome.log})")
    say(f'put it on PATH: eval "$(qemuprov env {shlex.quote(str(prefix) if args.prefix else recipe.name)})"')
    pushed = None
    if args.push and settings is not None and outcome.manifest.substituted:
        say(f"not pushed: the binary cache {settings.location} already holds this build")
    elif args.push and settings is not None:
        pushed = binary_cache.push(prefix, outcome.manifest, settings)
        signed = f", signed with {settings.signing_key}" if settings.signing_key else ", unsigned"
        say(f"pushed to the binary cache {settings.location}:{pushed[:16]}…{signed}")
    if args.json and not args.verify:
        render.print_json({"recipe": recipe.name, "prefix": str(outcome.prefix), "up_to_date": outcome.up_to_date,
                           "from_cache": bool(outcome.manifest.substituted),
                           "substituted": outcome.manifest.substituted, "pushed": pushed,
                           "summary": entry.summary(), "timings": outcome.timings,
                           "log": str(outcome.log) if outcome.log else None})
    if not args.verify:
        return 0
    from qemuprov.proving import verify
    from qemuprov.records import manifest

    targets = verify.install_targets(entry)
    outcomes = verify.verify_all(targets.qemus, targets.virtiofsd, targets.firmware, arches or None, "auto", None,
                                 "osv" if recipe.verify_osv else "plain")
    manifest.write(prefix, dataclasses.replace(outcome.manifest, verify=tuple(asdict(o) for o in outcomes)))
    return _render_verify(outcomes, args.json)


def cmd_list(args: argparse.Namespace) -> int:
    found = installs.list_installs()
    if args.json:
        render.print_json([{"name": e.name, "prefix": str(e.prefix), "recipe": e.recipe,
                            "commit": e.commit, "summary": e.summary(), "damaged": e.damaged,
                            "probe": list(e.probes)} for e in found])
        return 0
    if not found:
        print("no installs yet: qemuprov build qemu-7.2 (or virtio-fs-dev for DAX)")
        return 0
    rows = [(e.name, f"DAMAGED: {e.damaged}" if e.damaged else e.summary(), (e.commit or "")[:12], str(e.prefix))
            for e in found]
    print(render.table(("NAME", "BUILD", "COMMIT", "PREFIX"), rows))
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    if not args.osv and (args.share or args.tag != "myfs" or args.dax_size):
        raise UserError("env: --share, --tag and --dax-size go with --osv")
    entry = installs.find_install(args.name).intact()
    bin_dir = entry.prefix / "bin"
    lines = _osv_lines(entry, args) if args.osv else []
    print(f'export PATH={shlex.quote(str(bin_dir))}:"$PATH"')
    for line in lines:  # a manifest may come from a tarball someone sent: no field of it may end the comment
        print(render.shell_comment(line))
    return 0


def _osv_lines(entry: installs.Install, args: argparse.Namespace) -> list[str]:
    """Comment lines: OSv's scripts/run.py command line per arch of the install, to paste in an OSv checkout."""
    from qemuprov.knowledge import osv

    qemus = {str(p.get("arch")): entry.prefix / "bin" / Path(str(p["path"])).name for p in entry.qemu_probes}
    if not qemus:
        raise UserError(f"--osv: {entry.name} holds no QEMU of its own (it is {entry.summary()})",
                        hint=f"use `qemuprov env {args.name}` for PATH, and your own QEMU with run.py's --qemu-path")
    tag = osv.check_tag(args.tag)
    if args.dax_size is not None:
        osv.dax_size_bytes(args.dax_size)
        if not entry.dax:
            raise UserError(f"--dax-size: {entry.name} has no DAX window (cache-size); leave the option out",
                            hint="only a build of the virtio-fs-dev tree has one: qemuprov build virtio-fs-dev")
    dax_size = (args.dax_size or osv.DEFAULT_DAX_SIZE) if entry.dax else None
    share = Path(args.share).expanduser().absolute() if args.share else Path.home() / "osv-share"
    daemon = entry.virtiofsd_probe or {}
    needs_root = daemon.get("flavour") == "c"
    own = str(entry.prefix / "share" / "qemu")
    firmware = tuple(d for d in entry.firmware_dirs if d != own)
    lines = [f"OSv's scripts/run.py with {entry.name}: {entry.summary()}. Run it in your OSv checkout, after",
             "the export above (run.py starts `virtiofsd` from PATH), once the shared directory exists:",
             f"  mkdir -p {shlex.quote(str(share))}"]
    if needs_root:
        lines.append("The C virtiofsd needs root, so run.py runs under sudo; `env PATH=$PATH` keeps this build on "
                     "sudo's PATH.")
    for arch, qemu in sorted(qemus.items()):
        line = osv.RunPyLine(arch, qemu, share, tag, dax_size, firmware, needs_root)
        lines += [f"{arch}:", f"  {line.shell()}"]
    if dax_size:
        lines.append(f"--virtio-fs-dax={dax_size} is the DAX window (cache-size); choose another with --dax-size.")
    return lines


def cmd_outdated(args: argparse.Namespace) -> int:
    from qemuprov.sources import outdated

    book = _book(args)
    recipes = [book.load(name) for name in (args.names or book.names())]  # a bad name: exit 2 before any lookup
    reports = [report for recipe in recipes for report in outdated.check(recipe)]
    if args.json:
        render.print_json([{**asdict(r), "due": r.due} for r in reports])
    else:
        rows = [(r.recipe, r.section, r.names, r.series_newest or "-", r.newest or "-", r.status.value,
                 r.detail) for r in reports]
        print(render.table(("RECIPE", "SOURCE", "NAMES", "NEWEST IN SERIES", "NEWEST", "STATUS", "DETAIL"), rows))
    if any(r.due for r in reports):
        return OUTDATED_EXIT
    return 1 if any(r.status == outdated.Status.UNREACHABLE for r in reports) else 0


def cmd_lock(args: argparse.Namespace) -> int:
    from qemuprov.records import lockfiles

    recipe = _book(args).load(args.recipe)
    locked = lockfiles.make(recipe)
    lockfiles.write(locked)
    for section, src in locked.sources.items():
        subs = f" and {len(src.submodules)} submodules" if src.submodules else ""
        print(f"{recipe.name}: {section} {src.ref} of {src.git} is {src.commit}{subs}")
    print(f"wrote {locked.path}; `qemuprov build {recipe.name}` builds these commits while it exists")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from qemuprov.ci import binary_cache

    entry = installs.find_install(args.name).intact()
    settings = binary_cache.configured(args.to)
    if settings is None:
        raise UserError("push: no binary cache given",
                        hint=f"qemuprov push NAME PREFIXES_FILE/REPO, or set {binary_cache.ENV}")
    tag = binary_cache.push(entry.prefix, entry.record, settings)
    signed = f"signed with {settings.signing_key}" if settings.signing_key else "unsigned"
    print(f"{entry.name}: pushed to {settings.location}:{tag} ({entry.summary()}; {signed})")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    entry = installs.find_install(args.name)
    installs.remove(entry)
    print(f"removed {entry.name} ({entry.prefix})")
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from qemuprov.ci import image
    from qemuprov.infra import paths

    entry = installs.find_install(args.name).intact()
    if args.tag:
        image.check_tag(args.tag)
    if args.tar:
        if not Path(args.tar).absolute().parent.is_dir():
            raise UserError(f"--tar: {Path(args.tar).absolute().parent} is not a directory",
                            hint="make it first, or write the tarball elsewhere")
        tarball = image.export_tarball(entry, Path(args.tar))
        print(f"{entry.name}: {tarball} ({tarball.stat().st_size / 1e6:.1f} MB); unpack anywhere and put "
              f"<dir>/{entry.name}/bin on PATH")
        if not args.tag:
            return 0
    tag = args.tag or f"qemuprov/{entry.name}:latest"
    logs = paths.work_dir(entry.name) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"image-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.log"
    print(f"==> image {tag} from {entry.prefix} (log {log_path})", file=sys.stderr)
    with log_path.open("w") as log:
        image_id = image.build_runtime_image(entry, tag, args.base, log)
    print(f"{tag}: {image_id[:19]} ({entry.summary()})")
    print(f"try it: docker run --rm {tag} qemu-system-x86_64 --version")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from qemuprov.proving import verify

    if args.target and (args.qemu or args.virtiofsd):
        raise UserError("verify: give an install (NAME|PREFIX) or --qemu with --virtiofsd, not both")
    if args.target:
        targets = verify.install_targets(installs.find_install(args.target).intact())
    elif args.qemu and args.virtiofsd:
        targets = verify.binary_targets([Path(q) for q in args.qemu], Path(args.virtiofsd))
    else:
        raise UserError("verify: give an install name or prefix, or both --qemu PATH and --virtiofsd PATH")
    qemus, daemon_path, firmware = targets.qemus, targets.virtiofsd, targets.firmware
    wanted = split_arches(args.arch) if args.arch is not None else None
    outcomes = verify.verify_all(qemus, daemon_path, firmware, wanted, args.accel, _own_kit(args),
                                 "osv" if args.osv else "plain")
    return _render_verify(outcomes, args.json)


def _own_kit(args: argparse.Namespace) -> tuple[Path, Path] | None:
    if bool(args.kernel) != bool(args.initrd):
        raise UserError("verify: --kernel and --initrd go together")
    if args.kernel:
        for option, value in (("--kernel", args.kernel), ("--initrd", args.initrd)):
            if not Path(value).is_file():
                raise UserError(f"{option}: {value} is not a file")
        return Path(args.kernel), Path(args.initrd)
    return None


def _render_verify(outcomes: list[Any], as_json: bool) -> int:
    if as_json:
        render.print_json([asdict(o) for o in outcomes])
    else:
        rows = [(o.arch, "PASS" if o.ok else f"FAIL ({o.failure})", f"{o.seconds:.1f} s", o.accel,
                 o.dax_status, o.message) for o in outcomes]
        print(render.table(("ARCH", "RESULT", "TIME", "ACCEL", "DAX", "DETAIL"), rows))
        for o in outcomes:
            if not o.ok:
                print("\n".join(f"    {o.arch}: {line}" for line in o.log))
            if o.dax_status in ("no", "not tested"):
                print(f"DAX {o.dax_status} on {o.arch}: {o.dax_reason}")
            for warning in o.warnings:
                print(f"warning: {o.arch}: {warning}")
    return 0 if all(o.ok for o in outcomes) else 1


def _command_adder(sub: Any) -> Callable[..., argparse.ArgumentParser]:
    def add(name: str, func: Command, summary: str, json: bool = False,
            description: str | None = None) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=description or summary)
        parser.add_argument("--recipes", action="append", dest="sub_recipes", metavar="DIR",
                            help="an extra recipe directory (repeatable; also before the command)")
        if json:
            parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.set_defaults(func=func)
        return parser

    return add


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qemuprov",
        description="Build, install and probe QEMU + virtiofsd for virtio-fs (with DAX where the "
                    "tree has it).",
        epilog="Exit codes: 0 ok, 1 build or infrastructure failure, 2 bad input. "
               "`qemuprov COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"qemuprov {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    parser.add_argument("--recipes", action="append", metavar="DIR",
                        help="an extra recipe directory (repeatable; also QEMUPROV_RECIPES)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    add = _command_adder(sub)
    add("recipes", cmd_recipes, "list the recipes qemuprov can build", json=True)
    p = add("show", cmd_show, "the resolved recipe and, once fetched, its build plan", json=True)
    p.add_argument("recipe", metavar="RECIPE")
    p = add("probe", cmd_probe, "what a QEMU or virtiofsd can do: version, arch, vhost-user-fs, DAX", json=True,
            description="Probe QEMU system emulators, virtiofsd binaries, or install prefixes. "
                        "With no PATH: what is on PATH and in the usual distro places.")
    p.add_argument("paths", nargs="*", metavar="PATH")
    add("doctor", cmd_doctor, "is this host ready for virtio-fs, and for building QEMU?", json=True,
        description="One line per check: PASS, WARN or FAIL, with a hint for each problem. "
                    "Exit 1 when any check fails.")
    p = add("build", cmd_build, "fetch, configure, build, install and probe a recipe", json=True,
            description="Build RECIPE and install QEMU + virtiofsd into a prefix for PATH. An unchanged "
                        "rebuild is a no-op; a failed build leaves the previous install untouched.")
    p.add_argument("recipe", metavar="RECIPE")
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
    p.add_argument("--cache", metavar="PREFIXES_FILE/REPO",
                   help="a binary cache to install from when it has this very build (also QEMUPROV_BINARY_CACHE, "
                        "or [cache] url in ~/.config/qemuprov/config.toml)")
    p.add_argument("--no-cache", dest="use_cache", action="store_false", help="build even where the cache has it")
    p.add_argument("--cache-only", action="store_true",
                   help="install from the binary cache or fail (exit 1, with the reason), never compile: for CI jobs")
    p.add_argument("--push", action="store_true", help="push the result to the binary cache")
    p.add_argument("--shared-ccache", metavar="URL",
                   help="ccache's remote storage shared by machines: redis://HOST:PORT, or redis+unix:/PATH for "
                        "container builds (also QEMUPROV_SHARED_CCACHE, or [ccache] remote in config.toml)")
    p.add_argument("--update-lock", action="store_true",
                   help="resolve the refs again and move the recipe's lock file (qemuprov lock) to them")
    add("list", cmd_list, "installed builds with their probe summary", json=True)
    p = add("env", cmd_env, "shell lines that put a build on PATH (eval them)")
    p.add_argument("name", metavar="NAME|PREFIX")
    p.add_argument("--osv", action="store_true",
                   help="also OSv's scripts/run.py command line per arch, as comments (eval runs only the export)")
    p.add_argument("--share", metavar="DIR", help="with --osv: the directory to share (default: ~/osv-share)")
    p.add_argument("--tag", default="myfs", help="with --osv: the virtio-fs tag (default: myfs)")
    p.add_argument("--dax-size", metavar="SIZE",
                   help="with --osv, on a DAX build: the DAX window, a power of two (default: 1024M)")
    p = add("verify", cmd_verify, "boot a guest and prove a file crosses the virtio-fs share", json=True,
            description="For each arch: start virtiofsd on a temporary directory, boot a small Linux guest with "
                        "shared memory and vhost-user-fs-pci; the guest reads the host's file and writes one back "
                        "(and mounts with -o dax where the QEMU has the DAX window).")
    p.add_argument("target", nargs="?", metavar="NAME|PREFIX")
    p.add_argument("--qemu", action="append", metavar="PATH", help="a qemu-system-* binary (repeatable)")
    p.add_argument("--virtiofsd", metavar="PATH", help="the virtiofsd to pair it with")
    p.add_argument("--arch", metavar="A,B", help="only these arches")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                   help="auto: KVM only where it really works (default)")
    p.add_argument("--osv", action="store_true",
                   help="boot with the QEMU and virtiofsd command lines of OSv's scripts/run.py (user networking, "
                        "an aio=native disk, memory-backend-file on /dev/shm, queue-size=1024)")
    p.add_argument("--kernel", metavar="FILE", help="your own guest kernel (with --initrd)")
    p.add_argument("--initrd", metavar="FILE",
                   help="your own initramfs; its init mounts the tag given as qemuprov.tag= on the kernel line")
    p = add("image", cmd_image, "a runtime container image (or a tarball) of an install, for CI",
            description="Build a container image holding the install on PATH with only the runtime libraries it "
                        "needs, labelled with its manifest; or, with --tar, a relocatable tarball of the prefix.")
    p.add_argument("name", metavar="NAME|PREFIX")
    p.add_argument("--tag", metavar="T", help="image tag (default: qemuprov/NAME:latest)")
    p.add_argument("--base", metavar="IMAGE",
                   help="base image (default: the builder's base, or this host's distribution for host builds)")
    p.add_argument("--tar", metavar="FILE", help="write a relocatable .tar.gz of the prefix instead of an image")
    p = add("outdated", cmd_outdated, "do recipes name the newest releases? (exit 3 when an upgrade is due)", json=True,
            description="For each git source of the recipes (all, or those named): the newest release in the series "
                        "the recipe names and the newest overall, from one `git ls-remote` each (release "
                        "candidates ignored). Exit 0: all current; 3: an upgrade is due; 1: a remote did not "
                        "answer; 2: bad input.")
    p.add_argument("names", nargs="*", metavar="RECIPE")
    p = add("lock", cmd_lock, "pin the commits a recipe's refs name now, in RECIPE.lock beside the recipe",
            description="Resolve every git ref of the recipe (and the QEMU tree's submodules) and write the commits "
                        "to RECIPE.lock beside the recipe (for a shipped recipe, in your recipe directory). "
                        "`qemuprov build RECIPE` then builds exactly those; run lock again to move them.")
    p.add_argument("recipe", metavar="RECIPE")
    p = add("push", cmd_push, "publish an install to a binary cache (an OCI registry)",
            description="Push the install as an OCI artifact (its prefix as a layer, qemuprov.json as the config) "
                        "tagged with its cache key, so that `qemuprov build --cache` elsewhere installs it in "
                        "seconds. Credentials: docker login (~/.docker/config.json or $DOCKER_CONFIG).")
    p.add_argument("name", metavar="NAME|PREFIX")
    p.add_argument("to", nargs="?", metavar="PREFIXES_FILE/REPO")
    p = add("remove", cmd_remove, "delete an installed build")
    p.add_argument("name", metavar="NAME|PREFIX")
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP): cleaned up like Ctrl-C, and told apart by the exit status (128 + the signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


def _handle_signals() -> None:
    """Ctrl-C, `kill`, a CI timeout or a closing terminal: clean up (containers, staging, child processes).
    SIGINT is handled even where the parent ignored it (a background job of a script, some CI wrappers): Python
    then installs no handler of its own, and a build would run on through every Ctrl-C. SIGHUP is left ignored
    where it is (nohup)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminated)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _terminated)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.recipes = [*(args.recipes or ()), *(args.sub_recipes or ())]  # --recipes before or after the command
    func: Command = args.func
    _handle_signals()
    try:
        return func(args)
    except QemuprovError as exc:
        print(f"qemuprov: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        if getattr(args, "json", False):  # a script reading stdout learns of the failure too
            render.print_json({"error": exc.message, "hint": exc.hint, "exit_code": exc.exit_code,
                               **({"reason": exc.reason} if hasattr(exc, "reason") else {})})
        return exc.exit_code
    except Terminated as exc:
        print(f"qemuprov: stopped by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("qemuprov: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `qemuprov show ... | head -1`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    except OSError as exc:  # a full disk, a read-only HOME, a cache path that is a file: the machine's state
        if args.debug:
            traceback.print_exc()
        if exc.errno is None:  # requests and the docker SDK derive their errors from OSError, without one
            print(f"qemuprov: error: {exc}", file=sys.stderr)
            return 1
        where = f": {exc.filename}" if exc.filename else ""
        print(f"qemuprov: error: {exc.strerror or exc}{where}", file=sys.stderr)
        what = "the disk is full: free space" if exc.errno == errno.ENOSPC else "check the permissions and free space"
        untouched = "; the previous install, if any, is untouched" if args.command == "build" else ""
        print(f"hint: {what} where qemuprov works (QEMUPROV_CACHE, QEMUPROV_ROOT or --prefix move its "
              f"directories){untouched}", file=sys.stderr)
        return 1
    except Exception as exc:  # an unexpected failure: one line, the traceback only on request
        if args.debug:
            traceback.print_exc()
        print(f"qemuprov: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


__all__ = ["main", "UserError"]
