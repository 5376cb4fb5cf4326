"""libvirt as the consumer: the domain `env --libvirt` prints is valid against libvirt's own schema and accepted
by a real libvirtd (the DAX override reaches QEMU's -device line), and `verify --libvirt` boots the guest kit
through that libvirtd, on both arches, with the C and the Rust daemon. No DAX QEMU can be had here: an install
that records the captured DAX probe stands in for the XML, and a QEMU without the window must be refused with
one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qemuprov import arches
from qemuprov.knowledge.probe import QemuProbe, VirtiofsdProbe
from qemuprov.proving import guestkit, libvirt
from qemuprov.recipe import VirtiofsdFlavour
from tests.integration.conftest import Built, Env
from tests.manifests import manifest_json

DEBIAN_VIRTIOFSD = "/usr/lib/qemu/virtiofsd"


@pytest.fixture(scope="module")
def uri() -> str:
    found = os.environ.get("QEMUPROV_TEST_LIBVIRT", "")
    if not found:
        pytest.fail("no test libvirtd: run scripts/test, which starts one (QEMUPROV_TEST_LIBVIRT)")
    return found


def _virsh(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=300, check=False)


def _dax_install(tmp_path: Path) -> Path:
    """A prefix whose manifest records the DAX fork's probe (captured), its binaries Debian's for libvirt to run."""
    prefix = tmp_path / "virtio-fs-dev"
    (prefix / "bin").mkdir(parents=True)
    for arch in ("x86_64", "aarch64"):
        (prefix / "bin" / f"qemu-system-{arch}").symlink_to(f"/usr/bin/qemu-system-{arch}")
    (prefix / "bin" / "virtiofsd").symlink_to(DEBIAN_VIRTIOFSD)
    probes = [{"kind": "qemu", "path": str(prefix / "bin" / f"qemu-system-{a}"), "arch": a, "version": "6.0.94",
               "dax": True, "vhost_user_fs": True} for a in ("x86_64", "aarch64")]
    probes.append({"kind": "virtiofsd", "path": str(prefix / "bin" / "virtiofsd"), "flavour": "c",
                   "version": "6.0.94"})
    (prefix / "qemuprov.json").write_text(manifest_json(name="virtio-fs-dev", recipe={"name": "virtio-fs-dev"},
                                                        probe=probes, firmware=[str(prefix / "share" / "qemu")]))
    return prefix


def _env(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qemuprov", "env", *args], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_env_libvirt_is_a_domain_libvirt_validates_and_takes(uri: str, tmp_path: Path, arch: str) -> None:
    prefix = _dax_install(tmp_path)
    share = tmp_path / "share"
    printed = _env(str(prefix), "--libvirt", "--arch", arch, "--share", str(share), "--dax-size", "512M")
    assert printed.returncode == 0, printed.stderr
    domain = tmp_path / "domain.xml"
    domain.write_text(printed.stdout)
    checked = subprocess.run(["virt-xml-validate", str(domain), "domain"], capture_output=True, text=True,
                             check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr + printed.stdout
    assert f"<emulator>{prefix / 'bin' / f'qemu-system-{arch}'}</emulator>" in printed.stdout
    assert f"<binary path=\"{prefix / 'bin' / 'virtiofsd'}\"" in printed.stdout
    assert '<source type="memfd" />' in printed.stdout and '<access mode="shared" />' in printed.stdout
    # libvirt itself parses it and writes QEMU's command line: the window reaches the device, by its user alias
    native = _virsh(uri, "domxml-to-native", "qemu-argv", str(domain))
    assert native.returncode == 0, native.stderr
    device = next(word for word in native.stdout.split() if "vhost-user-fs-pci" in word)
    assert libvirt.ALIAS in device and "cache-size" in device and str(512 << 20) in device, device
    assert "tag\":\"myfs\"" in device or "tag=myfs" in device


def test_env_libvirt_bad_input_is_one_line(tmp_path: Path) -> None:
    prefix = _dax_install(tmp_path)
    for args, words in ((["--libvirt", "--arch", "riscv64"], "has no QEMU for riscv64"),
                        (["--libvirt", "--dax-size", "100M"], "not a power of two"),
                        (["--libvirt", "--osv"], "give one"),
                        (["--arch", "x86_64"], "--arch goes with --libvirt")):
        bad = _env(str(prefix), *args)
        assert bad.returncode == 2 and words in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) <= 2 and "Traceback" not in bad.stderr


def test_verify_libvirt_boots_a_qemuprov_build_on_both_arches(qenv: Env, built: Built, uri: str) -> None:
    result = qenv.run("verify", "fixture-7.2", "--libvirt", "--connect", uri, "--json", timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    outcomes = {o["arch"]: o for o in json.loads(result.stdout)}
    assert sorted(outcomes) == ["aarch64", "x86_64"]
    for outcome in outcomes.values():
        assert outcome["ok"] is True and outcome["mode"] == "libvirt", outcome
        assert "QEMUPROV: wrote" in outcome["log"] and outcome["dax_status"] == "-"
    assert _virsh(uri, "list", "--all", "--name").stdout.strip() == "", "a domain was left defined"


def test_verify_libvirt_with_the_rust_daemon(qenv: Env, daemon_only: Built, uri: str) -> None:
    result = qenv.run("verify", "--qemu", "/usr/bin/qemu-system-x86_64", "--virtiofsd",
                      str(daemon_only.prefix / "bin" / "virtiofsd"), "--libvirt", "--connect", uri, "--json",
                      timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (outcome,) = json.loads(result.stdout)
    assert outcome["ok"] is True and outcome["mode"] == "libvirt"


def test_a_window_asked_of_a_qemu_without_one_is_one_clear_line(qenv: Env, uri: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The override libvirt takes for a DAX build, given to Debian's QEMU: QEMU refuses, and verify says why."""
    qemu = QemuProbe(path="/usr/bin/qemu-system-x86_64", version="7.2", arch="x86_64", vhost_user_fs=True, dax=True)
    daemon = VirtiofsdProbe(path=DEBIAN_VIRTIOFSD, flavour=VirtiofsdFlavour.C, version="7.2")
    monkeypatch.setenv("QEMUPROV_CACHE", qenv.vars["QEMUPROV_CACHE"])  # the kit the other tests fetched
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", uri)
    outcome = libvirt.boot(qemu, daemon, guestkit.ensure_kit(arches.X86_64), False, (), None)
    assert not outcome.ok and outcome.failure == "qemu"
    assert outcome.message.startswith(libvirt.NO_WINDOW), outcome.message + "\n".join(outcome.log)
    assert _virsh(uri, "list", "--all", "--name").stdout.strip() == ""


@pytest.mark.parametrize(("connect", "status", "words"),
                         [("test:///default", 2, "is not libvirt's QEMU driver"),
                          ("qemu:///system?socket=/nonexistent/sock", 1, "libvirt does not answer")])
def test_a_libvirt_that_cannot_boot_the_guest_is_one_line(connect: str, status: int, words: str) -> None:
    refused = subprocess.run([sys.executable, "-m", "qemuprov", "verify", "--qemu", "/usr/bin/qemu-system-x86_64",
                              "--virtiofsd", DEBIAN_VIRTIOFSD, "--libvirt", "--connect", connect],
                             capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode == status and words in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) <= 2 and "Traceback" not in refused.stderr
