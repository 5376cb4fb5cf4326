"""A tiny Linux guest per arch for `verify`: Debian 13's cloud kernel and a busybox initramfs whose init mounts
the virtio-fs share, reads the host's file, writes one back, and powers off. The packages are pinned by version,
size and sha256 and fetched once over HTTP from a Debian mirror or Debian's snapshot archive (no apt, no
container), so every host boots the same guest."""

from __future__ import annotations

import hashlib
import json
import lzma
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import filelock

from qemuprov import arches
from qemuprov.errors import InfraError
from qemuprov.infra import debian, paths, safefile
from qemuprov.infra.debian import Pin
from qemuprov.infra.progress import Reporter

MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "fuse",
           "virtiofs")
NINE_P_MODULES = ("netfs", "9pnet", "9pnet_virtio", "9p")  # in the generic kernel; the cloud kernel has no 9p
TAG = "qemuprov"

# The one guest init: every guest qemuprov boots starts the same way and ends by saying "done" and powering off;
# what it does between is its part (verify's round trip here, bench's jobs in bench.py).
INIT_START = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /mnt /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in MODULES; do [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko; done
say() { echo "QEMUPROV: $*"; }
arg() { sed -n "s/.*qemuprov\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
"""
INIT_END = """say done
poweroff -f
"""

ROUND_TRIP = """tag=$(arg tag)
tag=${tag:-DEFAULT_TAG}
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
      first=$(head -c 16 /mnt/dax-probe.bin 2>&1)
      say "dax-read $first"
      say "dax-wait-change"
      i=0
      while [ $i -lt 50 ]; do
        now=$(head -c 16 /mnt/dax-probe.bin 2>&1)
        [ "$now" != "$first" ] && break
        sleep 0.1
        i=$((i + 1))
      done
      say "dax-after-change $now"
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
""".replace("DEFAULT_TAG", TAG)


def init_script(part: str, modules: tuple[str, ...]) -> str:
    """The guest init: the common start (busybox, /proc, /sys, /dev, the modules, `say`, `arg NAME` for
    qemuprov.NAME= of the kernel's command line), the caller's part, the common end."""
    return INIT_START.replace("MODULES", " ".join(modules)) + part + INIT_END


INIT = init_script(ROUND_TRIP, MODULES)


@dataclass(frozen=True)
class Kit:
    arch: arches.Arch
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
                "kernel_sha256": sha256_of(self.kernel), "initrd_sha256": sha256_of(self.initrd)}


def sha256_of(path: Path) -> str:
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


def cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive (what the kernel unpacks as an initramfs) of (name, mode, data)."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        out += b"070701" + b"".join(f"{v:08x}".encode() for v in fields) + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


# The same guest on every host (Debian 13's cloud kernel: virtio-fs, FUSE and, on both arches, FUSE_DAX; and
# busybox), whatever the host's own distribution. Moving a pin re-fetches the kit (its directory is keyed by it).
SUITE = "trixie"
# The snapshot archive's view of Debian on a day the pins were current: where a pin is found once the live mirror
# has moved on to Debian's next point release.
SNAPSHOT_STAMP = "20261206T000000Z"
BUSYBOX = {"amd64": Pin("busybox-static", "1:1.37.0-6+b9", "busybox", 955316,
                        "598a3fd92bdafc34cd81196b2952ad36e910e47a4ecf162f8ce5e8e262598e53"),
           "arm64": Pin("busybox-static", "1:1.37.0-6+b9", "busybox", 847552,
                        "c833be48abfa16bc19c4966ec93e289ff1ce5d2f1476cad3a57bd105378cd15c")}
PINS: dict[str, tuple[Pin, ...]] = {
    "amd64": (Pin("linux-image-6.12.117+deb13-cloud-amd64", "6.12.117-1", "linux-signed-amd64", 34671208,
                  "e9893e5295d0549b8852611f12a4b8b5f6cc4b8128dcc2086b9847793b904ab7"), BUSYBOX["amd64"]),
    "arm64": (Pin("linux-image-6.12.117+deb13-cloud-arm64", "6.12.117-1", "linux-signed-arm64", 28391960,
                  "cc33e288505c3271539beab498aeb4f25e27b8f7c0c49ddb6c506b6d3c50c22f"), BUSYBOX["arm64"]),
}
# The same kernel release in Debian's generic flavour (about 100 MB a package against 30): virtio-fs and FUSE_DAX
# built in on both arches as in the cloud kernel, and 9p as modules, which the cloud kernel lacks. bench boots it,
# so that virtio-fs, DAX and 9p are measured on one kernel.
GENERIC_PINS: dict[str, tuple[Pin, ...]] = {
    "amd64": (Pin("linux-image-6.12.117+deb13-amd64", "6.12.117-1", "linux-signed-amd64", 108488460,
                  "ca712d36790184f6ac125ce2b20ea4e2202ae6bb7817b7de268f1f0115ccda73"), BUSYBOX["amd64"]),
    "arm64": (Pin("linux-image-6.12.117+deb13-arm64", "6.12.117-1", "linux-signed-arm64", 93443312,
                  "73805585385c78e048e63fdfba66da36bab724c2cdebd96a3055a8a4f1ae287a"), BUSYBOX["arm64"]),
}


@dataclass(frozen=True)
class KitSpec:
    """Which kernel flavour a kit boots, and which of its modules go into the initramfs."""

    name: str
    pins: dict[str, tuple[Pin, ...]]
    modules: tuple[str, ...]


CLOUD = KitSpec("cloud", PINS, MODULES)
GENERIC = KitSpec("generic", GENERIC_PINS, MODULES + NINE_P_MODULES)
KIT_FILES = ("vmlinuz", "initrd.cpio")
LOCK_TIMEOUT = 1800.0  # another verify fetching the same kit: a slow mirror takes minutes for 100 MB


def ensure_kit(arch: arches.Arch, spec: KitSpec = CLOUD) -> Kit:
    """The kit for arch, made once: fetched under a lock, built under a temporary name and renamed into place
    with the digests of its files, which every later use checks (a kit cut short, or changed since, is made
    again)."""
    # Keyed by what goes into it (the pinned packages, the init), so a moved pin never meets a stale kit.
    deb_arch = arch.deb_arch
    pins = spec.pins[deb_arch]
    pinned = " ".join(f"{p.package}={p.version}@{p.sha256}" for p in pins)
    recipe = hashlib.sha256((init_script(ROUND_TRIP, spec.modules) + pinned).encode()).hexdigest()[:12]
    guest = paths.cache_dir() / "guest"
    home = guest / (f"{arch}-{recipe}" if spec is CLOUD else f"{arch}-{spec.name}-{recipe}")
    guest.mkdir(parents=True, exist_ok=True)
    try:
        with filelock.FileLock(str(guest / f".{home.name}.lock"), timeout=LOCK_TIMEOUT):
            if not _intact(home):
                _make_kit(arch, spec, pins, deb_arch, home)
    except filelock.Timeout:
        raise InfraError(f"another qemuprov has been fetching the guest kit {home} for {LOCK_TIMEOUT:.0f} s",
                         hint="wait for it, or stop it and run again") from None
    return Kit(arch, home / "vmlinuz", home / "initrd.cpio", _kit_fuse_dax(home / "config"))


def _intact(home: Path) -> bool:
    """The kit at home is whole and unchanged: each file's sha256 is the one recorded when it was made."""
    try:
        recorded = json.loads(safefile.read_bytes(home / "kit.json", follow=False))
        return all(isinstance(recorded.get(name), str) and sha256_of(home / name) == recorded[name]
                   for name in KIT_FILES)
    except (OSError, ValueError, AttributeError):
        return False


def _make_kit(arch: arches.Arch, spec: KitSpec, pins: tuple[Pin, ...], deb_arch: str, home: Path) -> None:
    Reporter().step("guest kit", f"fetching Debian {SUITE}'s {spec.name} kernel and busybox for {arch} (pinned: "
                                 f"{pins[0].package} {pins[0].version}) into {home} (once)")
    with tempfile.TemporaryDirectory(prefix=".kit-", dir=home.parent) as tmp:
        work = Path(tmp)
        root, made = work / "root", work / "kit"
        made.mkdir()
        for pin in pins:
            deb = debian.fetch(pin, deb_arch, SNAPSHOT_STAMP, work)
            try:
                debian.unpack_deb(deb, root, work)
            except debian.BadPackage as exc:
                raise InfraError(f"{deb.name}: {exc}", hint="give your own guest with --kernel and --initrd") \
                    from None
            deb.unlink()
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        busybox = [b for b in (root / "usr" / "bin" / "busybox", root / "bin" / "busybox") if b.is_file()]
        if not kernels or not busybox:
            raise InfraError(f"the pinned packages for {arch} hold no /boot/vmlinuz-* or no busybox")
        entries: list[tuple[str, int, bytes]] = [
            ("bin", 0o040755, b""), ("lib", 0o040755, b""), ("lib/modules", 0o040755, b""),
            ("bin/busybox", 0o100755, busybox[0].read_bytes()),  # Debian 13 is usr-merged
            ("init", 0o100755, init_script(ROUND_TRIP, spec.modules).encode()),
        ]
        for module in spec.modules:
            found = sorted(root.glob(f"lib/modules/*/kernel/**/{module}.ko*")) or \
                sorted(root.glob(f"usr/lib/modules/*/kernel/**/{module}.ko*"))
            if found:
                data = found[0].read_bytes()
                data = lzma.decompress(data) if found[0].suffix == ".xz" else data
                entries.append((f"lib/modules/{module}.ko", 0o100644, data))
        config = root / "boot" / kernels[-1].name.replace("vmlinuz-", "config-", 1)
        if config.is_file():
            shutil.copyfile(config, made / "config")
        shutil.copyfile(kernels[-1], made / "vmlinuz")
        (made / "kernel-version").write_text(kernels[-1].name.removeprefix("vmlinuz-") + "\n")
        (made / "initrd.cpio").write_bytes(cpio_newc(entries))
        (made / "kit.json").write_text(json.dumps({name: sha256_of(made / name) for name in KIT_FILES}))
        paths.remove_tree(home)  # a kit cut short, or changed since (a link goes, not what it names)
        made.rename(home)
