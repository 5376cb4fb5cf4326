"""probe and doctor against Debian's QEMU 7.2 and its C virtiofsd at /usr/lib/qemu/virtiofsd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qemuprov.host import doctor
from qemuprov.knowledge import kvm, probe


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qemuprov", *args], capture_output=True, text=True,
                          env=env, check=False, timeout=120)


def test_probe_debian_qemu_and_virtiofsd() -> None:
    result = cli("probe", "/usr/bin/qemu-system-x86_64", "/usr/bin/qemu-system-aarch64",
                 "/usr/lib/qemu/virtiofsd", "--json")
    assert result.returncode == 0, result.stderr
    x86, arm, vfs = json.loads(result.stdout)
    for q, arch in ((x86, "x86_64"), (arm, "aarch64")):
        assert q["version"].startswith("7.2.") and q["arch"] == arch
        assert q["vhost_user_fs"] is True and q["dax"] is False
        assert "memory-backend-memfd" in q["memory_backends"]
    assert vfs["flavour"] == "c" and vfs["version"].startswith("7.2.") and vfs["rseq_risk"] is False


def test_probe_bad_inputs_are_clear_and_do_not_stop_the_others(tmp_path: Path) -> None:
    script = tmp_path / "fake-qemu"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    result = cli("probe", "/nonexistent/qemu", "/etc/passwd", str(script), "/usr/bin/qemu-system-x86_64")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    out = result.stdout
    assert "/nonexistent/qemu" in out and "cannot read: No such file or directory" in out
    assert "is not executable" in out
    assert "neither a QEMU system emulator nor a virtiofsd" in out
    assert "7.2." in out  # the good binary was still probed


def test_probe_cache_is_by_identity(tmp_path: Path) -> None:
    cache = probe.ProbeCache(tmp_path / "probes.json")
    copy = tmp_path / "qemu-system-x86_64"
    copy.write_bytes(Path("/usr/bin/qemu-system-x86_64").read_bytes())
    copy.chmod(0o755)
    first = probe.probe_binary(copy, cache)
    assert cache.misses == 1 and not first.error
    probe.probe_binary(copy, cache)
    assert cache.hits == 1
    os.utime(copy, None)  # a changed binary (new mtime) is probed again
    probe.probe_binary(copy, cache)
    assert cache.misses == 2


def doctor_env(path: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = path
    return env


def test_doctor_gives_the_path_line_for_a_hidden_virtiofsd() -> None:
    result = cli("doctor", env=doctor_env(f"{Path(sys.executable).parent}:/usr/bin:/bin"))
    assert result.returncode == 0, result.stdout
    assert "found at /usr/lib/qemu/virtiofsd, which is not on PATH" in result.stdout
    assert 'hint: export PATH="/usr/lib/qemu:$PATH"' in result.stdout


def test_doctor_json_parses_and_every_check_has_a_status() -> None:
    result = cli("doctor", "--json")
    checks = json.loads(result.stdout)
    assert {c["status"] for c in checks} <= {"PASS", "WARN", "FAIL"}
    areas = {c["area"] for c in checks}
    assert {"KVM", "QEMU", "virtiofsd", "memory", "build", "qemuprov"} <= areas


def test_kvm_verdict_comes_from_a_real_guest_run() -> None:
    qemu = Path("/usr/bin/qemu-system-x86_64")
    control = kvm.test_run(qemu, accel="tcg")
    assert control.usable, control.detail  # the test guest itself is sound
    if not kvm.device().accessible:
        pytest.skip("no accessible /dev/kvm on this machine: the KVM run cannot be made")
    real = kvm.test_run(qemu, accel="kvm")
    checks = [c for c in doctor.run_checks() if c.area == "KVM" and c.what == "a guest runs under KVM"]
    assert checks and (checks[0].status == doctor.Verdict.PASS) == real.usable
    if not real.usable:
        assert "present but unusable" in checks[0].detail


def test_second_doctor_is_served_from_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    doctor.run_checks()

    def no_probing(path: Path) -> None:
        raise AssertionError(f"{path} was probed again instead of coming from the cache")

    monkeypatch.setattr(probe, "probe_qemu", no_probing)
    monkeypatch.setattr(probe, "probe_virtiofsd", no_probing)
    monkeypatch.setattr(kvm, "test_run", no_probing)
    checks = doctor.run_checks()
    assert any(c.area == "QEMU" and c.status == doctor.Verdict.PASS for c in checks)


def test_a_broken_qemu_first_on_path_is_not_reported_as_unusable_kvm(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if not kvm.device().accessible:
        pytest.skip("no accessible /dev/kvm on this machine: doctor does not reach the KVM run")
    broken = tmp_path / "qemu-system-x86_64"
    broken.write_text('#!/bin/sh\necho "QEMU emulator version 7.2.0"\nexit 1\n')
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    (check,) = [c for c in doctor.run_checks() if c.area == "KVM" and c.what == "a guest runs under KVM"]
    assert check.status == doctor.Verdict.WARN and "cannot test KVM" in check.detail and str(broken) in check.detail
    assert "present but unusable" not in check.detail
