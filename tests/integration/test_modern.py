"""QEMU 8.0+: Debian 13's QEMU 10.0 tree (no in-tree virtiofsd, meson >= 1.5 needed) built in the bookworm
builder, with the Rust virtiofsd built by cargo offline against Debian 13's crates, statically, in the
trixie-crates builder; both installed in one prefix, probed and verified on this host."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import FIXTURES, Built, Env

TREE_10 = FIXTURES / "qemu-10.0"
VIRTIOFSD_TREE = FIXTURES / "virtiofsd-1.13"

RECIPE = f'''extends = "qemu-stable"
builder = "debian-bookworm"
[qemu]
git = "file://{TREE_10}"
ref = "v10.0-debian"
arches = ["x86_64"]
[virtiofsd]
source = "rust"
git = "file://{VIRTIOFSD_TREE}"
ref = "v1.13.2-debian"
builder = "debian-trixie-crates"
crates = "debian"
static = true
[expect]
arches = ["x86_64"]
version = "10.0"
'''


@pytest.fixture(scope="module")
def built_10(qenv: Env, engine: str) -> Built:
    return qenv.build_fresh("fixture-10.0", "docker", RECIPE, (TREE_10, VIRTIOFSD_TREE))


def test_10_probes_as_qemu_10_with_the_rust_daemon(qenv: Env, built_10: Built) -> None:
    result = qenv.run("probe", str(built_10.prefix), "--json")
    by_name = {Path(p["path"]).name: p for p in json.loads(result.stdout)}
    qemu = by_name["qemu-system-x86_64"]
    assert qemu["version"].startswith("10.0.") and qemu["vhost_user_fs"] is True and qemu["dax"] is False
    daemon = by_name["virtiofsd"]
    assert daemon["flavour"] == "rust" and daemon["version"].startswith("1.13")
    assert daemon["rseq_risk"] is False


def test_10_manifest_records_both_sources(built_10: Built) -> None:
    m = built_10.manifest
    commit = subprocess.run(["git", "-C", str(VIRTIOFSD_TREE), "rev-parse", "v1.13.2-debian^{commit}"],
                            capture_output=True, text=True).stdout.strip()
    assert m["virtiofsd_source"]["commit"] == commit  # type: ignore[index]
    assert m["virtiofsd_builder_image"]["tag"].startswith("qemuprov-builder-debian-trixie-crates:")  # type: ignore[index]
    argv = [a["arg"] for a in m["plan"]["configure"]]  # type: ignore[index]
    assert "--enable-virtiofsd" not in argv and "--meson=meson" not in argv
    assert "--python=/opt/qemuprov/python/bin/python3" in argv  # meson >= 1.5 from the builder's venv


def test_10_rust_virtiofsd_is_static_and_on_path(built_10: Built) -> None:
    daemon = built_10.prefix / "bin" / "virtiofsd"
    ldd = subprocess.run(["ldd", str(daemon)], capture_output=True, text=True)
    assert "not a dynamic executable" in ldd.stdout + ldd.stderr or "statically linked" in ldd.stdout, ldd.stdout


def test_10_verifies_a_round_trip_with_the_rust_daemon(qenv: Env, built_10: Built) -> None:
    qenv.verify_x86_64("fixture-10.0")


def test_10_unchanged_rebuild_is_up_to_date(qenv: Env, built_10: Built) -> None:
    qenv.assert_up_to_date("fixture-10.0", "docker")


def test_10_show_prints_the_plan_the_install_recorded(qenv: Env, built_10: Built) -> None:
    result = qenv.run("show", "fixture-10.0")
    assert result.returncode == 0, result.stderr
    assert "--python=/opt/qemuprov/python/bin/python3" in result.stdout and "plan for QEMU 10.0" in result.stdout
