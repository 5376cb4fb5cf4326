"""What OSv's scripts/run.py does with a build: the options it takes (for `env --osv`) and the virtiofsd and
QEMU command lines it starts (for `verify --osv`), as run.py at OSv 0e34e4dc prints them with --dry-run."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from qemuprov import arches
from qemuprov.errors import UserError

DEFAULT_TAG = "myfs"  # OSv's virtio-fs documentation uses this tag
DEFAULT_DAX_SIZE = "1024M"  # the size OSv's documentation shows for --virtio-fs-dax
MOUNT_FS = "virtiofs,/dev/virtiofs0,/virtiofs"  # the guest mounts the first virtio-fs device at /virtiofs
MEMORY = "2G"  # run.py's default -m
VCPUS = "4"  # run.py's default -smp
_SIZE = re.compile(r"^([1-9][0-9]*)([KMG]?)$")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def dax_size_bytes(text: str, option: str = "--dax-size") -> int:
    """A DAX window size as QEMU takes it for cache-size (64M, 1G, ...); it must be a power of two."""
    match = _SIZE.match(text.strip().upper())
    if not match:
        raise UserError(f'{option}: "{text}" is not a size', hint="give a power of two such as 64M, 1024M or 1G")
    size = int(match.group(1)) * _UNITS[match.group(2)]
    if size & (size - 1):
        raise UserError(f"{option}: {text} is not a power of two (QEMU's cache-size must be one)",
                        hint="for example 64M, 512M, 1024M or 2G")
    return size


def check_tag(tag: str) -> str:
    if not re.fullmatch(r"[\w.-]{1,36}", tag):
        raise UserError(f'--tag: "{tag}" cannot be a virtio-fs tag',
                        hint="letters, digits, '.', '_' and '-', at most 36 characters (e.g. myfs)")
    return tag


@dataclass(frozen=True)
class RunPyLine:
    """One scripts/run.py command line for one arch of an install."""

    arch: str
    qemu: Path
    share: Path
    tag: str
    dax_size: str | None  # --virtio-fs-dax; None on a build without the DAX window
    firmware: tuple[str, ...]  # -L directories QEMU needs (trees without firmware blobs)
    needs_root: bool  # the C virtiofsd: run.py runs under sudo, which must keep PATH

    def argv(self) -> list[str]:
        args = ["./scripts/run.py"]
        if arches.get(self.arch) is not arches.RUN_PY_DEFAULT:
            args += ["--arch", self.arch]
        args += [f"--qemu-path={self.qemu}", f"--virtio-fs-tag={self.tag}", f"--virtio-fs-dir={self.share}",
                 f"--mount-fs={MOUNT_FS}"]
        if self.dax_size:
            args.append(f"--virtio-fs-dax={self.dax_size}")
        if self.firmware:
            # run.py splits each --pass-args value on white space and appends the words to QEMU's line.
            args.append("--pass-args=" + " ".join(f"-L {directory}" for directory in self.firmware))
        return args

    def shell(self) -> str:
        # sudo resets PATH, and run.py starts `virtiofsd` by its bare name: hand PATH through.
        words = shlex.join(self.argv())
        return f'sudo env "PATH=$PATH" {words}' if self.needs_root else words


def check_pass_args_dirs(firmware: tuple[str, ...], where: str) -> tuple[str, ...]:
    """run.py splits --pass-args on white space into QEMU options: a firmware directory with white space in it,
    or one that is no absolute path, would add options of its own to a line users run with sudo."""
    for directory in firmware:
        if not directory.startswith("/") or any(c.isspace() for c in directory) or not directory.isprintable():
            raise UserError(f"{where}: the firmware directory {directory[:80]!r} cannot go on run.py's --pass-args, "
                            "which splits on white space into QEMU options", hint="rebuild the install")
    return firmware


def env_lines(install: str, qemus: dict[str, Path], share: Path, tag: str, dax_size: str | None,
              firmware: tuple[str, ...], needs_root: bool) -> list[str]:
    """What `qemuprov env --osv` prints as comments: run.py's command line per arch, and how to run it."""
    lines = [f"OSv's scripts/run.py with {install}. Run it in your OSv checkout, after",
             "the export above (run.py starts `virtiofsd` from PATH), once the shared directory exists:",
             f"  mkdir -p {shlex.quote(str(share))}"]
    if needs_root:
        lines.append("The C virtiofsd needs root, so run.py runs under sudo; `env PATH=$PATH` keeps this build on "
                     "sudo's PATH.")
    for arch, qemu in sorted(qemus.items()):
        lines += [f"{arch}:", f"  {RunPyLine(arch, qemu, share, tag, dax_size, firmware, needs_root).shell()}"]
    if dax_size:
        lines.append(f"--virtio-fs-dax={dax_size} is the DAX window (cache-size); choose another with --dax-size.")
    return lines


def virtiofsd_argv(daemon: str, socket: Path, share: Path) -> list[str]:
    """How run.py starts virtiofsd (found on PATH there; here the install's own)."""
    return [daemon, f"--socket-path={socket}", "-o", f"source={share}"]


def qemu_argv(qemu: str, arch: str, disk: Path, socket: Path, tag: str, dax_size: str | None,
              accel: str, boot_disk: bool = True) -> list[str]:
    """run.py's QEMU line for a virtio-fs guest, less what has nothing to do with the build (the VNC and gdb
    listeners, the OSv kernel and its arguments, which the caller supplies). accel "kvm" adds run.py's
    `-enable-kvm -cpu host,+x2apic` on x86_64; "tcg" leaves them out, as run.py does without /dev/kvm.
    boot_disk False: a -kernel given by the caller boots, so the disk gives up its bootindex."""
    fs_device = f"vhost-user-fs-pci,queue-size=1024,chardev=char0,tag={tag}"
    if dax_size:
        fs_device += f",cache-size={dax_size}"
    machine = arches.get(arch)
    disk_device = "virtio-blk-pci,id=blk0,drive=hd0" + (",bootindex=0" if machine.pc and boot_disk else "")
    argv = [qemu, "-m", MEMORY, "-smp", VCPUS, *machine.run_py_machine]
    argv += ["-device", disk_device,
             "-drive", f"file={disk},if=none,id=hd0,cache=none,aio=native",
             "-chardev", f"socket,id=char0,path={socket}",
             "-device", fs_device,
             "-object", f"memory-backend-file,id=mem,size={MEMORY},mem-path=/dev/shm,share=on",
             "-numa", "node,memdev=mem",
             "-netdev", "user,id=un0,net=192.168.122.0/24,host=192.168.122.1",
             "-device", "virtio-net-pci,netdev=un0",
             "-device", "virtio-rng-pci"]
    if machine.pc:
        if accel == "kvm":
            argv += ["-enable-kvm", "-cpu", "host,+x2apic"]
        argv += ["-chardev", "stdio,mux=on,id=stdio,signal=off", "-mon", "chardev=stdio,mode=readline",
                 "-device", "isa-serial,chardev=stdio"]
    return argv
