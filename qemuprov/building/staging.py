"""Shape a staged install into the layout users put on PATH, and swap it into place atomically."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import json
import os
import shutil
import stat
from pathlib import Path

from qemuprov.building.workspace import Workspace
from qemuprov.infra import paths
from qemuprov.infra.procs import signals_deferred
from qemuprov.knowledge import firmware
from qemuprov.knowledge.firmware import DISTRO_FIRMWARE
from qemuprov.knowledge.plan import Plan
from qemuprov.knowledge.probe import RSEQ_TUNABLE
from qemuprov.recipe import FirmwareSet, VirtiofsdFlavour
from qemuprov.records.manifest import VirtiofsdRecord

RENAME_EXCHANGE = 2
AT_FDCWD = -100

WRAPPER = """#!/bin/sh
# Installed by qemuprov. This C virtiofsd predates QEMU 7.0: its seccomp filter lacks rseq, which glibc 2.35
# and later use, so it would be killed (SIGSYS) the moment a guest mounts the share. Turn rseq off for it.
GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}%s"
export GLIBC_TUNABLES
exec "$(dirname "$(readlink -f "$0")")/../libexec/virtiofsd" "$@"
""".replace("%s", RSEQ_TUNABLE)


def finish_tree(ws: Workspace, plan: Plan | None) -> tuple[VirtiofsdRecord, tuple[str, ...]]:
    """bin/virtiofsd on PATH (a wrapper where rseq must be off); the firmware directories QEMU needs.
    No plan: the recipe built the Rust daemon alone."""
    staged = ws.staged
    bin_dir, daemon = staged / "bin", staged / "libexec" / "virtiofsd"
    virtiofsd = VirtiofsdRecord(plan.virtiofsd if plan else VirtiofsdFlavour.RUST)
    if daemon.exists():
        bin_dir.mkdir(parents=True, exist_ok=True)
        if plan and plan.rseq_wrapper:
            wrapper = bin_dir / "virtiofsd"
            wrapper.write_text(WRAPPER)
            wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | 0o644)
            virtiofsd = dataclasses.replace(virtiofsd, wrapper=True, binary=str(ws.final(daemon)))
        else:
            daemon.rename(bin_dir / "virtiofsd")
            with contextlib.suppress(OSError):  # libexec held only the daemon
                daemon.parent.rmdir()
    if (bin_dir / "virtiofsd").exists():
        write_vhost_user_descriptor(ws)
    if plan is None:
        return virtiofsd, ()
    if plan.firmware == FirmwareSet.NEEDED:
        firmware.keep_needed(staged / "share" / "qemu", plan.arches)
    directories = [str(ws.final(staged / "share" / "qemu"))]
    if not plan.tree.has_blobs:
        directories += [d for d in DISTRO_FIRMWARE if Path(d).is_dir()]
    return virtiofsd, tuple(directories)


VHOST_USER_DIR = Path("share") / "qemu" / "vhost-user"
DESCRIPTOR = "50-qemuprov-virtiofsd.json"


def write_vhost_user_descriptor(ws: Workspace) -> None:
    """share/qemu/vhost-user/ describes the install's own virtiofsd (docs/interop/vhost-user.json of QEMU: type
    fs, the binary's path), so libvirt and other readers of those directories find the binary at its final
    path. QEMU's own descriptor names the configure prefix, which exists on no machine: it goes."""
    directory = ws.staged / VHOST_USER_DIR
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "50-qemu-virtiofsd.json").unlink(missing_ok=True)
    descriptor = {"description": f"virtiofsd of the qemuprov install {ws.prefix.name}", "type": "fs",
                  "binary": str(ws.final(ws.staged / "bin" / "virtiofsd"))}
    (directory / DESCRIPTOR).write_text(json.dumps(descriptor, indent=2) + "\n")


def _exchange(a: Path, b: Path) -> bool:
    """renameat2(RENAME_EXCHANGE): swap two paths in one step. False where the kernel or libc lacks it."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    result = libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    return bool(result == 0)


def commit_prefix(staged: Path, prefix: Path) -> None:
    """Put the staged tree at `prefix`. The old tree is replaced in one atomic exchange, then deleted."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    incoming = paths.side_path(prefix, "new")
    with signals_deferred():  # a Ctrl-C now comes after the swap, never between its renames
        shutil.move(str(staged), incoming)
        if not prefix.exists():
            incoming.rename(prefix)
            return
        if not _exchange(incoming, prefix):
            old = paths.side_path(prefix, "old")
            prefix.rename(old)
            incoming.rename(prefix)
            incoming = old
    paths.remove_tree(incoming)
