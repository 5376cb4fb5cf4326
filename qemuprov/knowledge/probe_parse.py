"""Parsers for what QEMU and virtiofsd print. Pure functions, tested against text captured from real binaries."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from packaging.version import InvalidVersion, Version

from qemuprov.recipe import VirtiofsdFlavour

VIRTIO_FS_DEVICES = ("vhost-user-fs-pci", "vhost-user-fs-device")
NINE_P_DEVICE = "virtio-9p-pci"  # 9p, the share most users know: bench's baseline where QEMU has it
GENERIC_DEVICE = "vhost-user-test-device-pci"  # QEMU's generic vhost-user device (its backend says what it is)
PROBED_DEVICES = (*VIRTIO_FS_DEVICES, NINE_P_DEVICE, GENERIC_DEVICE)
DAX_PROPERTY = "cache-size"
# The QOM type behind a vhost-user back-end's SHMEM_MAP: a QEMU that has it maps what a back-end sends into a
# device's shared memory region (QEMU 11.1 and later).
SHMEM_MAPPING_TYPE = "virtio-shared-memory-mapping"


@dataclass(frozen=True)
class QmpCommand:
    execute: str
    arguments: dict[str, Any] | None = None

    def line(self, ident: str) -> str:
        message: dict[str, Any] = {"execute": self.execute, "id": ident}
        if self.arguments is not None:
            message["arguments"] = self.arguments
        return json.dumps(message)


# One batch, sent at once on stdin to `qemu -machine none -qmp stdio`; QEMU answers in order.
PROBE_COMMANDS: dict[str, QmpCommand] = {
    "caps": QmpCommand("qmp_capabilities"),
    "version": QmpCommand("query-version"),
    "target": QmpCommand("query-target"),
    "backends": QmpCommand("qom-list-types", {"implements": "memory-backend", "abstract": False}),
    "accels": QmpCommand("qom-list-types", {"implements": "accel", "abstract": False}),
    **{dev: QmpCommand("device-list-properties", {"typename": dev}) for dev in PROBED_DEVICES},
    "shmem": QmpCommand("qom-list-properties", {"typename": SHMEM_MAPPING_TYPE}),
    "quit": QmpCommand("quit"),
}


AIO_NODE = "qemuprov-aio-probe"
NO_LINUX_AIO = "not supported in this build"  # QEMU's words for aio=native without linux-aio


def probe_commands(aio_file: str | None) -> dict[str, QmpCommand]:
    """The batch; with a file on a filesystem that takes O_DIRECT, also open it with aio=native, as a
    `-drive ...,cache=none,aio=native` would (QEMU refuses that where it was built without linux-aio)."""
    if aio_file is None:
        return PROBE_COMMANDS
    aio = QmpCommand("blockdev-add", {"driver": "file", "node-name": AIO_NODE, "filename": aio_file,
                                      "aio": "native", "read-only": True, "cache": {"direct": True}})
    commands = {k: v for k, v in PROBE_COMMANDS.items() if k != "quit"}
    return {**commands, "aio": aio, "quit": PROBE_COMMANDS["quit"]}


def qmp_script(commands: dict[str, QmpCommand] = PROBE_COMMANDS) -> str:
    return "".join(cmd.line(ident) + "\n" for ident, cmd in commands.items())


def qmp_replies(transcript: str, order: list[str]) -> dict[str, dict[str, Any]]:
    """Pair QEMU's replies with the commands: by "id" where QEMU echoes it, else by position."""
    replies: dict[str, dict[str, Any]] = {}
    position = 0
    for line in transcript.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "QMP" in message or "event" in message:
            continue
        ident = message.get("id")
        if ident is None and position < len(order):
            ident = order[position]
        position += 1
        if ident is not None:
            replies[str(ident)] = message
    return replies


def _returned(replies: dict[str, dict[str, Any]], ident: str) -> Any:
    reply = replies.get(ident)
    return None if reply is None or "error" in reply else reply.get("return")


@dataclass
class QemuFacts:
    version: str | None = None
    package: str = ""
    arch: str | None = None
    devices: dict[str, bool] = field(default_factory=dict)
    dax: bool = False
    shmem_device: bool = False  # the generic vhost-user device, with shared memory regions a back-end maps into
    memory_backends: list[str] = field(default_factory=list)
    accels: list[str] = field(default_factory=list)
    aio_native: bool | None = None  # None: not tried, or the answer says nothing about linux-aio


def aio_native_from_reply(reply: dict[str, Any] | None) -> bool | None:
    if reply is None:
        return None
    if "error" not in reply:
        return True
    return False if NO_LINUX_AIO in str(reply["error"].get("desc", "")) else None


def qemu_facts_from_qmp(replies: dict[str, dict[str, Any]]) -> QemuFacts:
    facts = QemuFacts()
    version = _returned(replies, "version")
    if version:
        q = version["qemu"]
        facts.version = f"{q['major']}.{q['minor']}.{q['micro']}"
        facts.package = version.get("package", "").strip()
    target = _returned(replies, "target")
    if target:
        facts.arch = target.get("arch")
    for dev in PROBED_DEVICES:
        props = _returned(replies, dev)
        facts.devices[dev] = props is not None
        if dev == "vhost-user-fs-pci" and props:
            facts.dax = any(p.get("name") == DAX_PROPERTY for p in props)
    facts.shmem_device = facts.devices[GENERIC_DEVICE] and _returned(replies, "shmem") is not None
    backends = _returned(replies, "backends") or []
    facts.memory_backends = sorted(t["name"] for t in backends if t["name"] != "memory-backend")
    accels = _returned(replies, "accels") or []
    facts.accels = sorted(t["name"].removesuffix("-accel") for t in accels if t["name"] != "accel")
    facts.aio_native = aio_native_from_reply(replies.get("aio"))
    return facts


_VERSION_LINE = re.compile(r"QEMU emulator version (\d+\.\d+\.\d+)(?:\s*\((.*)\))?")


def qemu_version_from_text(text: str) -> tuple[str, str] | None:
    """`qemu-system-x86_64 --version` -> (version, package)."""
    match = _VERSION_LINE.search(text)
    return (match.group(1), (match.group(2) or "").strip()) if match else None


def devices_from_help(text: str) -> set[str]:
    """`-device help` lines look like: name "vhost-user-fs-pci", bus PCI."""
    return set(re.findall(r'^name "([^"]+)"', text, flags=re.MULTILINE))


def netdevs_from_help(text: str) -> list[str] | None:
    """`-netdev help`: "Available netdev backend types:" and one name a line. None: no such list printed."""
    head, found, rest = text.partition("Available netdev backend types:")
    if not found:
        return None
    return [line.strip() for line in rest.splitlines() if re.fullmatch(r"[\w-]+", line.strip())]


def properties_from_help(text: str) -> set[str]:
    """`-device NAME,help` lines look like:   cache-size=<size>  - ..."""
    return set(re.findall(r"^\s+([\w.-]+)=<", text, flags=re.MULTILINE))


@dataclass
class VirtiofsdFacts:
    flavour: VirtiofsdFlavour | None = None
    version: str | None = None
    source_option: str | None = None  # how the shared directory is given
    sandboxes: list[str] = field(default_factory=list)
    caps_json: bool = False  # --print-capabilities (vhost-user.json)
    dax_window: bool = False  # --dax-window: it offers a DAX window and serves mappings into it (qemuprov's patch)
    thread_pool_default: int | None = None  # --thread-pool-size's default, as --help states it


DAX_WINDOW_OPTION = "--dax-window"
_C_VERSION = re.compile(r"virtiofsd version (\d+\.\d+\.\d+)")
_RUST_VERSION = re.compile(r"virtiofsd (?:backend )?v?(\d+\.\d+\.\d+)")


def virtiofsd_facts(help_text: str, version_text: str) -> VirtiofsdFacts:
    facts = VirtiofsdFacts()
    c_match = _C_VERSION.search(version_text)
    if "--shared-dir" in help_text:
        facts.flavour = VirtiofsdFlavour.RUST
        facts.source_option = "--shared-dir"
        rust = _RUST_VERSION.search(version_text)
        facts.version = rust.group(1) if rust else None
        sandbox = re.search(r"--sandbox[^\n]*(?:\n(?!\s*-).*)*", help_text)
        block = sandbox.group(0) if sandbox else ""
        facts.sandboxes = [mode for mode in ("namespace", "chroot", "none") if mode in block] or ["namespace"]
    elif "-o source=" in help_text or c_match:
        facts.flavour = VirtiofsdFlavour.C
        facts.source_option = "-o source="
        facts.version = c_match.group(1) if c_match else None
        sandbox = re.search(r"-o sandbox=([\w|]+)", help_text)
        facts.sandboxes = sandbox.group(1).split("|") if sandbox else ["namespace"]
    facts.caps_json = "--print-capabilities" in help_text
    facts.dax_window = DAX_WINDOW_OPTION in help_text
    facts.thread_pool_default = thread_pool_default(help_text)
    return facts


def thread_pool_default(help_text: str) -> int | None:
    """The daemon's own default for --thread-pool-size, as its --help states it: 64 in QEMU 5.2's C daemon, 0
    (no pool: requests served on the queue's thread) from QEMU 6.0 on and in the Rust daemon."""
    match = re.search(r"--thread-pool-size[^\n]*(?:\n[^\n-][^\n]*){0,4}?\(?\[?default:? (\d+)", help_text)
    return int(match.group(1)) if match else None


def version_tuple(version: str | None) -> Version | None:
    if not version:
        return None
    try:
        return Version(version)
    except InvalidVersion:
        return None


def c_virtiofsd_lacks_rseq(version: str | None) -> bool:
    """The C virtiofsd of QEMU before 7.0 has no rseq in its seccomp allowlist. One that prints no version
    (only its FUSE interface) predates 6.1, where the version line appeared."""
    parsed = version_tuple(version)
    return parsed is None or parsed < Version("7.0")


# The kernel's seccomp audit record as dmesg (type=1326), auditd's audit.log (type=SECCOMP) and the journal
# (audit[PID]: SECCOMP ...) write it.
_AUDIT_SECCOMP = re.compile(r'(?:type=1326|type=SECCOMP|\bSECCOMP) .*comm="virtiofsd".*\bsig=31\b.*\barch=(\w+) '
                            r'.*\bsyscall=(\d+)')
# rseq's syscall number per audit arch (AUDIT_ARCH_X86_64, AUDIT_ARCH_AARCH64).
RSEQ_SYSCALLS = {"c000003e": 334, "c00000b7": 293}


def rseq_kill_in_audit(text: str) -> bool:
    """Does a kernel audit log show virtiofsd killed by seccomp (SIGSYS) on the rseq syscall?"""
    return any(RSEQ_SYSCALLS.get(m.group(1)) == int(m.group(2)) for m in _AUDIT_SECCOMP.finditer(text))
