"""fio for the bench guest: Debian's fio source package, built static (no shared library in the initramfs) with
the plain engines only, in a Debian container, once per arch. Debian's binary package cannot go into a busybox
initramfs: it links librados, librbd, libgfapi, libnfs, rdma and more, whose closure is Ceph's and Gluster's."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from qemuprov import arches
from qemuprov.errors import InfraError, QemuprovError
from qemuprov.infra import paths
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
    from qemuprov.infra import engines

    try:
        engine = engines.require_engine()
    except QemuprovError as exc:
        raise InfraError("the bench guest's fio is built in a container, and " + exc.message,
                         hint="start Docker or Podman once; the built fio is kept in the cache") from None
    target = arch
    native = arches.host() is target
    env = {"FIO_VERSION": VERSION, "OWNER": f"{os.getuid()}:{os.getgid()}",
           # libc6-dev-*-cross is only recommended by the cross compiler
           "CROSS_PACKAGE": "" if native else f"{target.cross_package} libc6-dev-{target.deb_arch}-cross",
           **({} if native else {"CC": f"{target.cross_prefix}gcc", "STRIP": f"{target.cross_prefix}strip"})}
    binary.parent.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qemuprov-fio-", dir=binary.parent.parent) as tmp:
        try:
            container = engines.client(engine).containers.run(
                IMAGE, ["sh", "-c", BUILD_SCRIPT], detach=True, network_mode="host", environment=env,
                volumes={tmp: {"bind": "/out", "mode": "rw"}})
        except Exception as exc:  # the SDK's ImageNotFound, APIError: no image to build in, or no engine
            raise InfraError(f"could not start a {IMAGE} container to build fio in: {str(exc)[-300:]}",
                             hint=f"`docker pull {IMAGE}` (the engine needs the network once)") from None
        try:
            status = container.wait(timeout=BUILD_TIMEOUT)
            said = container.logs().decode(errors="replace").strip()
        except Exception as exc:  # the SDK's read timeout or an engine gone away: the same answer, no fio
            raise InfraError(f"building fio in a {IMAGE} container did not finish: {str(exc)[-200:]}",
                             hint=f"the build takes about a minute per arch; see `docker logs {container.id[:12]}`"
                             ) from None
        finally:
            container.remove(force=True)
        built = Path(tmp) / "fio"
        if status.get("StatusCode") != 0 or not built.is_file():
            raise InfraError(f"building fio {VERSION} for {arch} in a {IMAGE} container failed: "
                             f"{said[-600:] or 'no output'}",
                             hint="the container needs the network to fetch Debian's packages and fio's source")
        binary.parent.mkdir(exist_ok=True)
        os.replace(built, binary)
    return binary
