"""Parsers fed with text captured from real binaries (see each capture directory's README)."""

from __future__ import annotations

from qemuprov.knowledge.probe_parse import (
    PROBE_COMMANDS,
    c_virtiofsd_lacks_rseq,
    devices_from_help,
    properties_from_help,
    qemu_facts_from_qmp,
    qemu_version_from_text,
    qmp_replies,
    rseq_kill_in_audit,
    virtiofsd_facts,
)
from tests.conftest import CAPTURES

DAX = CAPTURES / "qemu-6.1-dev-dax"
DEB72 = CAPTURES / "debian-7.2"


def test_qmp_debian_72_x86_64() -> None:
    replies = qmp_replies((DEB72 / "qmp-x86_64.jsonl").read_text(), list(PROBE_COMMANDS))
    facts = qemu_facts_from_qmp(replies)
    assert facts.version == "7.2.22"
    assert facts.package.startswith("Debian")
    assert facts.arch == "x86_64"
    assert facts.devices == {"vhost-user-fs-pci": True, "vhost-user-fs-device": True, "virtio-9p-pci": True,
                             "vhost-user-test-device-pci": False}
    assert facts.shmem_device is False
    assert facts.dax is False
    assert "memory-backend-memfd" in facts.memory_backends
    assert "kvm" in facts.accels and "tcg" in facts.accels


def test_qmp_debian_72_aarch64() -> None:
    facts = qemu_facts_from_qmp(qmp_replies((DEB72 / "qmp-aarch64.jsonl").read_text(), list(PROBE_COMMANDS)))
    assert (facts.version, facts.arch, facts.dax) == ("7.2.22", "aarch64", False)
    assert facts.devices["vhost-user-fs-pci"] is True


def test_qmp_dax_capture_without_ids_pairs_by_position() -> None:
    # The DAX capture was recorded with these commands, in this order, and no ids.
    order = ["caps", "version", "vhost-user-fs-pci", "quit"]
    facts = qemu_facts_from_qmp(qmp_replies((DAX / "qmp-session.jsonl").read_text(), order))
    assert facts.version == "6.0.94"
    assert facts.devices["vhost-user-fs-pci"] is True
    assert facts.dax is True


def test_device_help_parsers() -> None:
    assert "vhost-user-fs-pci" in devices_from_help((DAX / "device-help.txt").read_text())
    assert "vhost-user-fs-pci" in devices_from_help((DEB72 / "device-help-aarch64.txt").read_text())
    assert "cache-size" in properties_from_help((DAX / "device-vhost-user-fs-pci-help.txt").read_text())
    assert "cache-size" not in properties_from_help(
        (DEB72 / "device-vhost-user-fs-pci-help-x86_64.txt").read_text())
    assert "tag" in properties_from_help((DEB72 / "device-vhost-user-fs-pci-help-x86_64.txt").read_text())


def test_qemu_version_line() -> None:
    assert qemu_version_from_text((DAX / "qemu-version.txt").read_text()) == ("6.0.94", "")
    version, package = qemu_version_from_text((DEB72 / "qemu-version.txt").read_text()) or ("", "")
    assert version == "7.2.22" and package.startswith("Debian")
    assert qemu_version_from_text("ls (GNU coreutils) 9.1") is None


def test_c_virtiofsd_dax_fork() -> None:
    facts = virtiofsd_facts((DAX / "virtiofsd-help.txt").read_text(), (DAX / "virtiofsd-version.txt").read_text())
    assert (facts.flavour, facts.version, facts.source_option) == ("c", "6.0.94", "-o source=")
    assert facts.sandboxes == ["namespace", "chroot"]
    assert facts.caps_json is True
    assert c_virtiofsd_lacks_rseq(facts.version) is True


def test_c_virtiofsd_debian_72() -> None:
    facts = virtiofsd_facts((DEB72 / "virtiofsd-help.txt").read_text(),
                            (DEB72 / "virtiofsd-version.txt").read_text())
    assert (facts.flavour, facts.version) == ("c", "7.2.22")
    assert c_virtiofsd_lacks_rseq(facts.version) is False


def test_not_a_virtiofsd() -> None:
    assert virtiofsd_facts("Usage: ls [OPTION]... [FILE]...", "ls (GNU coreutils) 9.1").flavour is None


def test_rseq_audit_line() -> None:
    assert rseq_kill_in_audit((DAX / "host-audit-seccomp-rseq.txt").read_text()) is True
    other = 'audit: type=1326 comm="virtiofsd" sig=31 arch=c000003e syscall=59 compat=0'
    assert rseq_kill_in_audit(other) is False
    assert rseq_kill_in_audit("nothing here") is False


def test_rust_virtiofsd_debian_13() -> None:
    rust = CAPTURES / "debian-13-rust-virtiofsd"
    facts = virtiofsd_facts((rust / "virtiofsd-help.txt").read_text(), (rust / "virtiofsd-version.txt").read_text())
    assert (facts.flavour, facts.version, facts.source_option) == ("rust", "1.13.2", "--shared-dir")
    assert facts.sandboxes == ["namespace", "chroot", "none"]


def test_rust_virtiofsd_old_backend_version_line() -> None:
    facts = virtiofsd_facts("--shared-dir <SHARED_DIR>\n--sandbox <SANDBOX>  (namespace, chroot, none)",
                            "virtiofsd backend 1.7.2")
    assert (facts.flavour, facts.version) == ("rust", "1.7.2")


def test_c_virtiofsd_of_52_prints_no_version_and_lacks_rseq() -> None:
    captured = CAPTURES / "debian-11-qemu-5.2"
    facts = virtiofsd_facts((captured / "virtiofsd-help.txt").read_text(),
                            (captured / "virtiofsd-version.txt").read_text())
    assert (facts.flavour, facts.version) == ("c", None)
    assert c_virtiofsd_lacks_rseq(facts.version) is True  # no version line: older than 6.1


def test_rseq_kill_in_auditd_and_journal_forms() -> None:
    fields = ('auid=4294967295 uid=0 gid=0 ses=4294967295 pid=30438 comm="virtiofsd" exe="/usr/libexec/virtiofsd" '
              "sig=31 arch=c000003e syscall=334 compat=0 ip=0x7fd0406af1b3 code=0x80000000")
    assert rseq_kill_in_audit(f"type=SECCOMP msg=audit(1795587119.820:3): {fields}\n") is True  # audit.log
    assert rseq_kill_in_audit(f"Dec 01 13:00:00 host audit[30438]: SECCOMP {fields}\n") is True  # journal
    assert rseq_kill_in_audit(f"type=SECCOMP msg=audit(1795587119.820:3): {fields}".replace("334", "60")) is False
