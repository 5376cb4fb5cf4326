"""verify: real guest boots over virtio-fs with Debian's QEMU 7.2 and its C virtiofsd, for both arches."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.integration.conftest import Env

DEBIAN_VIRTIOFSD = "/usr/lib/qemu/virtiofsd"


def test_verify_both_arches_round_trip(qenv: Env) -> None:
    result = qenv.run("verify", "--qemu", "/usr/bin/qemu-system-x86_64", "--qemu", "/usr/bin/qemu-system-aarch64",
                      "--virtiofsd", DEBIAN_VIRTIOFSD, "--json", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    outcomes = {o["arch"]: o for o in json.loads(result.stdout)}
    assert sorted(outcomes) == ["aarch64", "x86_64"]
    for outcome in outcomes.values():
        assert outcome["ok"] is True
        assert "QEMUPROV: mounted" in outcome["log"] and "QEMUPROV: wrote" in outcome["log"]
        assert outcome["dax"] is None  # Debian's QEMU has no DAX window to try
        kit = outcome["kit"]  # which guest booted: two machines' PASSes can be compared
        kernel = Path(qenv.vars["QEMUPROV_CACHE"]).glob(f"guest/{outcome['arch']}-*/vmlinuz")
        assert kit["kernel"] and kit["kernel_sha256"] in {hashlib.sha256(k.read_bytes()).hexdigest() for k in kernel}
        assert len(kit["initrd_sha256"]) == 64


def test_verify_fails_for_a_qemu_without_the_device(qenv: Env) -> None:
    result = qenv.run("verify", "--qemu", "/usr/bin/qemu-system-x86_64-microvm", "--virtiofsd", DEBIAN_VIRTIOFSD)
    assert result.returncode == 1
    assert "FAIL (qemu)" in result.stdout and "has no vhost-user-fs-pci" in result.stdout


def test_verify_names_a_missing_or_wrong_virtiofsd(qenv: Env) -> None:
    missing = qenv.run("verify", "--qemu", "/usr/bin/qemu-system-x86_64", "--virtiofsd", "/nonexistent/virtiofsd")
    assert missing.returncode == 2 and "virtiofsd /nonexistent/virtiofsd: cannot read" in missing.stderr
    wrong = qenv.run("verify", "--qemu", "/usr/bin/qemu-system-x86_64", "--virtiofsd", "/bin/true")
    assert wrong.returncode == 2 and "neither a QEMU system emulator nor a virtiofsd" in wrong.stderr


def test_verify_explains_a_seccomp_kill(qenv: Env, tmp_path: Path) -> None:
    # A daemon that answers --help/--version like the real one but dies of SIGSYS when it serves, as a
    # pre-7.0 C virtiofsd does on glibc 2.35+ (the real case is built and verified by the QEMU 5.2 work).
    fake = tmp_path / "virtiofsd"
    fake.write_text(f'#!/bin/sh\ncase "$1" in --help|--version) exec {DEBIAN_VIRTIOFSD} "$1";; esac\n'
                    "kill -SYS $$\n")
    fake.chmod(0o755)
    result = qenv.run("verify", "--qemu", "/usr/bin/qemu-system-x86_64", "--virtiofsd", str(fake))
    assert result.returncode == 1
    assert "FAIL (virtiofsd)" in result.stdout
    assert "SIGSYS" in result.stdout and "GLIBC_TUNABLES=glibc.pthread.rseq=0" in result.stdout


def test_verify_says_when_the_share_is_read_only(qenv: Env, tmp_path: Path) -> None:
    # A real read-only share: the daemon serves its directory through a read-only bind mount of its own.
    wrapper = tmp_path / "virtiofsd"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case "$1" in --help|--version) exec {DEBIAN_VIRTIOFSD} "$1";; esac\n'
        'for a in "$@"; do case "$a" in source=*) src=${a#source=};; esac; done\n'
        'exec unshare -m sh -c \'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && '
        f'exec {DEBIAN_VIRTIOFSD} "$@"\' "$src" "$@"\n')
    wrapper.chmod(0o755)
    result = qenv.run("verify", "--qemu", "/usr/bin/qemu-system-x86_64", "--virtiofsd", str(wrapper), timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL (virtiofsd)" in result.stdout
    assert "could not write back (" in result.stdout and "Read-only file system" in result.stdout
    assert "the share is read-only" in result.stdout


def test_guest_kit_comes_through_a_container_where_the_host_has_no_apt(
        qenv: Env, engine: str, tmp_path: Path) -> None:
    # No apt-get or dpkg-deb on PATH (nothing at all, in fact): the kit is fetched in a Debian container.
    env = {**qenv.vars, "PATH": str(tmp_path / "empty-bin"), "QEMUPROV_CACHE": str(tmp_path / "cache")}
    result = qenv.run("verify", "--qemu", "/usr/bin/qemu-system-x86_64", "--virtiofsd", DEBIAN_VIRTIOFSD,
                      "--accel", "tcg", "--json", env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)[0]["ok"] is True
    assert list((tmp_path / "cache" / "guest").glob("x86_64-*/vmlinuz"))


def test_no_stray_processes_or_sockets_after_the_runs(qenv: Env) -> None:
    import subprocess
    import tempfile

    leftovers = list(Path(tempfile.gettempdir()).glob("qemuprov-verify-*"))
    assert leftovers == [], f"verify left {leftovers}"
    ps = subprocess.run(["pgrep", "-af", "qemuprov-verify-"], capture_output=True, text=True)
    assert ps.stdout.strip() == "", f"processes outlived verify:\n{ps.stdout}"


def test_the_pinned_kit_comes_to_a_host_whose_apt_knows_no_debian(engine: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A host with apt, but an Ubuntu sources list (no Debian mirror): the same pinned Debian 13 kit comes
    through a Debian container, byte for byte the kernel a Debian host fetches with its own private apt."""
    from qemuprov.proving import guestkit

    ubuntu = tmp_path / "etc-apt"
    (ubuntu / "sources.list.d").mkdir(parents=True)
    (ubuntu / "sources.list.d" / "ubuntu.sources").write_text(
        "Types: deb\nURIs: http://archive.invalid/ubuntu\nSuites: noble noble-updates\nComponents: main\n")
    assert guestkit.debian_mirror(ubuntu) is None and guestkit.debian_mirror() is not None
    monkeypatch.setattr(guestkit, "APT_SOURCES", ubuntu)
    monkeypatch.setenv("QEMUPROV_CACHE", str(tmp_path / "cache"))
    kit = guestkit.ensure_kit("x86_64")
    record = kit.record()
    assert record["kernel"] == "6.12.117+deb13-cloud-amd64" and kit.fuse_dax is True
    monkeypatch.setattr(guestkit, "APT_SOURCES", guestkit.Path("/etc/apt"))
    monkeypatch.setenv("QEMUPROV_CACHE", str(tmp_path / "cache-debian"))
    assert guestkit.ensure_kit("x86_64").record()["kernel_sha256"] == record["kernel_sha256"]
