"""A tiny Linux guest per arch for `verify`: a distribution cloud kernel and a busybox initramfs whose init
mounts the virtio-fs share, reads the host's file, writes one back, and powers off. Fetched once with apt."""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qemuprov.errors import InfraError, QemuprovError
from qemuprov.infra import paths, procs
from qemuprov.infra.progress import Reporter

DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "fuse",
           "virtiofs")
TAG = "qemuprov"

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /mnt
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in %(modules)s; do [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko; done
say() { echo "QEMUPROV: $*"; }
tag=$(sed -n 's/.*qemuprov.tag=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
tag=${tag:-%(tag)s}
if mount -t virtiofs "$tag" /mnt; then
  say "mounted"
  say "read $(cat /mnt/from-host.txt)"
  if { cat /mnt/from-host.txt > /mnt/from-guest.txt; } 2>/write.err && sync; then
    say "wrote"
  else
    say "write-failed $(cat /write.err)"
  fi
  umount /mnt
  if grep -q dax /proc/cmdline; then
    dmesg | grep 'Cache len' | sed 's/^/QEMUPROV: dax-window /'
    if mount -t virtiofs -o dax "$tag" /mnt 2>/dax.err; then
      say "dax-mount $(grep ' /mnt ' /proc/mounts)"
      say "dax-read $(cat /mnt/from-host.txt 2>&1)"
      umount /mnt
    else
      say "dax-mount-failed $(cat /dax.err)"
      dmesg | grep -i -e dax -e virtiofs -e fuse | tail -n 5 | sed 's/^/QEMUPROV: dmesg /'
    fi
  fi
else
  say "mount-failed"
  dmesg | tail -n 15 | sed 's/^/QEMUPROV: dmesg /'
fi
say "done"
poweroff -f
"""


@dataclass(frozen=True)
class Kit:
    arch: str
    kernel: Path
    initrd: Path
    fuse_dax: bool | None = None  # the kernel's CONFIG_FUSE_DAX, where its config is known

    @property
    def description(self) -> str:
        return f"the guest kernel {self.kernel}"

    def record(self) -> dict[str, str]:
        """Which guest booted, for verify's result in qemuprov.json: the kernel's version (where the kit knows
        it) and the sha256 of the kernel and initramfs, so two machines' PASSes can be told the same claim."""
        version_file = self.kernel.with_name("kernel-version")
        return {"kernel": version_file.read_text().strip() if version_file.exists() else self.kernel.name,
                "kernel_sha256": _sha256(self.kernel), "initrd_sha256": _sha256(self.initrd)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fuse_dax_from_config(text: str) -> bool | None:
    """CONFIG_FUSE_DAX in a kernel's config file: True, False (not set), None (the file does not say)."""
    if re.search(r"^CONFIG_FUSE_DAX=y", text, re.MULTILINE):
        return True
    if "# CONFIG_FUSE_DAX is not set" in text or "CONFIG_FUSE_FS=" in text:
        return False
    return None


def _kit_fuse_dax(config: Path) -> bool | None:
    try:
        return fuse_dax_from_config(config.read_text(errors="replace"))
    except OSError:
        return None


def _cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive (what the kernel unpacks as an initramfs) of (name, mode, data)."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        out += b"070701" + b"".join(f"{v:08x}".encode() for v in fields) + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def _download(packages: list[str], deb_arch: str, into: Path) -> None:
    result = procs.run(["apt-get", "download", f"-oAPT::Architecture={deb_arch}", *packages], timeout=600, cwd=into)
    if not result.ok:
        raise InfraError(f"could not fetch the guest kit ({' '.join(packages)}): {result.stderr.strip()[-300:]}",
                         hint="on Debian/Ubuntu with apt; or bring your own with --kernel and --initrd")


def _kernel_package(deb_arch: str) -> str:
    meta = f"linux-image-cloud-{deb_arch}"
    result = procs.run(["apt-cache", f"-oAPT::Architecture={deb_arch}", "depends", meta], timeout=60)
    for line in result.stdout.splitlines():
        name = line.split(":", 1)[-1].strip()
        if line.strip().startswith("Depends:") and name.startswith("linux-image-"):
            return name.split(":")[0]
    raise InfraError(f"apt knows no {meta}",
                     hint=f"as root: dpkg --add-architecture {deb_arch} && apt-get update; "
                          "or bring your own --kernel/--initrd")


# Run in a Debian container where the host has no apt: the same packages, unpacked into /out/root.
CONTAINER_UNPACK = r"""set -e
dpkg --add-architecture "$1" && apt-get update -q >/dev/null
kernel=$(apt-cache depends "linux-image-cloud-$1:$1" | sed -n 's/.*Depends: \(linux-image-[^: ]*\).*/\1/p' | head -1)
cd /out && apt-get download -q "$kernel:$1" "busybox-static:$1" >/dev/null 2>&1
for deb in /out/*.deb; do dpkg-deb -x "$deb" /out/root; done
rm -f /out/*.deb && chown -R "$2" /out/root
"""
KIT_IMAGE = "debian:bookworm"


def _unpack_in_container(deb_arch: str, work: Path) -> None:
    from qemuprov.infra import engines

    try:
        engine = engines.require_engine()
    except QemuprovError as exc:
        raise InfraError("this host has no apt to fetch the guest kit with, and " + exc.message,
                         hint="start Docker or Podman, or bring your own guest with --kernel and --initrd") from None
    client = engines.client(engine)
    owner = f"{os.getuid()}:{os.getgid()}"
    try:
        client.containers.run(KIT_IMAGE, ["sh", "-c", CONTAINER_UNPACK, "sh", deb_arch, owner], remove=True,
                              network_mode="host", volumes={str(work): {"bind": "/out", "mode": "rw"}})
    except Exception as exc:  # the SDK's ContainerError, ImageNotFound, APIError: all mean no kit
        raise InfraError(f"could not fetch the guest kit in a {KIT_IMAGE} container: {exc}",
                         hint="bring your own guest with --kernel and --initrd") from None


def ensure_kit(arch: str) -> Kit:
    # Keyed by what goes into the initramfs, so a changed init never meets a stale kit.
    recipe = hashlib.sha256((INIT + " ".join(MODULES)).encode()).hexdigest()[:12]
    home = paths.cache_dir() / "guest" / f"{arch}-{recipe}"
    kit = Kit(arch, home / "vmlinuz", home / "initrd.cpio", _kit_fuse_dax(home / "config"))
    if kit.kernel.exists() and kit.initrd.exists():
        return kit
    deb_arch = DEB_ARCH[arch]
    Reporter().step("guest kit", f"fetching Debian's cloud kernel and busybox for {arch} into {home} (once)")
    paths.cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qemuprov-kit-", dir=paths.cache_dir()) as tmp:
        work = Path(tmp)
        root = work / "root"
        if shutil.which("apt-get") and shutil.which("dpkg-deb"):
            _download([_kernel_package(deb_arch), "busybox-static"], deb_arch, work)
            for deb in work.glob("*.deb"):
                unpacked = procs.run(["dpkg-deb", "-x", deb, root], timeout=300, env=procs.base_env())
                if not unpacked.ok:
                    raise InfraError(f"dpkg-deb -x {deb.name} {unpacked.why()}: {unpacked.stderr.strip()[-300:]}",
                                     hint="give your own guest with --kernel and --initrd")
        else:
            _unpack_in_container(deb_arch, work)
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        if not kernels:
            raise InfraError(f"the kernel package for {arch} holds no /boot/vmlinuz-*")
        entries: list[tuple[str, int, bytes]] = [
            ("bin", 0o040755, b""), ("lib", 0o040755, b""), ("lib/modules", 0o040755, b""),
            ("bin/busybox", 0o100755, (root / "bin" / "busybox").read_bytes()),
            ("init", 0o100755, (INIT % {"modules": " ".join(MODULES), "tag": TAG}).encode()),
        ]
        for module in MODULES:
            found = sorted(root.glob(f"lib/modules/*/kernel/**/{module}.ko*"))
            if found:
                data = found[0].read_bytes()
                data = lzma.decompress(data) if found[0].suffix == ".xz" else data
                entries.append((f"lib/modules/{module}.ko", 0o100644, data))
        home.mkdir(parents=True, exist_ok=True)
        config = root / "boot" / kernels[-1].name.replace("vmlinuz-", "config-", 1)
        if config.exists():
            shutil.copyfile(config, home / "config")
        shutil.copyfile(kernels[-1], kit.kernel)
        (home / "kernel-version").write_text(kernels[-1].name.removeprefix("vmlinuz-") + "\n")
        kit.initrd.write_bytes(_cpio_newc(entries))
    return Kit(arch, kit.kernel, kit.initrd, _kit_fuse_dax(home / "config"))
