"""The commands that look and tell: recipes, show, probe, list, env."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

from qemuprov import arches
from qemuprov.building import pipeline
from qemuprov.commands.base import Command, book
from qemuprov.errors import InfraError, UserError
from qemuprov.infra import render
from qemuprov.knowledge import dax, kvm, osv, probe
from qemuprov.proving import libvirt
from qemuprov.recipe import Recipe, VirtiofsdFlavour
from qemuprov.records import installs


def cmd_recipes(args: argparse.Namespace) -> int:
    recipes, errors = book(args).load_all()
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
    rows.append(("virtiofsd", _virtiofsd_line(recipe)))
    for section in ("qemu", "virtiofsd"):
        for patch in recipe.patches(section):
            rows.append((f"{section} patch", f"{patch.name} (sha256 {patch.sha256[:16]}…, {patch.location})"))
    verify = "with OSv's scripts/run.py command lines" if recipe.verify_osv else "plain guest boot"
    return [*rows, ("expect", " ".join(promised)), ("build --verify", verify)]


def _virtiofsd_line(recipe: Recipe) -> str:
    spec = recipe.virtiofsd
    if spec.tree is None:
        return spec.source.value
    how = [f"builder {spec.builder or recipe.builder}", f"{spec.crates.value} crates", *(["static"] * spec.static)]
    return f"{spec.source.value} from {spec.tree.describe()} ({', '.join(how)})"


def cmd_show(args: argparse.Namespace) -> int:
    recipe = book(args).load(args.recipe)
    try:
        the_plan, problem = pipeline.known_plan(recipe), None
    except UserError as exc:  # the recipe is fine; this host cannot build the fetched tree as it is
        the_plan, problem = None, f"{exc.message}; {exc.hint}"
    if args.json:
        render.print_json({"recipe": recipe.to_dict(), "plan": asdict(the_plan) if the_plan else None,
                           "plan_problem": problem})
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
    print(f"\nplan for QEMU {the_plan.version} (virtiofsd: {the_plan.virtiofsd}):")
    for arg in the_plan.configure:
        print(f"  {arg.arg:<40}  {arg.reason}")
    print("  targets: " + (" ".join(the_plan.targets) or "make (all)"))
    for note in the_plan.notes:
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
            routes = ",".join(dax.qemu_routes(item)) or "no"
            rows.append((item.path, "qemu", item.version or "?", item.arch or "?",
                         render.yes_no(item.vhost_user_fs), routes, " ".join(notes)))
        else:
            notes = [f"shared-dir={item.source_option}", f"sandbox={'|'.join(item.sandboxes)}",
                     "needs-root" if item.needs_root else "unprivileged-ok", *([item.note] if item.note else [])]
            if item.rseq_wrapper:
                notes.append("rseq-wrapper")
            if item.rseq_risk:
                notes.append(f"RSEQ-KILL-RISK (run with GLIBC_TUNABLES={probe.RSEQ_TUNABLE})")
            rows.append((item.path, "virtiofsd", item.version or "?", item.flavour or "?", "-",
                         "window" if item.dax_window else "-", " ".join(notes)))
    return rows


def dax_lines(results: list[probe.Probe]) -> list[str]:
    """Per QEMU and virtiofsd probed together: the DAX route they take, or which side lacks what."""
    qemus = [r for r in results if isinstance(r, probe.QemuProbe) and not r.error]
    daemons = [r for r in results if isinstance(r, probe.VirtiofsdProbe) and not r.error]
    lines = []
    for qemu in qemus:
        for daemon in daemons:
            pair = dax.pairing(qemu, daemon)
            said = f"yes, through {pair.route}" if pair.route else f"no: {pair.missing}"
            lines.append(f"DAX with {Path(qemu.path).name} and {daemon.path}: {render.safe_text(said)}")
    return lines


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
        for line in dax_lines(results):
            print(line)
    return 2 if any(r.error for r in results) else 0


def cmd_list(args: argparse.Namespace) -> int:
    found = installs.list_installs()
    if args.json:
        render.print_json([{"name": e.name, "prefix": str(e.prefix), "recipe": e.recipe,
                            "commit": e.commit, "summary": e.summary(), "damaged": e.damaged,
                            "probe": [asdict(p) for p in e.probes]} for e in found])
        return 0
    if not found:
        print("no installs yet: qemuprov build qemu-7.2 (or virtio-fs-dev for DAX)")
        return 0
    rows = [(e.name, f"DAMAGED: {e.damaged}" if e.damaged else e.summary(), (e.commit or "")[:12], str(e.prefix))
            for e in found]
    print(render.table(("NAME", "BUILD", "COMMIT", "PREFIX"), rows))
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    if args.osv and args.libvirt:
        raise UserError("env: --osv and --libvirt print for two consumers: give one")
    if not (args.osv or args.libvirt) and (args.share or args.tag != "myfs" or args.dax_size):
        raise UserError("env: --share, --tag and --dax-size go with --osv or --libvirt")
    if args.arch and not args.libvirt:
        raise UserError("env: --arch goes with --libvirt (one domain per arch)")
    entry = installs.find_install(args.name).intact()
    if args.libvirt:
        print(_libvirt_domain(entry, args), end="")
        return 0
    bin_dir = entry.prefix / "bin"
    lines = _osv_lines(entry, args) if args.osv else []
    print(f'export PATH={shlex.quote(str(bin_dir))}:"$PATH"')
    for line in lines:  # a manifest may come from a tarball someone sent: no field of it may end the comment
        print(render.shell_comment(line))
    return 0


def _osv_lines(entry: installs.Install, args: argparse.Namespace) -> list[str]:
    """Comment lines: OSv's scripts/run.py command line per arch of the install, to paste in an OSv checkout."""
    qemus = {p.arch: entry.prefix / "bin" / Path(p.path).name for p in entry.qemu_probes}
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
    daemon = entry.virtiofsd_probe
    own = str(entry.prefix / "share" / "qemu")
    firmware = osv.check_pass_args_dirs(tuple(d for d in entry.firmware_dirs if d != own),
                                        str(entry.prefix / installs.MANIFEST))
    lines = osv.env_lines(f"{entry.name}: {entry.summary()}", qemus, share, tag, dax_size, firmware,
                          needs_root=daemon is not None and daemon.flavour == VirtiofsdFlavour.C)
    return [*lines, dax.OSV_ON_SHMEM] if _shmem_route(entry) else lines


def _shmem_route(entry: installs.Install) -> bool:
    """The install's own pair takes the shared memory route, which neither OSv nor libvirt's elements can use."""
    daemon = entry.virtiofsd_probe
    return daemon is not None and any(dax.pairing(q, daemon).route is dax.Route.SHMEM for q in entry.qemu_probes)


def _libvirt_domain(entry: installs.Install, args: argparse.Namespace) -> str:
    """A domain XML for libvirt with the install's QEMU and virtiofsd, after a comment that says what to add."""
    qemus = {p.arch: entry.prefix / "bin" / Path(p.path).name for p in entry.qemu_probes}
    if not qemus:
        raise UserError(f"--libvirt: {entry.name} holds no QEMU of its own (it is {entry.summary()})",
                        hint="put the QEMU you use in <emulator>, and this install's bin/virtiofsd in <binary path>")
    host = arches.host()
    arch = args.arch or (host.name if host and host.name in qemus else sorted(qemus)[-1])
    if arch not in qemus:
        raise UserError(f"--arch: {entry.name} has no QEMU for {arch} (it has: {', '.join(sorted(qemus))})")
    daemon = entry.virtiofsd_probe
    if daemon is None:
        raise UserError(f"--libvirt: {entry.name} holds no virtiofsd",
                        hint="build one (qemuprov build virtiofsd) and name its bin/virtiofsd in <binary path>")
    tag = osv.check_tag(args.tag)
    dax_bytes = osv.dax_size_bytes(args.dax_size) if args.dax_size is not None else None
    if dax_bytes is not None and not entry.dax:
        raise UserError(f"--dax-size: {entry.name} has no DAX window (cache-size); leave the option out",
                        hint="only a build of the virtio-fs-dev tree has one: qemuprov build virtio-fs-dev")
    if entry.dax and dax_bytes is None:
        dax_bytes = osv.dax_size_bytes(osv.DEFAULT_DAX_SIZE)
    share = Path(args.share).expanduser().absolute() if args.share else Path.home() / "libvirt-share"
    own = str(entry.prefix / "share" / "qemu")
    target = arches.get(arch)
    on_kvm = target is host and kvm.device().accessible
    # the install's own daemon, never a path its record names: a moved or planted prefix would name any binary,
    # which libvirt then runs as root
    xml = libvirt.domain_xml(f"qemuprov-{entry.name}-{arch}", qemus[arch], target, entry.prefix / "bin" / "virtiofsd",
                             share, tag,
                             dax_bytes, tuple(d for d in entry.firmware_dirs if d != own), on_kvm)
    descriptor = entry.prefix / "share" / "qemu" / "vhost-user" / "50-qemuprov-virtiofsd.json"
    notes = [f"qemuprov {entry.name} ({arch}): {entry.summary()}",
             "libvirt runs virtiofsd itself, as root: use qemu:///system (libvirt 9 and older have no virtiofs in "
             "session mode)" + ("; this C virtiofsd needs root in any case"
                                if daemon.flavour == VirtiofsdFlavour.C else ""),
             f"the guest mounts it with: mount -t virtiofs {tag} /mnt" + (" -o dax" if dax_bytes else ""),
             "add a disk or <kernel> to <os>, then: virsh define THIS-FILE",
             f"without <binary path>, libvirt finds this virtiofsd once its descriptor is linked: ln -s {descriptor} "
             f"/etc/qemu/vhost-user/50-qemuprov-{entry.name}.json (qemuprov remove unlinks it)"]
    if _shmem_route(entry):
        notes.append(libvirt.NO_GENERIC_DEVICE + "; for DAX add to this domain <qemu:commandline> "
                     f"-chardev socket,id=vfsdax,path=SOCKET -device {dax.GENERIC_DEVICE},chardev=vfsdax,"
                     f"{dax.GENERIC_FS_PROPERTIES}, and start {entry.prefix / 'bin' / 'virtiofsd'} yourself with "
                     "--socket-path SOCKET --shared-dir DIR --tag TAG --dax-window 1G")
    return "".join(f"<!-- {render.xml_comment(n)} -->\n" for n in notes) + xml


def _show_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", metavar="RECIPE", help="a recipe name from `qemuprov recipes`")


def _probe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="QEMU or virtiofsd binaries, or install prefixes (default: what PATH and the distro "
                        "locations hold)")


def _env_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME|PREFIX", help="an install: its name from `qemuprov list`, or its prefix")
    p.add_argument("--osv", action="store_true",
                   help="also OSv's scripts/run.py command line per arch, as comments (eval runs only the export)")
    p.add_argument("--libvirt", action="store_true",
                   help="instead: a libvirt domain XML with this install's QEMU and virtiofsd, memfd shared memory, "
                        "the virtiofs filesystem and, on a DAX build, the <qemu:override> of cache-size")
    p.add_argument("--arch", metavar="ARCH", help="with --libvirt: the QEMU of this arch (default: the host's)")
    p.add_argument("--share", metavar="DIR",
                   help="with --osv or --libvirt: the directory to share (default: ~/osv-share, ~/libvirt-share)")
    p.add_argument("--tag", default="myfs", help="with --osv or --libvirt: the virtio-fs tag (default: myfs)")
    p.add_argument("--dax-size", metavar="SIZE",
                   help="with --osv or --libvirt, on a DAX build: the DAX window, a power of two (default: 1024M)")


RECIPES = Command("recipes", "list the recipes qemuprov can build", cmd_recipes, json=True)
SHOW = Command("show", "the resolved recipe and, once fetched, its build plan", cmd_show, _show_arguments, json=True)
PROBE = Command("probe", "what a QEMU or virtiofsd can do: version, arch, vhost-user-fs, DAX", cmd_probe,
                _probe_arguments, json=True,
                description="Probe QEMU system emulators, virtiofsd binaries, or install prefixes. "
                            "With no PATH: what is on PATH and in the usual distro places.")
LIST = Command("list", "installed builds with their probe summary", cmd_list, json=True)
ENV = Command("env", "shell lines that put a build on PATH (eval them)", cmd_env, _env_arguments)
