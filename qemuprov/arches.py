"""What an arch means to everything that boots or builds for it: QEMU's name, Debian's, the guest's console and
machine, the cross compiler, and the tiny guest that tells whether KVM really runs here. Every room asks an
`Arch` instead of comparing strings."""

from __future__ import annotations

import platform
from dataclasses import dataclass

from qemuprov.errors import UserError


@dataclass(frozen=True)
class Arch:
    name: str  # QEMU's: qemu-system-NAME
    deb_arch: str  # Debian's, for the guest kit's packages and cross libraries
    console: str  # the guest kernel's serial console
    machine: str | None  # -machine for a guest (None: QEMU's default, pc)
    cpu: str | None  # -cpu for a guest (None: QEMU's default)
    libvirt_machine: str
    libvirt_acpi: bool  # <features><acpi/>: without it an x86 guest cannot power off; virt needs a <cpu> instead
    display_none: bool  # `-display none` wanted (aarch64's virt has no default display to turn off)
    debian_qemu_package: str  # the Debian package that ships qemu-system-NAME
    cross_package: str  # Debian's gcc-* cross compiler package for this target
    cross_prefix: str  # the cross tools' prefix, e.g. aarch64-linux-gnu-
    kvm_argv: tuple[str, ...]  # the KVM test guest's machine and firmware options, before `-bios IMAGE`
    kvm_exit: int  # QEMU's exit status when that guest finished
    firmware: tuple[str, ...]  # the files of share/qemu its machines load (patterns); the rest of the blobs can go
    pc: bool  # a PC: OSv's run.py boots it from the disk (bootindex), with an ISA serial console on stdio
    run_py_machine: tuple[str, ...]  # what OSv's run.py adds for this arch's machine

    @property
    def qemu(self) -> str:
        return f"qemu-system-{self.name}"

    def __str__(self) -> str:
        return self.name


# x86_64: a 64 KiB BIOS image goes from real mode to long mode, then writes 0x21 to isa-debug-exit (status 67).
# aarch64: firmware at 0 on `virt` asks PSCI (hvc) for SYSTEM_OFF, which QEMU answers by exiting with status 0.
X86_64 = Arch("x86_64", "amd64", "ttyS0", None, None, "pc", True, True, "qemu-system-x86", "gcc-x86-64-linux-gnu",
              "x86_64-linux-gnu-", ("-machine", "pc", "-device", "isa-debug-exit,iobase=0xf4,iosize=4"),
              (0x21 << 1) | 1,
              ("bios.bin", "bios-256k.bin", "bios-microvm.bin", "qboot.rom", "vgabios*.bin", "sgabios.bin",
               "linuxboot.bin", "linuxboot_dma.bin", "multiboot.bin", "multiboot_dma.bin", "pvh.bin", "kvmvapic.bin"),
              True, ())
AARCH64 = Arch("aarch64", "arm64", "ttyAMA0", "virt", "max", "virt", False, False, "qemu-system-arm",
               "gcc-aarch64-linux-gnu", "aarch64-linux-gnu-", ("-machine", "virt", "-cpu", "max"), 0,
               (),  # the virt machine boots -kernel with no firmware of its own
               False, ("--nographic", "-machine", "gic-version=max", "-cpu", "cortex-a57", "-machine", "virt"))
ARCHES: dict[str, Arch] = {a.name: a for a in (X86_64, AARCH64)}
RUN_PY_DEFAULT = X86_64  # what OSv's run.py boots without --arch
_HOST_NAMES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def get(name: str) -> Arch:
    try:
        return ARCHES[name]
    except KeyError:
        raise UserError(f'"{name}" is not an arch qemuprov knows', hint=f"one of {', '.join(ARCHES)}") from None


def host(machine: str | None = None) -> Arch | None:
    """This machine's own arch (platform.machine(), or the name given); None for one qemuprov does not boot."""
    found = _HOST_NAMES.get(machine if machine is not None else platform.machine())
    return ARCHES[found] if found else None
