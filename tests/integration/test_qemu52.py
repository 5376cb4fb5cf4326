"""OSv's default QEMU 5.2 end to end: Debian 11's 5.2 tree built in the bullseye builder container, installed,
probed and verified on this (glibc 2.36) host, with the rseq seccomp kill of its C virtiofsd handled."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.integration.conftest import Built, Env


def test_52_builds_in_bullseye_and_probes(qenv: Env, built_52: Built) -> None:
    m = built_52.manifest
    assert m["builder_image"]["base"] == "debian:bullseye"  # type: ignore[index]
    configure = [a["arg"] for a in m["plan"]["configure"]]  # type: ignore[index]
    assert "--disable-blobs" in configure  # 5.2's spelling; it has no --disable-install-blobs
    result = qenv.run("probe", str(built_52.prefix), "--json")
    by_name = {Path(p["path"]).name: p for p in json.loads(result.stdout)}
    for arch in ("x86_64", "aarch64"):
        assert by_name[f"qemu-system-{arch}"]["version"] == "5.2.0"
        assert by_name[f"qemu-system-{arch}"]["vhost_user_fs"] is True
    daemon = by_name["virtiofsd"]
    assert daemon["flavour"] == "c" and daemon["rseq_wrapper"] is True and daemon["rseq_risk"] is False


def test_52_virtiofsd_is_wrapped_because_its_seccomp_list_lacks_rseq(built_52: Built) -> None:
    m = built_52.manifest
    assert m["virtiofsd"]["wrapper"] is True  # type: ignore[index]
    wrapper = (built_52.prefix / "bin" / "virtiofsd").read_text()
    assert "GLIBC_TUNABLES" in wrapper and "glibc.pthread.rseq=0" in wrapper
    assert (built_52.prefix / "libexec" / "virtiofsd").is_file()


def test_52_verifies_both_arches_on_this_host(qenv: Env, built_52: Built) -> None:
    result = qenv.run("verify", "fixture-5.2", "--json", timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    outcomes = json.loads(result.stdout)
    assert sorted((o["arch"], o["ok"]) for o in outcomes) == [("aarch64", True), ("x86_64", True)]
    for o in outcomes:
        print(f"\n5.2 verify {o['arch']}: {o['seconds']:.1f} s")


def test_52_bare_virtiofsd_is_killed_and_explained(qenv: Env, built_52: Built) -> None:
    bare = built_52.prefix / "libexec" / "virtiofsd"
    result = qenv.run("verify", "--qemu", str(built_52.prefix / "bin" / "qemu-system-x86_64"),
                      "--virtiofsd", str(bare), timeout=600)
    assert result.returncode == 1, result.stdout
    assert "FAIL (virtiofsd)" in result.stdout and "SIGSYS" in result.stdout
    assert "GLIBC_TUNABLES=glibc.pthread.rseq=0" in result.stdout


def test_52_doctor_flags_the_bare_daemon_and_passes_the_wrapped_one(qenv: Env, built_52: Built) -> None:
    for directory, status in ((built_52.prefix / "libexec", "FAIL"), (built_52.prefix / "bin", "PASS")):
        env = {**qenv.vars, "PATH": f"{directory}:{os.environ['PATH']}"}
        result = qenv.run("doctor", "--json", env=env)
        checks = {c["what"]: c for c in json.loads(result.stdout)}
        rseq = checks["virtiofsd survives a guest mount (rseq)"]
        assert rseq["status"] == status, rseq
