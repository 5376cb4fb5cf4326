"""The `virtiofsd` recipe: the Rust daemon alone, for users who keep their own QEMU. Built offline by cargo against
Debian 13's crates in the trixie-crates builder, installed as bin/virtiofsd, probed, and verified with the
distribution's QEMU on PATH."""

from __future__ import annotations

import json
import subprocess

from tests.integration.conftest import VIRTIOFSD_TREE, Built, Env


def test_installs_only_the_daemon_on_path(daemon_only: Built) -> None:
    assert sorted(p.name for p in (daemon_only.prefix / "bin").iterdir()) == ["virtiofsd"]
    assert not (daemon_only.prefix / "libexec").exists()
    ldd = subprocess.run(["ldd", str(daemon_only.prefix / "bin" / "virtiofsd")], capture_output=True, text=True)
    assert "not a dynamic executable" in ldd.stdout + ldd.stderr or "statically linked" in ldd.stdout, ldd.stdout
    assert "Rust virtiofsd 1.13" in daemon_only.result.stdout and "alone (no QEMU)" in daemon_only.result.stdout


def test_manifest_records_the_daemon_source_and_no_qemu(daemon_only: Built) -> None:
    m = daemon_only.manifest
    commit = subprocess.run(["git", "-C", str(VIRTIOFSD_TREE), "rev-parse", "v1.13.2-debian^{commit}"],
                            capture_output=True, text=True).stdout.strip()
    assert m["source"] is None and m["plan"] is None
    assert m["virtiofsd_source"]["commit"] == commit  # type: ignore[index]
    assert m["builder_image"]["tag"].startswith("qemuprov-builder-debian-trixie-crates:")  # type: ignore[index]
    (entry,) = m["probe"]  # type: ignore[misc]
    assert entry["kind"] == "virtiofsd" and entry["flavour"] == "rust" and entry["version"].startswith("1.13")


def test_probe_and_list_show_the_rust_daemon(qenv: Env, daemon_only: Built) -> None:
    (daemon,) = json.loads(qenv.run("probe", str(daemon_only.prefix), "--json").stdout)
    assert daemon["flavour"] == "rust" and daemon["source_option"] == "--shared-dir"
    listing = qenv.run("list").stdout
    line = next(ln for ln in listing.splitlines() if ln.startswith("fixture-virtiofsd "))
    commit = str(daemon_only.manifest["virtiofsd_source"]["commit"])  # type: ignore[index]
    assert "Rust virtiofsd 1.13" in line and commit[:12] in line


def test_verifies_with_the_qemu_on_path(qenv: Env, daemon_only: Built) -> None:
    qenv.verify_x86_64("fixture-virtiofsd", "--arch", "x86_64")


def test_unchanged_rebuild_is_up_to_date(qenv: Env, daemon_only: Built) -> None:
    qenv.assert_up_to_date("fixture-virtiofsd", "docker")


def test_runtime_image_of_the_daemon_alone(qenv: Env, daemon_only: Built) -> None:
    tag = "qemuprov-test/virtiofsd-alone:latest"
    result = qenv.run("image", "fixture-virtiofsd", "--tag", tag)
    assert result.returncode == 0, result.stdout + result.stderr
    version = subprocess.run(["docker", "run", "--rm", "--network", "none", tag, "virtiofsd", "--version"],
                             capture_output=True, text=True)
    assert version.returncode == 0 and "1.13" in version.stdout, version.stdout + version.stderr
    labels = json.loads(subprocess.run(["docker", "image", "inspect", tag, "--format", "{{json .Config.Labels}}"],
                                       capture_output=True, text=True).stdout)
    commit = daemon_only.manifest["virtiofsd_source"]["commit"]  # type: ignore[index]
    assert labels["org.opencontainers.image.revision"] == commit
    assert "alone (no QEMU)" in labels["org.qemuprov.summary"]


def test_verify_osv_with_the_rust_daemon_started_as_run_py_starts_it(qenv: Env, daemon_only: Built) -> None:
    # run.py starts any virtiofsd with `--socket-path=... -o source=DIR`, the C daemon's spelling, which the Rust
    # one takes too; here it serves Debian's QEMU from PATH with run.py's QEMU line.
    result = qenv.run("verify", "fixture-virtiofsd", "--osv", "--arch", "x86_64", "--json", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (outcome,) = json.loads(result.stdout)
    assert outcome["ok"] is True and outcome["mode"] == "osv"
