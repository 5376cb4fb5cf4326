"""A tiny Linux guest per arch for `verify`: Debian 13's cloud kernel and a busybox initramfs whose init mounts
the virtio-fs share, reads the host's file, writes one back, and powers off. The packages are pinned by version
and sha256, fetched once through an apt configuration of qemuprov's own (or a Debian container), so every host
boots the same guest."""

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
from qemuprov.knowledge import arches

MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "fuse",
           "virtiofs")
NINE_P_MODULES = ("netfs", "9pnet", "9pnet_virtio", "9p")  # in the generic kernel; the cloud kernel has no 9p
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


@dataclass(frozen=True)
class Pin:
    """One Debian package of the kit, by exact version, checked against its sha256 before it is unpacked."""

    package: str
    version: str
    sha256: str

    def spec(self, deb_arch: str) -> str:
        return f"{self.package}:{deb_arch}={self.version}"


# The same guest on every host (Debian 13's cloud kernel: virtio-fs, FUSE and, on both arches, FUSE_DAX; and
# busybox), whatever the host's own distribution. Moving a pin re-fetches the kit (its directory is keyed by it).
SUITE = "trixie"
PINS: dict[str, tuple[Pin, ...]] = {
    "amd64": (Pin("linux-image-6.12.117+deb13-cloud-amd64", "6.12.117-1",
                  "e9893e5295d0549b8852611f12a4b8b5f6cc4b8128dcc2086b9847793b904ab7"),
              Pin("busybox-static", "1:1.37.0-6+b9",
                  "598a3fd92bdafc34cd81196b2952ad36e910e47a4ecf162f8ce5e8e262598e53")),
    "arm64": (Pin("linux-image-6.12.117+deb13-cloud-arm64", "6.12.117-1",
                  "cc33e288505c3271539beab498aeb4f25e27b8f7c0c49ddb6c506b6d3c50c22f"),
              Pin("busybox-static", "1:1.37.0-6+b9",
                  "c833be48abfa16bc19c4966ec93e289ff1ce5d2f1476cad3a57bd105378cd15c")),
}
# The same kernel release in Debian's generic flavour (about 100 MB a package against 20): virtio-fs and FUSE_DAX
# built in on both arches as in the cloud kernel, and 9p as modules, which the cloud kernel lacks. bench boots it,
# so that virtio-fs, DAX and 9p are measured on one kernel.
GENERIC_PINS: dict[str, tuple[Pin, ...]] = {
    "amd64": (Pin("linux-image-6.12.117+deb13-amd64", "6.12.117-1",
                  "ca712d36790184f6ac125ce2b20ea4e2202ae6bb7817b7de268f1f0115ccda73"), PINS["amd64"][1]),
    "arm64": (Pin("linux-image-6.12.117+deb13-arm64", "6.12.117-1",
                  "73805585385c78e048e63fdfba66da36bab724c2cdebd96a3055a8a4f1ae287a"), PINS["arm64"][1]),
}


@dataclass(frozen=True)
class KitSpec:
    """Which kernel flavour a kit boots, and which of its modules go into the initramfs."""

    name: str
    pins: dict[str, tuple[Pin, ...]]
    modules: tuple[str, ...]


CLOUD = KitSpec("cloud", PINS, MODULES)
GENERIC = KitSpec("generic", GENERIC_PINS, MODULES + NINE_P_MODULES)
MIRROR_ENV = "QEMUPROV_DEBIAN_MIRROR"
APT_SOURCES = Path("/etc/apt")
DEBIAN_SUITES = ("bookworm", "trixie", "forky", "bullseye", "sid", "stable", "testing", "unstable")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


def debian_mirror(sources: Path = APT_SOURCES) -> str | None:
    """The Debian mirror this host's apt already uses (any Debian suite), else $QEMUPROV_DEBIAN_MIRROR; None on
    a host whose apt knows no Debian mirror (Ubuntu, Fedora's dnf, none): then a Debian container fetches the kit."""
    if mirror := os.environ.get(MIRROR_ENV):
        return mirror
    texts = [f.read_text(errors="replace") for f in sorted(sources.glob("sources.list.d/*.sources"))
             + sorted(sources.glob("sources.list.d/*.list")) + [sources / "sources.list"] if f.is_file()]
    for text in texts:
        for stanza in text.split("\n\n"):  # deb822: URIs and Suites of one stanza
            uris = re.findall(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = " ".join(re.findall(r"^Suites:\s*(.+)$", stanza, re.M)).split()
            if uris and any(s.split("-")[0] in DEBIAN_SUITES for s in suites):
                return uris[0]
        for line in text.splitlines():  # one-line style: deb [opts] URI SUITE COMPONENTS
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb" and words[2].split("-")[0] in DEBIAN_SUITES:
                return words[1]
    return None


def _private_apt(work: Path, mirror: str) -> list[str]:
    """apt options for a configuration of qemuprov's own: its sources list (the pinned suite, both arches), its
    lists and cache, no lock on the host's; the host's apt is neither read nor changed, and no root is needed."""
    etc = work / "apt" / "etc"
    for d in (etc / "apt.conf.d", etc / "preferences.d", etc / "sources.list.d", work / "apt" / "lists" / "partial",
              work / "apt" / "cache" / "archives" / "partial"):
        d.mkdir(parents=True, exist_ok=True)
    # Each .deb is checked against its pinned sha256, so an index without the Debian keyring is trusted only
    # for the names it maps.
    trust = f"signed-by={KEYRING}" if KEYRING.exists() else "trusted=yes"
    (etc / "sources.list").write_text(f"deb [arch=amd64,arm64 {trust}] {mirror} {SUITE} main\n")
    return [f"-oDir::Etc={etc}", f"-oDir::Etc::sourcelist={etc / 'sources.list'}",
            f"-oDir::Etc::sourceparts={etc / 'sources.list.d'}", f"-oDir::State::Lists={work / 'apt' / 'lists'}",
            f"-oDir::Cache={work / 'apt' / 'cache'}", "-oAPT::Architectures::=amd64", "-oAPT::Architectures::=arm64",
            "-oDebug::NoLocking=1"]


def _download_pinned(pins: tuple[Pin, ...], deb_arch: str, work: Path, mirror: str) -> list[Path]:
    options = _private_apt(work, mirror)
    env = procs.base_env()
    updated = procs.run(["apt-get", "-q", *options, "update"], timeout=600, env=env)
    if not updated.ok:
        raise InfraError(f"could not read the Debian {SUITE} index from {mirror}: {updated.stderr.strip()[-300:]}",
                         hint=f"set {MIRROR_ENV} to a reachable Debian mirror, or bring your own --kernel/--initrd")
    got = procs.run(["apt-get", "-q", *options, "download", *(p.spec(deb_arch) for p in pins)], timeout=900,
                    cwd=work, env=env)
    if not got.ok:
        raise InfraError(f"could not fetch the pinned guest kit ({', '.join(p.spec(deb_arch) for p in pins)}): "
                         f"{got.stderr.strip()[-300:]}",
                         hint="a newer qemuprov pins the kernel Debian serves now; or bring your own --kernel/--initrd")
    return [_checked(work, pin, deb_arch) for pin in pins]


def _checked(work: Path, pin: Pin, deb_arch: str) -> Path:
    (deb,) = work.glob(f"{pin.package}_*_{deb_arch}.deb") or [None]  # type: ignore[list-item]
    if deb is None:
        raise InfraError(f"the guest kit's {pin.package} did not arrive")
    digest = sha256_of(deb)
    if digest != pin.sha256:
        deb.unlink()
        raise InfraError(f"{deb.name} has sha256 {digest}, not the pinned {pin.sha256}: refused",
                         hint="the mirror serves another file under this version; check the mirror")
    return deb


# Run in a Debian container where the host has no apt, or no Debian mirror: the same pinned packages, checked
# against their sha256 and unpacked into /out/root.
CONTAINER_UNPACK = r"""set -e
dpkg --add-architecture "$1" && apt-get update -q >/dev/null
cd /out && shift 2 && apt-get download -q "$@" >/dev/null 2>&1
while read -r sum package; do
  set -- /out/"${package}"_*_"$ARCH".deb
  [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$sum" ] || { echo "$1: not the pinned sha256 $sum" >&2; exit 1; }
done < /out/pins
for deb in /out/*.deb; do dpkg-deb -x "$deb" /out/root; done
rm -f /out/*.deb /out/pins && chown -R "$OWNER" /out/root
"""
KIT_IMAGE = f"debian:{SUITE}"


def _unpack_in_container(pins: tuple[Pin, ...], deb_arch: str, work: Path) -> None:
    from qemuprov.infra import engines

    try:
        engine = engines.require_engine()
    except QemuprovError as exc:
        raise InfraError("this host has no apt with a Debian mirror to fetch the guest kit with, and " + exc.message,
                         hint=f"start Docker or Podman, set {MIRROR_ENV}, or bring your own guest with --kernel and "
                              "--initrd") from None
    client = engines.client(engine)
    (work / "pins").write_text("".join(f"{p.sha256} {p.package}\n" for p in pins))
    try:
        client.containers.run(KIT_IMAGE, ["sh", "-c", CONTAINER_UNPACK, "sh", deb_arch, "-",
                                          *(p.spec(deb_arch) for p in pins)], remove=True, network_mode="host",
                              environment={"OWNER": f"{os.getuid()}:{os.getgid()}", "ARCH": deb_arch},
                              volumes={str(work): {"bind": "/out", "mode": "rw"}})
    except Exception as exc:  # the SDK's ContainerError, ImageNotFound, APIError: all mean no kit
        raise InfraError(f"could not fetch the guest kit in a {KIT_IMAGE} container: {str(exc)[-300:]}",
                         hint="bring your own guest with --kernel and --initrd") from None


def ensure_kit(arch: str, spec: KitSpec = CLOUD) -> Kit:
    # Keyed by what goes into it (the pinned packages, the init), so a moved pin never meets a stale kit.
    deb_arch = arches.get(arch).deb_arch
    pins = spec.pins[deb_arch]
    pinned = " ".join(f"{p.package}={p.version}@{p.sha256}" for p in pins)
    recipe = hashlib.sha256((INIT + " ".join(spec.modules) + pinned).encode()).hexdigest()[:12]
    home = paths.cache_dir() / "guest" / (f"{arch}-{recipe}" if spec is CLOUD else f"{arch}-{spec.name}-{recipe}")
    kit = Kit(arch, home / "vmlinuz", home / "initrd.cpio", _kit_fuse_dax(home / "config"))
    if kit.kernel.exists() and kit.initrd.exists():
        return kit
    Reporter().step("guest kit", f"fetching Debian {SUITE}'s {spec.name} kernel and busybox for {arch} (pinned: "
                                 f"{pins[0].package} {pins[0].version}) into {home} (once)")
    paths.cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qemuprov-kit-", dir=paths.cache_dir()) as tmp:
        work = Path(tmp)
        root = work / "root"
        mirror = debian_mirror() if shutil.which("apt-get") and shutil.which("dpkg-deb") else None
        if mirror:
            for deb in _download_pinned(pins, deb_arch, work, mirror):
                unpacked = procs.run(["dpkg-deb", "-x", deb, root], timeout=300, env=procs.base_env())
                if not unpacked.ok:
                    raise InfraError(f"dpkg-deb -x {deb.name} {unpacked.why()}: {unpacked.stderr.strip()[-300:]}",
                                     hint="give your own guest with --kernel and --initrd")
        else:
            _unpack_in_container(pins, deb_arch, work)
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        if not kernels:
            raise InfraError(f"the kernel package for {arch} holds no /boot/vmlinuz-*")
        entries: list[tuple[str, int, bytes]] = [
            ("bin", 0o040755, b""), ("lib", 0o040755, b""), ("lib/modules", 0o040755, b""),
            ("bin/busybox", 0o100755, next(b for b in (root / "usr" / "bin" / "busybox", root / "bin" / "busybox")
                                           if b.exists()).read_bytes()),  # Debian 13 is usr-merged
            ("init", 0o100755, (INIT % {"modules": " ".join(spec.modules), "tag": TAG}).encode()),
        ]
        for module in spec.modules:
            found = sorted(root.glob(f"lib/modules/*/kernel/**/{module}.ko*")) or \
                sorted(root.glob(f"usr/lib/modules/*/kernel/**/{module}.ko*"))
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
        kit.initrd.write_bytes(cpio_newc(entries))
    return Kit(arch, kit.kernel, kit.initrd, _kit_fuse_dax(home / "config"))
