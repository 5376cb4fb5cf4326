"""Which of QEMU's firmware files (share/qemu, from pc-bios/) the guests qemuprov's users run load: SeaBIOS and
its helpers for x86 (including -kernel, multiboot and PVH boots), the VGA BIOSes of the default displays, the
option ROMs of the NICs (virtio-net-pci, which OSv's run.py uses, loads efi-virtio.rom on every arch), and the
keymaps a VNC display needs. edk2 (UEFI) and the other targets' firmware are not among them: a recipe that boots
UEFI guests says `firmware = "all"` in [qemu]."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from qemuprov.arches import ARCHES
from qemuprov.infra import paths

# Where distributions put it, for QEMUs built from their source trees (which carry no blobs).
DISTRO_FIRMWARE = ("/usr/share/seabios", "/usr/share/qemu", "/usr/lib/ipxe/qemu", "/usr/share/ipxe/qemu")
COMMON = ("keymaps", "trace-events-all", "vhost-user", "efi-*.rom", "pxe-*.rom")


def needed(name: str, arches: tuple[str, ...]) -> bool:
    patterns = COMMON + tuple(p for arch in arches if arch in ARCHES for p in ARCHES[arch].firmware)
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def keep_needed(datadir: Path, arches: tuple[str, ...]) -> list[str]:
    """Remove from an installed share/qemu what these arches never load; the names removed. An arch this
    module does not know keeps everything."""
    if not datadir.is_dir() or any(arch not in ARCHES for arch in arches):
        return []
    removed = []
    for entry in sorted(datadir.iterdir()):
        if needed(entry.name, arches):
            continue
        paths.remove_tree(entry)
        removed.append(entry.name)
    return removed
