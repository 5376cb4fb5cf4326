"""Probe QEMU system emulators and virtiofsd binaries for what virtio-fs needs. Cached by binary identity."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import stat
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import Version

from qemuprov import arches
from qemuprov.infra import jsonfile, paths, procs, typedjson
from qemuprov.knowledge.probe_parse import (
    PROBED_DEVICES,
    VirtiofsdFacts,
    c_virtiofsd_lacks_rseq,
    devices_from_help,
    netdevs_from_help,
    probe_commands,
    properties_from_help,
    qemu_facts_from_qmp,
    qemu_version_from_text,
    qmp_replies,
    qmp_script,
    rseq_kill_in_audit,
    version_tuple,
    virtiofsd_facts,
)
from qemuprov.recipe import VirtiofsdFlavour

PROBE_TIMEOUT = 15.0
CACHE_VERSION = 10  # bump when what a probe records or concludes changes
RSEQ_TUNABLE = "glibc.pthread.rseq=0"  # the one spelling of the workaround for pre-7.0 C virtiofsd's seccomp filter

# Where distributions put virtiofsd instead of PATH.
DISTRO_VIRTIOFSD = (
    "/usr/lib/qemu/virtiofsd",  # Debian, Ubuntu (C, QEMU <= 7.2)
    "/usr/libexec/virtiofsd",  # Fedora, RHEL, Debian 13 (Rust)
    "/usr/lib/virtiofsd",  # Arch (a directory holding virtiofsd on openSUSE: see distro_virtiofsd)
    "/usr/libexec/qemu/virtiofsd",
    "/usr/lib64/qemu/virtiofsd",
)


@dataclass
class QemuProbe:
    """What one qemu-system binary can do, as it answered over QMP and on its command line."""

    path: str
    arch: str  # QEMU's name of its target (query-target), else the binary's: qemu-system-ARCH
    kind: str = "qemu"
    version: str | None = None
    package: str = ""
    vhost_user_fs: bool = False
    devices: dict[str, bool] = field(default_factory=dict)
    dax: bool = False  # the virtio-fs fork's DAX window: cache-size on vhost-user-fs-pci
    shmem_device: bool = False  # QEMU 11.1's generic vhost-user device, with shared memory a back-end maps into
    accels: list[str] = field(default_factory=list)
    memory_backends: list[str] = field(default_factory=list)
    netdevs: list[str] | None = None  # -netdev backends (`user` is slirp); None: the binary lists none
    aio_native: bool | None = None  # -drive aio=native works (linux-aio); None: could not be tried here
    error: str | None = None

    @property
    def target(self) -> arches.Arch:
        """What the arch means (console, machine, firmware...); a UserError for one qemuprov does not boot."""
        return arches.get(self.arch)

    @property
    def user_networking(self) -> bool:
        return "user" in (self.netdevs or ())

    @property
    def shared_memory(self) -> bool:
        return "memory-backend-memfd" in self.memory_backends or "memory-backend-file" in self.memory_backends


@dataclass
class VirtiofsdProbe:
    """What one virtiofsd is (its flavour and version) and how it must be started."""

    path: str
    kind: str = "virtiofsd"
    flavour: VirtiofsdFlavour | None = None
    version: str | None = None
    source_option: str | None = None
    sandboxes: list[str] = field(default_factory=list)
    needs_root: bool = True
    rseq_wrapper: bool = False  # a wrapper that sets GLIBC_TUNABLES=glibc.pthread.rseq=0
    rseq_risk: bool = False  # C virtiofsd < 7.0 without the wrapper, on glibc >= 2.35
    thread_pool_default: int | None = None  # --thread-pool-size's default (0: no pool), where --help says
    dax_window: bool = False  # --dax-window: it maps files into a front-end's shared memory (qemuprov's patch)
    note: str = ""  # how the probe got its answer where the daemon would not answer this user
    error: str | None = None


Probe = QemuProbe | VirtiofsdProbe


def glibc_version() -> tuple[int, int] | None:
    name, version = platform.libc_ver()
    if name != "glibc" or not version:
        return None
    major, _, minor = version.partition(".")
    return int(major), int(minor or 0)


def glibc_has_rseq() -> bool:
    """glibc registers rseq for every thread from 2.35 on."""
    version = glibc_version()
    return version is not None and version >= (2, 35)


def sets_rseq_tunable(path: Path) -> bool:
    """Is this a (shell) wrapper that exports the rseq tunable? Only small text files can be."""
    try:
        if path.stat().st_size > 65536:
            return False
        return RSEQ_TUNABLE in path.read_text(errors="replace")
    except OSError:
        return False


def probe_qemu(path: Path) -> QemuProbe:
    result = QemuProbe(path=str(path), arch=arch_of_name(path))
    argv: list[str | Path] = [path, "-machine", "none", "-nodefaults", "-display", "none", "-qmp", "stdio"]
    commands = probe_commands(aio_probe_file())
    run = procs.run(argv, timeout=PROBE_TIMEOUT, input=qmp_script(commands))
    if run.overflowed:
        result.error = f"not a QEMU: -qmp stdio {run.why()}"
        return result
    replies = qmp_replies(run.stdout, list(commands))
    if "version" not in replies:
        return _probe_qemu_from_help(path, result, run)
    if not run.ok:  # a real QEMU leaves with status 0 after `quit`
        result.error = f"answered QMP, then {run.why()}{_last_line(run)}"
        return result
    result.netdevs = _netdevs(path)
    facts = qemu_facts_from_qmp(replies)
    result.aio_native = facts.aio_native
    result.version, result.package = facts.version, facts.package
    result.arch = facts.arch or result.arch
    result.devices, result.dax, result.shmem_device = facts.devices, facts.dax, facts.shmem_device
    result.accels, result.memory_backends = facts.accels, facts.memory_backends
    result.vhost_user_fs = facts.devices.get("vhost-user-fs-pci", False)
    return result


def arch_of_name(path: Path) -> str:
    return path.name.removeprefix("qemu-system-")


def _probe_qemu_from_help(path: Path, result: QemuProbe, qmp_run: procs.Result) -> QemuProbe:
    """Where QMP gave nothing (an odd build), fall back to `--version` and `-device help`."""
    version_run = procs.run([path, "--version"], timeout=PROBE_TIMEOUT)
    parsed = qemu_version_from_text(version_run.stdout)
    if parsed is None:
        result.error = f"not a QEMU system emulator (it {qmp_run.why()} without answering QMP" \
                       f"{_last_line(qmp_run) or _last_line(version_run)})"
        return result
    if not version_run.ok:
        result.error = f"printed a QEMU version, but --version {version_run.why()}{_last_line(version_run)}"
        return result
    result.version, result.package = parsed
    result.netdevs = _netdevs(path)
    devices = devices_from_help(procs.run([path, "-device", "help"], timeout=PROBE_TIMEOUT).stdout)
    result.devices = {dev: dev in devices for dev in PROBED_DEVICES}
    result.vhost_user_fs = result.devices["vhost-user-fs-pci"]
    if result.vhost_user_fs:
        props = procs.run([path, "-device", "vhost-user-fs-pci,help"], timeout=PROBE_TIMEOUT).stdout
        result.dax = "cache-size" in properties_from_help(props)
    return result


def _last_line(run: procs.Result) -> str:
    lines = run.stderr.strip().splitlines()
    return f": {lines[-1]}" if lines else ""


def _netdevs(path: Path) -> list[str] | None:
    return netdevs_from_help(procs.run([path, "-machine", "none", "-netdev", "help"], timeout=PROBE_TIMEOUT).stdout)


def direct_io_file(name: str, size: int = 4096) -> Path | None:
    """A file of `size` bytes that QEMU can open with cache=none (O_DIRECT, which tmpfs refuses), made where that
    works: the cache dir, else /var/tmp, else the temp dir. None where none of them takes O_DIRECT."""
    for directory in (paths.cache_dir(), Path("/var/tmp"), Path(tempfile.gettempdir())):
        file = directory / name
        try:
            if not file.is_file() or file.stat().st_size != size:
                directory.mkdir(parents=True, exist_ok=True)
                file.write_bytes(bytes(size))
            os.close(os.open(file, os.O_RDONLY | os.O_DIRECT))
        except OSError:
            continue
        return file
    return None


def aio_probe_file() -> str | None:
    file = direct_io_file("qemuprov-aio-probe.img")
    return str(file) if file else None


def _facts_carried_by(path: Path) -> VirtiofsdFacts:
    """What a virtiofsd binary carries as text (its help and version strings); a qemuprov rseq wrapper is read
    through to the daemon it starts."""
    binary = path.resolve().parent.parent / "libexec" / "virtiofsd" if sets_rseq_tunable(path) else path
    try:
        with binary.open("rb") as handle:
            text = handle.read(64 << 20).decode("latin-1")
    except OSError:
        return VirtiofsdFacts()
    return virtiofsd_facts(text, text)


def probe_virtiofsd(path: Path) -> VirtiofsdProbe:
    result = VirtiofsdProbe(path=str(path))
    help_run = procs.run([path, "--help"], timeout=PROBE_TIMEOUT)
    version_run = procs.run([path, "--version"], timeout=PROBE_TIMEOUT)
    if help_run.overflowed or version_run.overflowed:
        result.error = f"not a virtiofsd: {'--help' if help_run.overflowed else '--version'} " + \
            (help_run if help_run.overflowed else version_run).why()
        return result
    facts = virtiofsd_facts(help_run.stdout + help_run.stderr, version_run.stdout + version_run.stderr)
    if not help_run.ok and (carried := _facts_carried_by(path)).flavour == VirtiofsdFlavour.C:
        # The C virtiofsd of 7.x calls setgroups() before it reads its arguments: as a normal user even --help
        # fails. Its help and version texts are in the binary itself.
        facts = carried
        result.note = f"needs root to run (as this user --help {help_run.why()}{_last_line(help_run)})"
    if facts.flavour is None:
        said = help_run.why() if not help_run.ok else "printed no virtiofsd options"
        result.error = f"not a virtiofsd (--help {said})"
        return result
    result.flavour, result.version = facts.flavour, facts.version
    result.source_option, result.sandboxes = facts.source_option, facts.sandboxes
    result.thread_pool_default = facts.thread_pool_default
    result.dax_window = facts.dax_window
    result.needs_root = facts.flavour == VirtiofsdFlavour.C
    result.rseq_wrapper = sets_rseq_tunable(path)
    result.rseq_risk = (facts.flavour == VirtiofsdFlavour.C and c_virtiofsd_lacks_rseq(facts.version)
                        and glibc_has_rseq() and not result.rseq_wrapper)
    return result


def classify(path: Path) -> str | None:
    """qemu, virtiofsd, or None when the name says neither (then the probes decide)."""
    name = path.name
    if name.startswith("qemu-system-"):
        return "qemu"
    if "virtiofsd" in name:
        return "virtiofsd"
    return None


class ProbeCache:
    """Probe results on disk, keyed by (realpath, size, mtime, ctime): a changed binary is probed again."""

    def __init__(self, file: Path | None = None) -> None:
        self.file = file or paths.cache_dir() / "probes.json"
        self.hits = 0
        self.misses = 0
        self._entries: dict[str, dict[str, Any]] = {}
        self._dirty = False
        try:
            data = json.loads(self.file.read_text())
            if data.get("version") == CACHE_VERSION:
                self._entries = data["entries"]
        except (OSError, ValueError, KeyError, AttributeError):
            self._entries = {}

    def get(self, key: str) -> dict[str, Any] | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(self, key: str, value: dict[str, Any]) -> None:
        self._entries[key] = value
        self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        jsonfile.save_cache(self.file, {"version": CACHE_VERSION, "entries": self._entries})
        self._dirty = False


def _from_dict(data: dict[str, Any], where: str) -> Probe | None:
    """A cached result; None where an older qemuprov wrote another shape (then the binary is probed again)."""
    try:
        found: Probe = typedjson.build(QemuProbe if data.get("kind") == "qemu" else VirtiofsdProbe, data, where)
        return found
    except typedjson.Mismatch:
        return None


def probe_binary(path: Path, cache: ProbeCache | None = None) -> Probe:
    """Probe one file. A file that is missing, not executable or neither kind gets an error, not an exception."""
    kind = classify(path)
    placeholder: Probe = (VirtiofsdProbe(path=str(path)) if kind == "virtiofsd"
                          else QemuProbe(path=str(path), arch=arch_of_name(path)))
    try:
        st = path.stat()
    except OSError as exc:
        placeholder.error = f"cannot read: {exc.strerror}"
        return placeholder
    if kind is None:
        placeholder.kind = "unknown"
    if stat.S_ISDIR(st.st_mode):
        placeholder.error = "is a directory (give a binary, or a prefix that has bin/)"
        return placeholder
    if not os.access(path, os.X_OK):
        placeholder.error = "is not executable"
        return placeholder
    key = paths.fingerprint(path)
    if cache is not None and (cached := cache.get(key)) is not None and (
            known := _from_dict(cached, str(cache.file))) is not None:
        return known
    probe: Probe
    if kind == "virtiofsd":
        probe = probe_virtiofsd(path)
    elif kind == "qemu":
        probe = probe_qemu(path)
    else:
        probe = probe_qemu(path)
        if probe.error:
            as_virtiofsd = probe_virtiofsd(path)
            probe = as_virtiofsd if not as_virtiofsd.error else probe
            if probe.error:
                probe.error = "neither a QEMU system emulator nor a virtiofsd"
                probe.kind = "unknown"
    # Failures are not cached: the next run should look again.
    if cache is not None and not probe.error:
        cache.put(key, asdict(probe))
    return probe


def binaries_in_prefix(prefix: Path) -> list[Path]:
    bin_dir = prefix / "bin"
    found = sorted(bin_dir.glob("qemu-system-*")) if bin_dir.is_dir() else []
    for candidate in (bin_dir / "virtiofsd", prefix / "libexec" / "virtiofsd"):
        if candidate.exists():
            found.append(candidate)
            break
    return found


def default_binaries() -> list[Path]:
    """What a user would run: qemu-system-* and virtiofsd on PATH, then virtiofsd in distro places."""
    found: dict[str, Path] = {}
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or not os.path.isdir(directory):
            continue
        for entry in sorted(Path(directory).glob("qemu-system-*")):
            found.setdefault(entry.name, entry)
    on_path = shutil.which("virtiofsd")
    if on_path:
        found["virtiofsd"] = Path(on_path)
    result = list(found.values())
    result.extend(p for p in distro_virtiofsd() if p not in result)
    return result


def distro_virtiofsd() -> list[Path]:
    """virtiofsd binaries in the places distributions keep them off PATH; a directory of that name (openSUSE)
    is looked into."""
    found = []
    for place in map(Path, DISTRO_VIRTIOFSD):
        binary = place / "virtiofsd" if place.is_dir() else place
        if binary.is_file() and os.access(binary, os.X_OK) and binary not in found:
            found.append(binary)
    return found


def qemus_on_path() -> list[Path]:
    """The first qemu-system-x86_64 and -aarch64 on PATH: what a user's command line would start."""
    return [Path(found) for arch in arches.ARCHES.values() if (found := shutil.which(arch.qemu))]


def expand_targets(targets: list[str]) -> list[Path]:
    """Command-line targets: binaries as they are, prefixes expanded to their binaries."""
    paths_out: list[Path] = []
    for target in targets:
        path = Path(target)
        if path.is_dir() and (path / "bin").is_dir():
            inside = binaries_in_prefix(path)
            paths_out.extend(inside or [path])
        else:
            paths_out.append(path)
    return paths_out


def pairing_warnings(qemu: QemuProbe, daemon: VirtiofsdProbe) -> list[str]:
    """Combinations of QEMU and virtiofsd known to break, in words a user can act on."""
    warnings = []
    if qemu.dax and daemon.flavour == VirtiofsdFlavour.RUST:
        warnings.append(f"QEMU {qemu.version} has the fork's DAX window (cache-size), but the Rust virtiofsd does not "
                        "serve DAX mappings over the fork's messages: mount -o dax fails; pair it with the C virtiofsd "
                        "built from the same virtio-fs-dev tree")
    elif qemu.dax and daemon.flavour == VirtiofsdFlavour.C and daemon.version != qemu.version:
        warnings.append(f"the DAX QEMU {qemu.version} and C virtiofsd {daemon.version} come from different trees: "
                        "only the virtio-fs-dev tree's own virtiofsd serves DAX mappings")
    version = version_tuple(qemu.version)
    if daemon.flavour == VirtiofsdFlavour.RUST and version is not None and Version("7.1") <= version < Version("8.1"):
        warnings.append(f"start this virtiofsd without --tag: QEMU {qemu.version} (7.1 to 8.0) cannot take the tag "
                        "from the daemon; give tag= to vhost-user-fs-pci instead")
    return warnings


def seen_rseq_kill() -> bool:
    """Look for the kernel's seccomp audit line where it can be read without privileges we lack."""
    audit = Path("/var/log/audit/audit.log")
    texts = []
    with contextlib.suppress(OSError):
        texts.append(audit.read_text(errors="replace")[-1_000_000:])
    dmesg = shutil.which("dmesg")
    if dmesg:
        texts.append(procs.run([dmesg], timeout=3).stdout)
    journalctl = shutil.which("journalctl")
    if journalctl:  # where auditd is not running, systemd-journald keeps the kernel's audit records
        texts.append(procs.run([journalctl, "-q", "--no-pager", "-n", "5000", "_TRANSPORT=audit",
                                "_TRANSPORT=kernel"], timeout=3).stdout)
    return any(rseq_kill_in_audit(text) for text in texts)
