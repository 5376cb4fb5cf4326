"""The two routes to a DAX window, and what each needs of QEMU and of virtiofsd.

- cache-size: the virtio-fs fork's QEMU (virtio-fs-dev) has `cache-size` on vhost-user-fs-pci, and its own C
  virtiofsd maps files into the window over the fork's back-end messages. OSv and Linux guests use it.
- shmem: QEMU 11.1 and later have the generic vhost-user device (vhost-user-test-device-pci, virtio-id 26 for
  virtio-fs) with shared memory regions a back-end maps files into (VHOST_USER_PROTOCOL_F_SHMEM, SHMEM_MAP); the
  Rust virtiofsd with qemuprov's patch offers one region with --dax-window. Linux guests use it; OSv does not
  (the device has no MSI-X vectors, and OSv's virtio driver needs them).

Both sides are found from the binaries' own answers (probe), never from a version."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from qemuprov.knowledge.probe import QemuProbe, VirtiofsdProbe
from qemuprov.recipe import VirtiofsdFlavour

VIRTIO_ID_FS = 26
GENERIC_DEVICE = "vhost-user-test-device-pci"
# virtio-fs on the generic device: a high-priority queue and one request queue; the config space is the tag
# (36 bytes) and the number of request queues (4), which the daemon gives when started with --tag.
GENERIC_FS_PROPERTIES = f"virtio-id={VIRTIO_ID_FS},num_vqs=2,config_size=40,vq_size=1024"
PATCHED_RECIPE = "virtiofsd-dax"
FORK_RECIPE = "virtio-fs-dev"
OSV_ON_SHMEM = ("OSv cannot use the DAX window of QEMU 11.1's generic vhost-user device: the device has no MSI-X "
                "vectors, and OSv's virtio driver needs them (it logs \"Setting MSIx entry for queue 1 failed\" and "
                f"its virtio-fs mount never completes); for DAX with OSv use the fork: qemuprov build {FORK_RECIPE}")


class Route(StrEnum):
    CACHE_SIZE = "cache-size"
    SHMEM = "shmem"


def qemu_routes(qemu: QemuProbe) -> tuple[Route, ...]:
    """The DAX routes this QEMU offers, the fork's first."""
    return tuple(r for r, has in ((Route.CACHE_SIZE, qemu.dax), (Route.SHMEM, qemu.shmem_device)) if has)


def daemon_maps(daemon: VirtiofsdProbe, route: Route, qemu: QemuProbe) -> bool:
    """Does this virtiofsd serve the route's mappings? The fork's window is served by the fork's own C daemon
    (the one of the same tree and version); the shared memory route by a daemon that offers --dax-window."""
    if route is Route.CACHE_SIZE:
        return daemon.flavour == VirtiofsdFlavour.C and daemon.version == qemu.version
    return daemon.dax_window


@dataclass(frozen=True)
class Pairing:
    """What DAX a QEMU and a virtiofsd give together: the route, or what is missing and on which side."""

    route: Route | None
    missing: str = ""  # "" where route is set; else one sentence saying which side lacks what, and what to do
    side: str = ""  # "qemu" or "virtiofsd": the side that lacks it

    @property
    def ok(self) -> bool:
        return self.route is not None


def pairing(qemu: QemuProbe, daemon: VirtiofsdProbe) -> Pairing:
    routes = qemu_routes(qemu)
    for route in routes:
        if daemon_maps(daemon, route, qemu):
            return Pairing(route)
    if not routes:
        return Pairing(None, f"QEMU {qemu.version} has no DAX window: neither cache-size on vhost-user-fs-pci (the "
                             f"virtio-fs fork: qemuprov build {FORK_RECIPE}) nor {GENERIC_DEVICE} with shared "
                             "memory regions (QEMU 11.1 and later)", "qemu")
    if Route.SHMEM in routes:
        return Pairing(None, f"QEMU {qemu.version} can take a DAX window through {GENERIC_DEVICE}, but this "
                             f"virtiofsd{_version(daemon)} offers none: add qemuprov's patched daemon (qemuprov "
                             f"build {PATCHED_RECIPE}) and start it with --dax-window", "virtiofsd")
    return Pairing(None, f"QEMU {qemu.version} has the fork's DAX window (cache-size), but this virtiofsd"
                         f"{_version(daemon)} does not serve its mappings: pair it with the C virtiofsd built from "
                         f"the same {FORK_RECIPE} tree", "virtiofsd")


def offered(qemu: QemuProbe, daemon: VirtiofsdProbe | None) -> Route | None:
    """The window a boot offers its guest: the route the pair takes; else the fork's window where QEMU has one
    (the guest then finds a window the daemon cannot map into, which is reported); else none."""
    if daemon is not None and (route := pairing(qemu, daemon).route) is not None:
        return route
    return Route.CACHE_SIZE if qemu.dax else None


@dataclass(frozen=True)
class Offer:
    """The window one boot offers its guest, and, where it offers none though the pair has a route, why."""

    route: Route | None
    why_not: str = ""


def _version(daemon: VirtiofsdProbe) -> str:
    return f" ({daemon.flavour} {daemon.version})" if daemon.version else ""
