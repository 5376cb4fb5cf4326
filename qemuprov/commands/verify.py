"""qemuprov verify: boot a guest over virtio-fs, and the table of its results."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from qemuprov.commands.base import Command
from qemuprov.errors import UserError
from qemuprov.infra import render
from qemuprov.proving import verify
from qemuprov.recipe import split_arches
from qemuprov.records import installs
from qemuprov.records.manifest import VerifyMode


def cmd_verify(args: argparse.Namespace) -> int:
    targets = targets_of(args, "verify")
    qemus, daemon_path, firmware = targets.qemus, targets.virtiofsd, targets.firmware
    wanted = split_arches(args.arch) if args.arch is not None else None
    if args.osv and args.libvirt:
        raise UserError("verify: --osv and --libvirt are two ways to start the guest: give one")
    if args.connect and not args.libvirt:
        raise UserError("verify: --connect goes with --libvirt")
    mode = VerifyMode.OSV if args.osv else VerifyMode.LIBVIRT if args.libvirt else VerifyMode.PLAIN
    outcomes = verify.verify_all(qemus, daemon_path, firmware, wanted, args.accel, _own_kit(args), mode, args.connect)
    return render_outcomes(outcomes, args.json)


def targets_of(args: argparse.Namespace, command: str) -> Any:
    """The QEMUs and virtiofsd an install holds, or the ones given by path."""
    if args.target and (args.qemu or args.virtiofsd):
        raise UserError(f"{command}: give an install (NAME|PREFIX) or --qemu with --virtiofsd, not both")
    if args.target:
        return verify.install_targets(installs.find_install(args.target).intact())
    if args.qemu and args.virtiofsd:
        return verify.binary_targets([Path(q) for q in args.qemu], Path(args.virtiofsd))
    raise UserError(f"{command}: give an install name or prefix, or both --qemu PATH and --virtiofsd PATH")


def _own_kit(args: argparse.Namespace) -> tuple[Path, Path] | None:
    if bool(args.kernel) != bool(args.initrd):
        raise UserError("verify: --kernel and --initrd go together")
    if args.kernel:
        for option, value in (("--kernel", args.kernel), ("--initrd", args.initrd)):
            if not Path(value).is_file():
                raise UserError(f"{option}: {value} is not a file")
        return Path(args.kernel), Path(args.initrd)
    return None


def render_outcomes(outcomes: list[Any], as_json: bool) -> int:
    if as_json:
        render.print_json([asdict(o) for o in outcomes])
    else:
        rows = [(o.arch, "PASS" if o.ok else f"FAIL ({o.failure})", f"{o.seconds:.1f} s", o.accel,
                 o.dax_status, o.message) for o in outcomes]
        print(render.table(("ARCH", "RESULT", "TIME", "ACCEL", "DAX", "DETAIL"), rows))
        for o in outcomes:
            if not o.ok:
                print("\n".join(f"    {o.arch}: {line}" for line in o.log))
            if o.dax_status in ("no", "not tested") or (o.dax_status == "-" and o.dax_reason and o.dax_route is None
                                                         and "no DAX window" not in o.dax_reason):
                print(f"DAX {o.dax_status} on {o.arch}: {o.dax_reason}")
            elif o.dax:
                seen = {True: "; a change made on the host while it was mapped was seen at once",
                        False: "; a change made on the host while it was mapped was NOT seen",
                        None: ""}[o.dax_sees_host_changes]
                print(f"DAX yes on {o.arch}, through {o.dax_route}: the guest read a file through the window{seen}")
            for warning in o.warnings:
                print(f"warning: {o.arch}: {warning}")
    return 0 if all(o.ok for o in outcomes) else 1


def target_arguments(p: argparse.ArgumentParser) -> None:
    """What to boot: an install, or binaries by path; which arches; which accelerator."""
    p.add_argument("target", nargs="?", metavar="NAME|PREFIX",
                   help="an install (its name from `qemuprov list`, or its prefix); or give --qemu and --virtiofsd")
    p.add_argument("--qemu", action="append", metavar="PATH", help="a qemu-system-* binary (repeatable)")
    p.add_argument("--virtiofsd", metavar="PATH", help="the virtiofsd to pair it with")
    p.add_argument("--arch", metavar="A,B", help="only these arches")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                   help="auto: KVM only where it really works (default)")


def _arguments(p: argparse.ArgumentParser) -> None:
    target_arguments(p)
    p.add_argument("--osv", action="store_true",
                   help="boot with the QEMU and virtiofsd command lines of OSv's scripts/run.py (user networking, "
                        "an aio=native disk, memory-backend-file on /dev/shm, queue-size=1024)")
    p.add_argument("--libvirt", action="store_true",
                   help="boot through libvirt: a transient domain from the XML `qemuprov env NAME --libvirt` prints "
                        "(needs a running libvirtd in system mode)")
    p.add_argument("--connect", metavar="URI",
                   help="with --libvirt: libvirt's URI (default: LIBVIRT_DEFAULT_URI, or qemu:///system)")
    p.add_argument("--kernel", metavar="FILE", help="your own guest kernel (with --initrd)")
    p.add_argument("--initrd", metavar="FILE",
                   help="your own initramfs; its init mounts the tag given as qemuprov.tag= on the kernel line")


VERIFY = Command("verify", "boot a guest and prove a file crosses the virtio-fs share", cmd_verify, _arguments,
                 json=True,
                 description="For each arch: start virtiofsd on a temporary directory, boot a small Linux guest with "
                             "shared memory and vhost-user-fs-pci; the guest reads the host's file and writes one "
                             "back (and mounts with -o dax where the QEMU has the DAX window).")
