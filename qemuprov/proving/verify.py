"""Boot a guest over virtio-fs: virtiofsd serves a temporary directory, QEMU boots the guest kit with shared
memory and vhost-user-fs-pci, the guest reads the host's file and writes one back. Every process is bounded
in time and stopped, and every temporary file removed, whatever happens."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qemuprov import arches
from qemuprov.errors import UserError
from qemuprov.infra import paths
from qemuprov.infra.progress import notice
from qemuprov.knowledge import dax, kvm, osv, probe
from qemuprov.knowledge.probe import QemuProbe, VirtiofsdProbe
from qemuprov.proving import boot, guestkit, libvirt
from qemuprov.proving.guestkit import TAG, Kit
from qemuprov.proving.verdict import DAX_WINDOW_MB, console_lines, judge_round_trip, kernel_append
from qemuprov.recipe import VirtiofsdFlavour
from qemuprov.records import installs
from qemuprov.records.manifest import BootResult, VerifyMode

GUEST_TIMEOUT = 120.0
MAX_CONSOLE_LINES = 10_000  # of the guest's lines followed while it runs: its init says a dozen
MEMORY_MB = 512
DAX_WINDOW = f"{DAX_WINDOW_MB}M"


@dataclass(frozen=True)
class Launch:
    """The two command lines of one verify run, and where the guest's console ends up."""

    virtiofsd: list[str]
    qemu: list[str]
    socket: Path
    console: Path
    offer: dax.Offer
    disk: Path | None = None  # made for the run (OSv's line has a disk), removed after it


def virtiofsd_argv(daemon: VirtiofsdProbe, socket: Path, share: Path, cache: str | None = None,
                   threads: int | None = None, window: str | None = None, tag: str = TAG) -> list[str]:
    """cache: the daemon's own word (the C daemon's auto is given always; the Rust daemon's only when asked);
    threads: --thread-pool-size, else the daemon's default; window: the DAX window the daemon offers on the
    shared memory route (with the tag, which the generic device takes from the daemon)."""
    if daemon.flavour == VirtiofsdFlavour.RUST:
        sandbox = "namespace" if os.geteuid() == 0 else "none"
        argv = [daemon.path, "--socket-path", str(socket), "--shared-dir", str(share), "--sandbox", sandbox]
        argv += ["--cache", cache] if cache else []
        argv += ["--tag", tag, "--dax-window", window] if window else []
        return argv + (["--thread-pool-size", str(threads)] if threads is not None else [])
    argv = [daemon.path, f"--socket-path={socket}", "-o", f"source={share}", "-o", f"cache={cache or 'auto'}"]
    return argv + ([f"--thread-pool-size={threads}"] if threads is not None else [])


def share_device(route: dax.Route | None, chardev: str, window: str, tag: str = TAG) -> str:
    """The device that carries the share: on the shared memory route the generic vhost-user device as
    virtio-fs (the daemon gives the tag and the window), else vhost-user-fs-pci, with the fork's window."""
    if route is dax.Route.SHMEM:
        return f"{dax.GENERIC_DEVICE},chardev={chardev},{dax.GENERIC_FS_PROPERTIES}"
    return f"vhost-user-fs-pci,chardev={chardev},tag={tag}" + (f",cache-size={window}" if route else "")


def qemu_argv(qemu: QemuProbe, kit: Kit, socket: Path, serial: Path, accel: str, firmware: list[str],
              route: dax.Route | None) -> list[str]:
    return guest_argv(qemu, kit, kernel_append(qemu, window=route is not None), f"file:{serial}", accel, firmware,
                      ["-chardev", f"socket,id=vfs,path={socket}", "-device", share_device(route, "vfs", DAX_WINDOW)])


def guest_argv(qemu: QemuProbe, kit: Kit, append: str, serial: str, accel: str, firmware: list[str],
               share: list[str], memory_mb: int = MEMORY_MB) -> list[str]:
    """The kit booted with shared guest memory (vhost-user needs it) and the share's devices; serial: where
    the console goes (file:PATH, stdio)."""
    argv = [qemu.path, "-accel", accel, "-m", str(memory_mb), "-nodefaults", "-display", "none", "-no-reboot",
            "-serial", serial, "-kernel", str(kit.kernel), "-initrd", str(kit.initrd), "-append", append,
            "-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on", "-numa", "node,memdev=mem",
            *share]
    arch = qemu.target
    argv += ["-machine", arch.machine] if arch.machine else []
    argv += ["-cpu", arch.cpu] if arch.cpu else []
    for directory in firmware:
        argv += ["-L", directory]
    return argv


RSEQ_EXPLANATION = ("a C virtiofsd from before QEMU 7.0 lacks rseq in its seccomp filter, and glibc 2.35+ uses "
                    "rseq, so the filter kills it (SIGSYS) as the guest mounts; run it with "
                    f"GLIBC_TUNABLES={probe.RSEQ_TUNABLE} (qemuprov installs wrap it)")


def _died(proc: subprocess.Popen[bytes], daemon: VirtiofsdProbe) -> str:
    code = proc.returncode
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        if name == "SIGSYS":
            return f"virtiofsd was killed by SIGSYS: its seccomp filter refused a system call; {RSEQ_EXPLANATION}"
        return f"virtiofsd was killed by {name}"
    if daemon.rseq_risk:
        # The sandboxed C daemon runs in a child process; the parent only reports failure.
        seen = " (the kernel log shows the seccomp kill on rseq)" if probe.seen_rseq_kill() else ""
        return f"virtiofsd exited with status {code} while the guest mounted{seen}: {RSEQ_EXPLANATION}"
    return f"virtiofsd exited with status {code}"


def plain_launch(qemu: QemuProbe, daemon: VirtiofsdProbe, kit: Kit, work: Path, accel: str,
                 firmware: list[str]) -> Launch:
    socket, serial = work / "vfs.sock", work / "serial.log"
    route = dax.offered(qemu, daemon)
    window = DAX_WINDOW if route is dax.Route.SHMEM else None
    return Launch(virtiofsd_argv(daemon, socket, work / "share", window=window),
                  qemu_argv(qemu, kit, socket, serial, accel, firmware, route), socket, serial, dax.Offer(route))


def osv_launch(qemu: QemuProbe, daemon: VirtiofsdProbe, kit: Kit, work: Path, accel: str,
               firmware: list[str]) -> Launch:
    """OSv's scripts/run.py lines with the guest kit's kernel in place of OSv's; `-display none` stands in
    for run.py's VNC listener, and the gdb listener is left out."""
    socket = work / "vhostqemu"
    disk = probe.direct_io_file(f"qemuprov-verify-{os.getpid()}-{secrets.token_hex(4)}.img", 1 << 20)
    if disk is None:
        raise UserError("verify --osv: no directory here takes O_DIRECT (cache=none), which OSv's disk line needs",
                        hint="set XDG_CACHE_HOME (or QEMUPROV_CACHE) to a directory on a disk, not tmpfs")
    argv = osv.qemu_argv(qemu.path, qemu.arch, disk, socket, osv.DEFAULT_TAG,
                         DAX_WINDOW if qemu.dax else None, accel, boot_disk=False)
    argv += ["-display", "none"] if qemu.target.display_none else []
    argv += ["-kernel", str(kit.kernel), "-initrd", str(kit.initrd), "-append", kernel_append(qemu, osv.DEFAULT_TAG)]
    if accel != "kvm":
        argv += ["-accel", accel]
    for directory in firmware:
        argv += ["-L", directory]
    route = dax.Route.CACHE_SIZE if qemu.dax else None
    why_not = dax.OSV_ON_SHMEM if route is None and dax.pairing(qemu, daemon).route is dax.Route.SHMEM else ""
    daemon_argv = osv.virtiofsd_argv(daemon.path, socket, work / "share")
    if daemon.flavour == VirtiofsdFlavour.RUST and os.geteuid() != 0:
        daemon_argv += ["--sandbox", "none"]  # run.py's line is about QEMU; a normal user has no namespaces here
    return Launch(daemon_argv, argv, socket, work / "qemu.log", dax.Offer(route, why_not), disk)


LAUNCHERS = {VerifyMode.PLAIN: plain_launch, VerifyMode.OSV: osv_launch}


def run(qemu: QemuProbe, daemon: VirtiofsdProbe, kit: Kit, accel: str, firmware: list[str],
        mode: VerifyMode = VerifyMode.PLAIN) -> BootResult:
    return run_launch(qemu, daemon, kit, lambda work: LAUNCHERS[mode](qemu, daemon, kit, work, accel, firmware),
                      accel, mode)


def run_launch(qemu: QemuProbe, daemon: VirtiofsdProbe, kit: Kit, make_launch: Callable[[Path], Launch],
               accel: str, mode: str) -> BootResult:
    """Boot what make_launch(work dir) describes; the work dir holds share/ with the host's file in it."""
    start = time.monotonic()
    outcome = BootResult(qemu.arch, False, 0.0, accel, mode=mode, kit=kit.record())
    with boot.session("verify") as guest:  # the share is the guest's: any depth, any links
        token = guest.host_token()
        launch = make_launch(guest.work)
        if launch.disk is not None:
            guest.on_end(lambda: launch.disk.unlink(missing_ok=True) if launch.disk else None)
        vfs = guest.start_daemon(launch.virtiofsd, launch.socket)
        if vfs.failure:
            outcome.failure = "virtiofsd"
            outcome.message = _died(vfs.process, daemon) if vfs.process.poll() is not None else \
                "virtiofsd made no socket in time"
            outcome.log = vfs.last_words()
            return outcome
        vm = guest.start_qemu(launch.qemu)
        changed: list[str | None] = []

        def heard(line: str) -> None:  # the guest has the probe mapped: change it, as another program would
            if line == "QEMUPROV: dax-wait-change" and not changed:
                changed.append(guest.change_dax_probe())

        waited = guest.wait_for_guest(GUEST_TIMEOUT, boot.Console(launch.console, MAX_CONSOLE_LINES), heard)
        lines = console_lines(launch.console)
        outcome.log = lines
        qemu_said = guest.qemu_said()
        if vfs.process.poll() is not None and vfs.process.returncode != 0:
            outcome.failure, outcome.message = "virtiofsd", _died(vfs.process, daemon)
            outcome.log = [*lines, *qemu_said[-5:]]
        elif not lines and vm.returncode not in (0, None):
            outcome.failure = "qemu"
            outcome.message = f"QEMU refused to run: {qemu_said[-1:] or ['?']}"
            outcome.log = qemu_said[-10:]
        else:
            judge_round_trip(outcome, lines, guest.share, token, qemu, kit, waited, running=vm.poll() is None,
                             daemon=daemon, offer=launch.offer, changed_to=changed[0] if changed else None)
    outcome.seconds = round(time.monotonic() - start, 2)
    return outcome


def choose_accel(qemu: Path, arch: arches.Arch, requested: str, machine: str | None = None) -> str:
    """auto: KVM only for a guest of the host's own arch (machine: platform.machine() where None), and only where
    a bounded test guest of that arch runs under KVM with this very QEMU (the verdict is cached)."""
    if requested != "auto":
        return requested
    host = arches.host(machine)
    if host is not arch or not kvm.device().accessible:
        return "tcg"
    if kvm.verdict(qemu, paths.cache_dir() / "kvm.json", host)["usable"]:
        return "kvm"
    notice("KVM is present but unusable here (see `qemuprov doctor`): using TCG")
    return "tcg"


@dataclass(frozen=True)
class Targets:
    qemus: list[Path]
    virtiofsd: Path
    firmware: list[str]  # -L directories


def install_targets(entry: installs.Install) -> Targets:
    """An install's QEMUs and virtiofsd; for an install of virtiofsd alone, the QEMUs on PATH it will serve."""
    qemus = sorted((entry.prefix / "bin").glob("qemu-system-*")) or probe.qemus_on_path()
    if not qemus:
        raise UserError(f"{entry.name} holds no QEMU and there is no qemu-system-x86_64 or -aarch64 on PATH",
                        hint=f"qemuprov verify --qemu PATH --virtiofsd {entry.prefix / 'bin' / 'virtiofsd'}")
    return Targets(qemus, entry.prefix / "bin" / "virtiofsd", entry.firmware_dirs)


def binary_targets(qemus: list[Path], virtiofsd: Path) -> Targets:
    """Binaries given by path; a QEMU from a qemuprov install brings the firmware directories it recorded."""
    manifests = [installs.read_manifest(q.resolve().parent.parent) for q in qemus]
    firmware = [d for m in manifests if m for d in m.firmware]
    return Targets(qemus, virtiofsd, list(dict.fromkeys(firmware)))


def checked_daemon(path: Path, cache: probe.ProbeCache, command: str, runs_it: bool = True) -> VirtiofsdProbe:
    """The virtiofsd given, probed; one that cannot serve a share as this user (the C daemon without root) is
    bad input where qemuprov starts it (runs_it)."""
    daemon = probe.probe_binary(path, cache)
    if daemon.error or not isinstance(daemon, VirtiofsdProbe):
        raise UserError(f"virtiofsd {path}: {daemon.error}", hint="give a working virtiofsd")
    if runs_it and daemon.needs_root and os.geteuid() != 0:
        raise UserError(f"virtiofsd {path} is the C daemon, which needs root to serve a share "
                        f"({daemon.note or 'it sets up namespaces and drops capabilities'})",
                        hint=f"run {command} with sudo (HOME and PATH kept: sudo -E env PATH=\"$PATH\" qemuprov "
                             f"{command} ...), or pair the QEMU with the Rust virtiofsd, which runs as you")
    return daemon


def checked_qemu(path: Path, cache: probe.ProbeCache, wanted: tuple[str, ...] | None) -> QemuProbe | None:
    """The QEMU given, probed; None where --arch leaves it out."""
    qemu = probe.probe_binary(path, cache)
    if qemu.error or not isinstance(qemu, QemuProbe):
        raise UserError(f"QEMU {path}: {qemu.error}", hint="give a qemu-system-* binary")
    if wanted and qemu.arch not in wanted:
        return None
    if qemu.arch not in arches.ARCHES:
        raise UserError(f"QEMU {path}: no guest kit for arch {qemu.arch} (have: {', '.join(arches.ARCHES)})")
    return qemu


def verify_all(qemus: list[Path], daemon_path: Path, firmware: list[str], wanted: tuple[str, ...] | None,
               accel: str, own_kit: tuple[Path, Path] | None, mode: VerifyMode = VerifyMode.PLAIN,
               connect: str | None = None) -> list[BootResult]:
    """mode: plain (our own command lines), osv (OSv's run.py lines) or libvirt (a domain, through libvirtd at
    connect, or its default URI)."""
    cache = probe.ProbeCache()
    daemon = checked_daemon(daemon_path, cache, "verify", runs_it=mode != VerifyMode.LIBVIRT)
    if mode == VerifyMode.LIBVIRT:
        libvirt.check_daemon(connect)  # which starts virtiofsd itself, as root
    outcomes = []
    for path in qemus:
        qemu = checked_qemu(path, cache, wanted)
        if qemu is None:
            continue
        if not qemu.vhost_user_fs:
            outcomes.append(BootResult(qemu.arch, False, 0.0, "-", failure="qemu",
                                    message=f"{path} has no vhost-user-fs-pci device"))
            continue
        kit = Kit(qemu.target, *own_kit) if own_kit else guestkit.ensure_kit(qemu.target)
        chosen = choose_accel(Path(qemu.path), qemu.target, accel)
        if mode == VerifyMode.LIBVIRT:
            outcome = libvirt.boot(qemu, daemon, kit, chosen == "kvm", firmware, connect)
        else:
            outcome = run(qemu, daemon, kit, chosen, firmware, mode)
        outcome.warnings = probe.pairing_warnings(qemu, daemon)
        outcomes.append(outcome)
    cache.save()
    if not outcomes:
        raise UserError(f"--arch: none of {', '.join(wanted or ())} among the QEMU binaries given")
    return outcomes
