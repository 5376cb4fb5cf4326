"""fio for the bench guest: Debian's fio source package, built static (no shared library in the initramfs) with
the plain engines only, in a Debian container, once per arch. Debian's binary package cannot go into a busybox
initramfs: it links librados, librbd, libgfapi, libnfs, rdma and more, whose closure is Ceph's and Gluster's."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from qemuprov import arches
from qemuprov.errors import InfraError
from qemuprov.infra import paths, runners
from qemuprov.infra.progress import Reporter

SUITE = "bookworm"
VERSION = "3.33-3"  # Debian 12's fio; the source arrives through apt, which checks it against the signed index
IMAGE = f"debian:{SUITE}"
BUILD_TIMEOUT = 1200.0

# The image's own apt sources, with their deb-src twins; the engines fio would find a -dev package for are
# simply not installed, so configure leaves them out.
BUILD_SCRIPT = r"""set -e
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] && sed -i 's/^Types: deb$/Types: deb deb-src/' "$f"
done
[ -f /etc/apt/sources.list ] &&
  sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > /etc/apt/sources.list.d/qemuprov-src.list
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends build-essential dpkg-dev ${CROSS_PACKAGE} >/dev/null
mkdir -p /tmp/src && cd /tmp/src
apt-get source -q "fio=$FIO_VERSION" >/dev/null 2>&1 || apt-get source "fio=$FIO_VERSION"
cd fio-*/
./configure --build-static --disable-native ${CC:+--cc=$CC} >/tmp/configure.log 2>&1 ||
  { tail -n 20 /tmp/configure.log; exit 1; }
make -j"$(nproc)" fio >/tmp/make.log 2>&1 || { tail -n 20 /tmp/make.log; exit 1; }
${STRIP:-strip} fio
cp fio /out/fio && chown "$OWNER" /out/fio
"""


def _key(arch: arches.Arch) -> str:
    return hashlib.sha256(f"{BUILD_SCRIPT}{VERSION}{IMAGE}{arch}".encode()).hexdigest()[:12]


def cached(arch: arches.Arch) -> Path:
    return paths.cache_dir() / "guest" / f"fio-{VERSION}-{arch}-{_key(arch)}" / "fio"


def ensure_fio(arch: arches.Arch) -> Path:
    """The static fio for arch, built here once (about a minute per arch) and kept in the cache."""
    binary = cached(arch)
    if binary.is_file():
        return binary
    Reporter().step("fio", f"building Debian {SUITE}'s fio {VERSION} static for {arch} in a {IMAGE} container, "
                           f"into {binary.parent} (once)")
    native = arches.host() is arch
    env = {"FIO_VERSION": VERSION, "OWNER": f"{os.getuid()}:{os.getgid()}",
           # libc6-dev-*-cross is only recommended by the cross compiler
           "CROSS_PACKAGE": "" if native else f"{arch.cross_package} libc6-dev-{arch.deb_arch}-cross",
           **({} if native else {"CC": f"{arch.cross_prefix}gcc", "STRIP": f"{arch.cross_prefix}strip"})}
    binary.parent.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qemuprov-fio-", dir=binary.parent.parent) as tmp:
        status, said = runners.one_shot(IMAGE, BUILD_SCRIPT, env, Path(tmp), BUILD_TIMEOUT,
                                        f"building the bench guest's fio for {arch}")
        built = Path(tmp) / "fio"
        if status != 0 or not built.is_file():
            raise InfraError(f"building fio {VERSION} for {arch} in a {IMAGE} container failed: "
                             f"{said[-600:] or 'no output'}",
                             hint="the container needs the network to fetch Debian's packages and fio's source")
        binary.parent.mkdir(exist_ok=True)
        os.replace(built, binary)
    return binary
