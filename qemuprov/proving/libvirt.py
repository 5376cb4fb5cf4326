"""libvirt as a consumer of an install: the domain XML a libvirt user takes (`env --libvirt`), and the guest boot
that proves it (`verify --libvirt`), through virsh and a running libvirtd (system mode: libvirt 9 and older run
virtiofs only there).

libvirt has no attribute for the DAX window: it is had through <qemu:override> on the device, found by its user
alias. libvirt applies overrides to the device's properties before it writes -device, with JSON syntax or
without, so the override reaches QEMUs as old as the DAX fork (6.0.94)."""

from __future__ import annotations

import os
import re
import shutil
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qemuprov import arches
from qemuprov.errors import InfraError, UserError
from qemuprov.infra import procs, render
from qemuprov.knowledge import dax
from qemuprov.knowledge.probe import QemuProbe, VirtiofsdProbe
from qemuprov.proving.boot import Console, session
from qemuprov.proving.guestkit import TAG, Kit
from qemuprov.proving.verdict import DAX_WINDOW_MB, console_lines, judge_round_trip, kernel_append
from qemuprov.records.manifest import BootResult, VerifyMode

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ALIAS = "ua-qemuprov-fs"  # a user alias ("ua-"): libvirt passes it to QEMU as the device id
QUEUE_SIZE = 1024  # what libvirt's own virtiofs guide uses
MEMORY_MB = 512
CREATE_TIMEOUT = 180.0  # the first start of an emulator: libvirt probes its capabilities (seconds under load)
GUEST_TIMEOUT = 180.0
MAX_LINES = 10_000  # of the guest's lines: its init says a dozen
NO_WINDOW = "this QEMU has no DAX window (cache-size)"
NO_GENERIC_DEVICE = (f"libvirt has no element for QEMU's generic vhost-user device ({dax.GENERIC_DEVICE}), which the "
                     "DAX window of QEMU 11.1 needs, and starts virtiofsd only for <filesystem>: this domain shares "
                     "without DAX")

ET.register_namespace("qemu", QEMU_NS)


@dataclass(frozen=True)
class DirectBoot:
    """What turns the domain into a test guest: direct kernel boot, console to a file."""

    kernel: Path
    initrd: Path
    cmdline: str
    console: Path


def domain_xml(name: str, qemu: Path, arch: arches.Arch, virtiofsd: Path, share: Path, tag: str, dax_bytes: int | None,
               firmware: Sequence[str] = (), kvm: bool = True, boot: DirectBoot | None = None) -> str:
    """A whole domain: memfd shared memory (vhost-user needs it), the virtiofs filesystem with the install's own
    virtiofsd, and for a DAX build the override that sets cache-size. firmware: -L directories QEMU needs
    beyond its own (a build from a distribution's tree, which lacks the firmware blobs)."""
    texts = {"the domain name": name, "the QEMU path": str(qemu), "the virtiofsd path": str(virtiofsd),
             "the share": str(share), "the tag": tag, **{f"the firmware directory {d!r}": d for d in firmware}}
    if boot is not None:
        texts |= {"the kernel": str(boot.kernel), "the initramfs": str(boot.initrd), "the kernel's command line":
                  boot.cmdline, "the console log": str(boot.console)}
    for what, text in texts.items():
        render.check_xml_text(text, what)
    domain = ET.Element("domain", type="kvm" if kvm else "qemu")
    ET.SubElement(domain, "name").text = name
    ET.SubElement(domain, "memory", unit="MiB").text = str(MEMORY_MB)
    backing = ET.SubElement(domain, "memoryBacking")
    ET.SubElement(backing, "source", type="memfd")
    ET.SubElement(backing, "access", mode="shared")
    ET.SubElement(domain, "vcpu").text = "1"
    os_element = ET.SubElement(domain, "os")
    ET.SubElement(os_element, "type", arch=arch.name, machine=arch.libvirt_machine).text = "hvm"
    if boot is not None:
        ET.SubElement(os_element, "kernel").text = str(boot.kernel)
        ET.SubElement(os_element, "initrd").text = str(boot.initrd)
        ET.SubElement(os_element, "cmdline").text = boot.cmdline
    if arch.libvirt_acpi:
        ET.SubElement(ET.SubElement(domain, "features"), "acpi")
    else:
        ET.SubElement(domain, "cpu", mode="maximum" if not kvm else "host-passthrough")
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(domain, event).text = "destroy"
    devices = ET.SubElement(domain, "devices")
    ET.SubElement(devices, "emulator").text = str(qemu)
    fs = ET.SubElement(devices, "filesystem", type="mount", accessmode="passthrough")
    ET.SubElement(fs, "driver", type="virtiofs", queue=str(QUEUE_SIZE))
    ET.SubElement(fs, "binary", path=str(virtiofsd))
    ET.SubElement(fs, "source", dir=str(share))
    ET.SubElement(fs, "target", dir=tag)
    ET.SubElement(fs, "alias", name=ALIAS)
    if boot is not None:
        serial = ET.SubElement(devices, "serial", type="file")
        ET.SubElement(serial, "source", path=str(boot.console))
    ET.SubElement(devices, "controller", type="usb", model="none")
    ET.SubElement(devices, "memballoon", model="none")
    if firmware:
        line = ET.SubElement(domain, f"{{{QEMU_NS}}}commandline")
        for directory in firmware:
            ET.SubElement(line, f"{{{QEMU_NS}}}arg", value="-L")
            ET.SubElement(line, f"{{{QEMU_NS}}}arg", value=directory)
    if dax_bytes is not None:
        override = ET.SubElement(domain, f"{{{QEMU_NS}}}override")
        device = ET.SubElement(override, f"{{{QEMU_NS}}}device", alias=ALIAS)
        frontend = ET.SubElement(device, f"{{{QEMU_NS}}}frontend")
        ET.SubElement(frontend, f"{{{QEMU_NS}}}property", name="cache-size", type="unsigned", value=str(dax_bytes))
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"


def virsh() -> str:
    found = shutil.which("virsh")
    if found is None:
        raise UserError("verify --libvirt: virsh is not installed",
                        hint="install libvirt's clients and daemon (Debian/Ubuntu: apt-get install libvirt-clients "
                             "libvirt-daemon-system), or verify without --libvirt")
    return found


def _virsh(connect: str | None, *args: str, timeout: float = 60.0) -> procs.Result:
    return procs.run([virsh(), *(["-c", connect] if connect else []), *args], timeout=timeout,
                     env=procs.base_env({k: v for k, v in os.environ.items() if k == "LIBVIRT_DEFAULT_URI"}))


def check_daemon(connect: str | None) -> None:
    """A libvirtd that answers, and runs its QEMU guests privileged: libvirt 9 refuses virtiofs in session mode."""
    said = _virsh(connect, "uri", timeout=30)
    if not said.ok:
        why = " ".join((said.stderr or said.why()).split()).removeprefix("error: ")
        raise InfraError(f"verify --libvirt: libvirt does not answer ({why[:200]})",
                         hint="start libvirtd (systemctl start libvirtd), or name its URI with --connect")
    if not said.stdout.strip().startswith("qemu:"):
        raise UserError(f"verify --libvirt: {said.stdout.strip()[:80]} is not libvirt's QEMU driver",
                        hint="--connect qemu:///system")
    if said.stdout.strip().startswith("qemu:///session"):
        raise UserError(f"verify --libvirt: {said.stdout.strip()} is a session daemon, where libvirt 9 runs no "
                        "virtiofs", hint="run verify as root against qemu:///system, or --connect qemu:///system")


def boot(qemu: QemuProbe, daemon: VirtiofsdProbe, kit: Kit, kvm: bool, firmware: Sequence[str],
         connect: str | None) -> BootResult:
    """Define a transient domain from the XML `env --libvirt` prints, plus the kit's kernel and a console file;
    read the guest's verdict from that file. Nothing stays defined or running."""
    start = time.monotonic()
    outcome = BootResult(qemu.arch, False, 0.0, "kvm" if kvm else "tcg", mode=VerifyMode.LIBVIRT, kit=kit.record())
    name = f"qemuprov-verify-{os.getpid()}-{qemu.arch}"
    with session("libvirt", shared_with_others=True) as guest:  # libvirt's QEMU may run as another user
        token = guest.host_token()
        console = guest.work / "console.log"
        xml = domain_xml(name, Path(qemu.path), qemu.target, Path(daemon.path), guest.share, TAG,
                         window_bytes(qemu), firmware, kvm,
                         DirectBoot(kit.kernel, kit.initrd, kernel_append(qemu), console))
        (guest.work / "domain.xml").write_text(xml)
        guest.on_end(lambda: _virsh(connect, "destroy", name, timeout=60))
        made = _virsh(connect, "create", str(guest.work / "domain.xml"), timeout=CREATE_TIMEOUT)
        if not made.ok:
            outcome.failure, outcome.message = refusal(made.stderr or made.why(), qemu)
            outcome.log = made.stderr.strip().splitlines()[-5:]
            return outcome
        waited = _wait_for_guest(connect, name, Console(console, MAX_LINES))
        lines = console_lines(console)
        outcome.log = lines
        route = dax.Route.CACHE_SIZE if qemu.dax else None
        why_not = (NO_GENERIC_DEVICE + "; `qemuprov env --libvirt` shows the <qemu:commandline> way"
                   if route is None and dax.pairing(qemu, daemon).route is dax.Route.SHMEM else "")
        judge_round_trip(outcome, lines, guest.share, token, qemu, kit, waited, daemon=daemon,
                         offer=dax.Offer(route, why_not))
    outcome.seconds = round(time.monotonic() - start, 2)
    return outcome


def window_bytes(qemu: QemuProbe) -> int | None:
    return DAX_WINDOW_MB << 20 if qemu.dax else None


def _wait_for_guest(connect: str | None, name: str, console: Console) -> float:
    """Until the guest says it is done, or its domain is gone (a transient domain vanishes when the guest
    powers off), or GUEST_TIMEOUT passes; the seconds it took."""
    start = time.monotonic()
    while time.monotonic() < start + GUEST_TIMEOUT and not console.full:
        if "QEMUPROV: done" in console.new_lines():
            break
        if not _virsh(connect, "domid", name, timeout=30).ok:
            break
        time.sleep(0.5)
    return time.monotonic() - start


def refusal(error: str, qemu: QemuProbe) -> tuple[str, str]:
    """(failure side, message) of a domain libvirt would not start."""
    text = " ".join(error.split())
    if re.search(r"cache-size' not found|Property '[^']*cache-size", text):
        return "qemu", f"{NO_WINDOW}: libvirt's <qemu:override> asked {qemu.path} for one; leave the override out"
    if "virtiofsd" in text or "vhost-user" in text:
        return "virtiofsd", f"libvirt could not start the virtiofsd: {text[-300:]}"
    return "qemu", f"libvirt could not start the domain: {text[-300:]}"
