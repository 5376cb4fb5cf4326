"""Host readiness for virtio-fs and for building QEMU: checks as data, in the manner of virt-host-validate."""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from qemuprov import arches
from qemuprov.infra import engines, paths
from qemuprov.infra.compilers import describe_host_compilers
from qemuprov.knowledge import dax, hostdeps, kvm, probe
from qemuprov.knowledge.probe_parse import version_tuple
from qemuprov.recipe import VirtiofsdFlavour
from qemuprov.records import installs, kept

MIN_QEMU = "5.0"
SHM_MIN_BYTES = 256 * 1024 * 1024


class Verdict(StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    area: str
    what: str
    status: Verdict
    detail: str = ""
    hint: str = ""


@dataclass
class Probing:
    """What the checks share: the probe cache, and where the KVM verdict is kept."""

    cache: probe.ProbeCache
    kvm_cache_file: Path

    def probe(self, path: Path) -> probe.Probe:
        return probe.probe_binary(path, self.cache)


def check_kvm(ctx: Probing) -> Iterator[Check]:
    dev = kvm.device()
    if not dev.present:
        yield Check("KVM", "/dev/kvm exists", Verdict.WARN, "no /dev/kvm: guests run under TCG (slow)",
                    "enable virtualization in the firmware and load kvm_intel or kvm_amd; in a VM, enable "
                    "nested virtualization")
        return
    if not dev.accessible:
        yield Check("KVM", "/dev/kvm is accessible", Verdict.WARN, f"/dev/kvm: {dev.error}",
                    f"sudo usermod -aG kvm {os.environ.get('USER', '$USER')} (then log in again)")
        return
    yield Check("KVM", "/dev/kvm is accessible", Verdict.PASS)
    arch = arches.host()
    if arch is None:
        yield Check("KVM", "a guest runs under KVM", Verdict.WARN,
                    f"the bounded KVM run is made on x86_64 and aarch64 hosts, this is {platform.machine()}")
        return
    qemu = shutil.which(arch.qemu) or _installed_binary(arch.qemu)
    if qemu is None:
        yield Check("KVM", "a guest runs under KVM", Verdict.WARN, f"no {arch.qemu} to test KVM with",
                    "install QEMU (see the QEMU checks below), then run doctor again")
        return
    tester = ctx.probe(Path(qemu))
    if tester.error:  # a broken QEMU says nothing about KVM
        yield Check("KVM", "a guest runs under KVM", Verdict.WARN,
                    f"cannot test KVM: {qemu}, the first {arch.qemu} on PATH, does not work: {tester.error}",
                    "put a working QEMU first on PATH (see the QEMU checks below), then run doctor again")
        return
    run = kvm.verdict(Path(qemu), ctx.kvm_cache_file, arch)
    if run["usable"]:
        yield Check("KVM", "a guest runs under KVM", Verdict.PASS, str(run["detail"]))
    else:
        yield Check("KVM", "a guest runs under KVM", Verdict.WARN, "KVM is present but unusable: " + str(run["detail"]),
                    "boot guests with TCG: qemuprov verify --accel tcg, or QEMU's -accel tcg; "
                    "for a VM host, check its nested virtualization")


def _installed_binary(name: str) -> str | None:
    for entry in installs.list_installs():
        candidate = entry.prefix / "bin" / name
        if candidate.exists():
            return str(candidate)
    return None


def check_qemu(ctx: Probing) -> Iterator[Check]:
    dax_found: list[str] = []
    for arch in arches.ARCHES:
        name = f"qemu-system-{arch}"
        found = shutil.which(name)
        if found is None:
            installed = _installed_binary(name)
            if installed:
                prefix = Path(installed).parent.parent
                yield Check("QEMU", f"{name} on PATH", Verdict.WARN,
                            f"not on PATH, but qemuprov installed it in {prefix}",
                            f'eval "$(qemuprov env {prefix.name})"')
                found = installed
            else:
                yield Check("QEMU", f"{name} on PATH", Verdict.FAIL, f"no {name} found",
                            f"qemuprov build qemu-7.2 --arch {arch}, or your distribution's QEMU "
                            f"(Debian/Ubuntu: apt-get install {arches.ARCHES[arch].debian_qemu_package})")
                continue
        result = ctx.probe(Path(found))
        if result.error or not isinstance(result, probe.QemuProbe):
            yield Check("QEMU", f"{name} works", Verdict.FAIL, f"{found}: {result.error}",
                        "reinstall it, or point PATH at a working build")
            continue
        version = version_tuple(result.version)
        if version is None or version < version_tuple(MIN_QEMU):  # type: ignore[operator]
            yield Check("QEMU", f"{name} is {MIN_QEMU} or later", Verdict.FAIL,
                        f"{found} is QEMU {result.version}: vhost-user-fs arrived in 5.0",
                        "qemuprov build qemu-7.2 (or virtio-fs-dev for DAX)")
            continue
        if not result.vhost_user_fs:
            yield Check("QEMU", f"{name} has vhost-user-fs-pci", Verdict.FAIL,
                        f"{found} (QEMU {result.version}) was built without vhost-user-fs",
                        "use a build configured with --enable-vhost-user, e.g. qemuprov build qemu-7.2")
            continue
        if not result.shared_memory:
            yield Check("QEMU", f"{name} has a shareable memory backend", Verdict.FAIL,
                        f"{found} has neither memory-backend-memfd nor memory-backend-file",
                        "virtio-fs needs shared guest memory; use another QEMU build")
            continue
        routes = dax.qemu_routes(result)
        window = f"DAX route: {', '.join(routes)}" if routes else "no DAX window"
        if routes:
            dax_found.append(f"{found} ({', '.join(routes)})")
        yield Check("QEMU", f"{name} has vhost-user-fs-pci", Verdict.PASS,
                    f"{found}: QEMU {result.version}, {window}")
        yield _check_osv_line(name, found, result)
    if dax_found:
        yield Check("QEMU", "a QEMU with the DAX window", Verdict.PASS, ", ".join(dax_found))
    else:
        yield Check("QEMU", "a QEMU with the DAX window", Verdict.WARN,
                    "no QEMU here has cache-size on vhost-user-fs-pci (the virtio-fs-dev fork) or "
                    f"{dax.GENERIC_DEVICE} with shared memory regions (QEMU 11.1 and later)",
                    f"only needed for -o dax: qemuprov build {dax.PATCHED_RECIPE} for a QEMU 11.1 you have, "
                    f"else qemuprov build qemu-stable-dax, or {dax.FORK_RECIPE} (OSv)")


def _check_osv_line(name: str, found: str, result: probe.QemuProbe) -> Check:
    """What OSv's scripts/run.py puts on every QEMU line: -netdev user and a disk with aio=native."""
    lacking = ([] if result.netdevs is None or result.user_networking else ["-netdev user (slirp)"]) + \
        (["aio=native (linux-aio)"] if result.aio_native is False else [])
    what = f"{name} takes OSv's run.py line (-netdev user, aio=native)"
    if lacking:
        return Check("QEMU", what, Verdict.WARN, f"{found} was built without {' and '.join(lacking)}",
                     "build QEMU with libslirp-dev and libaio-dev installed, e.g. qemuprov build qemu-7.2")
    return Check("QEMU", what, Verdict.PASS)


def check_virtiofsd(ctx: Probing) -> Iterator[Check]:
    on_path = shutil.which("virtiofsd")
    if on_path is None:
        hidden = [str(p) for p in probe.distro_virtiofsd()]
        installed = _installed_binary("virtiofsd")
        if hidden:
            directory = str(Path(hidden[0]).parent)
            yield Check("virtiofsd", "virtiofsd on PATH", Verdict.WARN,
                        f"found at {hidden[0]}, which is not on PATH",
                        f'export PATH="{directory}:$PATH"')
            on_path = hidden[0]
        elif installed:
            prefix = Path(installed).parent.parent
            yield Check("virtiofsd", "virtiofsd on PATH", Verdict.WARN,
                        f"not on PATH, but qemuprov installed it in {prefix}",
                        f'eval "$(qemuprov env {prefix.name})"')
            on_path = installed
        else:
            yield Check("virtiofsd", "virtiofsd on PATH", Verdict.FAIL, "no virtiofsd found",
                        "apt-get install virtiofsd (Debian 12+/Ubuntu 24.04+), dnf install virtiofsd, "
                        "or qemuprov build qemu-7.2")
            return
    else:
        yield Check("virtiofsd", "virtiofsd on PATH", Verdict.PASS, on_path)
    result = ctx.probe(Path(on_path))
    if result.error or not isinstance(result, probe.VirtiofsdProbe):
        yield Check("virtiofsd", "virtiofsd works", Verdict.FAIL, f"{on_path}: {result.error}",
                    "reinstall it or put a working virtiofsd first on PATH")
        return
    flavour = "C (from QEMU)" if result.flavour == VirtiofsdFlavour.C else "Rust"
    yield Check("virtiofsd", "virtiofsd flavour", Verdict.PASS, f"{flavour} virtiofsd {result.version}")
    yield from _check_can_run(result)
    yield from _check_rseq(result)


def _check_can_run(result: probe.VirtiofsdProbe) -> Iterator[Check]:
    root = os.geteuid() == 0
    if result.needs_root and not root:
        yield Check("virtiofsd", "virtiofsd can run as this user", Verdict.WARN,
                    "the C virtiofsd needs root (it sets up namespaces and capabilities)",
                    "run it with sudo, or use the Rust virtiofsd with --sandbox namespace")
        return
    if not root and not _user_namespaces():
        yield Check("virtiofsd", "virtiofsd can run as this user", Verdict.WARN,
                    "unprivileged user namespaces are off, so --sandbox namespace fails",
                    "sysctl kernel.unprivileged_userns_clone=1, or run virtiofsd with --sandbox none")
        return
    who = "root" if root else "this user (user namespaces)"
    yield Check("virtiofsd", "virtiofsd can run as this user", Verdict.PASS, f"runs as {who}")


def _user_namespaces() -> bool:
    for knob, off in (("/proc/sys/user/max_user_namespaces", "0"),
                      ("/proc/sys/kernel/unprivileged_userns_clone", "0")):
        try:
            if Path(knob).read_text().strip() == off:
                return False
        except OSError:
            continue
    return True


RSEQ_HINT = (f"run it with GLIBC_TUNABLES={probe.RSEQ_TUNABLE} in its environment, use a virtiofsd from "
             "QEMU 7.0 or later, or install it with qemuprov, which wraps it")


def _check_rseq(result: probe.VirtiofsdProbe) -> Iterator[Check]:
    if result.rseq_risk:
        glibc = ".".join(map(str, probe.glibc_version() or ()))
        yield Check("virtiofsd", "virtiofsd survives a guest mount (rseq)", Verdict.FAIL,
                    f"C virtiofsd {result.version or '(prints no version: older than 6.1)'} predates QEMU 7.0: "
                    "its seccomp filter lacks rseq, which glibc "
                    f"{glibc} uses, so it is killed (SIGSYS) the moment a guest mounts the share and QEMU reports "
                    "'Unexpected end-of-file before all data were read'", RSEQ_HINT)
    elif result.rseq_wrapper:
        yield Check("virtiofsd", "virtiofsd survives a guest mount (rseq)", Verdict.PASS,
                    f"wrapped with GLIBC_TUNABLES={probe.RSEQ_TUNABLE}")
    if probe.seen_rseq_kill():
        # A past event: a FAIL when the daemon on PATH is the kind that gets killed, a WARN otherwise.
        yield Check("virtiofsd", "no virtiofsd killed by seccomp (kernel log)",
                    Verdict.FAIL if result.rseq_risk else Verdict.WARN,
                    "the kernel log shows virtiofsd killed by its seccomp filter on rseq (syscall 334 on x86_64)",
                    RSEQ_HINT)


def check_shared_memory(ctx: Probing) -> Iterator[Check]:
    try:
        fd = os.memfd_create("qemuprov-doctor", os.MFD_CLOEXEC)
        os.close(fd)
        yield Check("memory", "memfd_create works (memory-backend-memfd)", Verdict.PASS)
    except (OSError, AttributeError) as exc:
        yield Check("memory", "memfd_create works (memory-backend-memfd)", Verdict.WARN, str(exc),
                    "use -object memory-backend-file,mem-path=/dev/shm,share=on instead")
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        yield Check("memory", "/dev/shm is mounted", Verdict.WARN, "no /dev/shm",
                    "mount -t tmpfs tmpfs /dev/shm (needed by memory-backend-file)")
        return
    size = st.f_frsize * st.f_blocks
    if size < SHM_MIN_BYTES:
        yield Check("memory", "/dev/shm is large enough", Verdict.WARN, f"/dev/shm holds {size >> 20} MiB",
                    "mount -o remount,size=2G /dev/shm (in Docker: --shm-size=2g)")
    else:
        yield Check("memory", "/dev/shm is large enough", Verdict.PASS, f"{size >> 20} MiB")


def check_container_engine(ctx: Probing) -> Iterator[Check]:
    found = engines.find_engine()
    if found.reachable:
        yield Check("build", "a container engine is reachable", Verdict.PASS, found.detail)
    else:
        yield Check("build", "a container engine is reachable", Verdict.WARN, found.detail,
                    "start Docker (or `podman system service` and set DOCKER_HOST), or build with --runner host")


def check_build_deps(ctx: Probing) -> Iterator[Check]:
    missing = hostdeps.missing_build_packages()
    if missing:
        yield Check("build", "host build dependencies", Verdict.WARN, "missing: " + ", ".join(missing),
                    "apt-get install " + " ".join(missing) + " (or build in a container: --runner docker)")
    else:
        yield Check("build", "host build dependencies", Verdict.PASS,
                    f"compiler, meson, ninja and the -dev libraries; QEMU compiles with {describe_host_compilers()}")


def check_installs(ctx: Probing) -> Iterator[Check]:
    found = installs.list_installs()
    if not found:
        yield Check("qemuprov", "installs", Verdict.PASS, f"none yet in {paths.install_root()}",
                    "qemuprov build qemu-7.2 (or virtio-fs-dev for DAX)")
        return
    for entry in found:
        broken = entry.missing_binaries()
        if entry.damaged:
            yield Check("qemuprov", f"install {entry.name}", Verdict.FAIL, f"{entry.prefix}: {entry.damaged}",
                        f"qemuprov build {entry.name} again, or qemuprov remove {entry.prefix}")
        elif broken:
            yield Check("qemuprov", f"install {entry.name}", Verdict.FAIL,
                        f"{entry.prefix}: missing {', '.join(broken)}", f"qemuprov build {entry.recipe} again")
        else:
            yield Check("qemuprov", f"install {entry.name}", Verdict.PASS, f"{entry.prefix}: {entry.summary()}")


def check_kept(ctx: Probing) -> Iterator[Check]:
    found = kept.inventory()
    spare = found.total(unneeded_only=True)
    yield Check("qemuprov", "what qemuprov keeps", Verdict.PASS,
                f"{_size(found.total())} in {paths.cache_dir()} (build trees, mirrors, kits, compiler caches), "
                f"{_size(spare)} of it no install needs", "qemuprov cache shows it; qemuprov cache clean frees it")


def _size(size: int) -> str:
    return f"{size / (1 << 30):.1f} GiB" if size >= 1 << 30 else f"{size / (1 << 20):.0f} MiB"


def check_pairing(ctx: Probing) -> Iterator[Check]:
    """The QEMU and virtiofsd a user would run together: the first of each on PATH."""
    daemon_path = shutil.which("virtiofsd") or next((str(p) for p in probe.distro_virtiofsd()), None)
    qemus = probe.qemus_on_path()
    if daemon_path is None or not qemus:
        return
    daemon = ctx.probe(Path(daemon_path))
    if not isinstance(daemon, probe.VirtiofsdProbe) or daemon.error:
        return
    warnings = []
    for path in qemus:
        qemu = ctx.probe(path)
        if isinstance(qemu, probe.QemuProbe) and not qemu.error:
            warnings += [w for w in probe.pairing_warnings(qemu, daemon) if w not in warnings]
            yield _dax_check(qemu, daemon)
    for warning in warnings:
        yield Check("virtiofsd", "QEMU and virtiofsd pair well", Verdict.WARN, warning,
                    "see the detail; `qemuprov build` installs matching pairs")
    if not warnings:
        yield Check("virtiofsd", "QEMU and virtiofsd pair well", Verdict.PASS,
                    f"{daemon_path} with {', '.join(map(str, qemus))}")


def _dax_check(qemu: probe.QemuProbe, daemon: probe.VirtiofsdProbe) -> Check:
    what = f"DAX with {Path(qemu.path).name} and {daemon.path}"
    pair = dax.pairing(qemu, daemon)
    if pair.ok:
        return Check("virtiofsd", what, Verdict.PASS, f"through {pair.route}")
    if not dax.qemu_routes(qemu):
        return Check("virtiofsd", what, Verdict.PASS, "no DAX window in this QEMU (none is needed to share)")
    hint = (f"qemuprov build {dax.PATCHED_RECIPE}, then start its virtiofsd with --dax-window 1G"
            if dax.Route.SHMEM in dax.qemu_routes(qemu) else "only needed for -o dax; see the detail")
    return Check("virtiofsd", what, Verdict.WARN, pair.missing, hint)


CHECKS: tuple[Callable[[Probing], Iterator[Check]], ...] = (
    check_kvm, check_qemu, check_virtiofsd, check_pairing, check_shared_memory, check_container_engine,
    check_build_deps,
    check_installs, check_kept,
)


def run_checks() -> list[Check]:
    ctx = Probing(cache=probe.ProbeCache(), kvm_cache_file=paths.cache_dir() / "kvm.json")
    results = [check for func in CHECKS for check in func(ctx)]
    ctx.cache.save()
    return results
