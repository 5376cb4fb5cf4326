"""`--runner podman`, for real: the same QEMU 7.2 fixture build as the Docker tests, through Podman's
Docker-compatible API service (scripts/test-podman starts it), both arches, files owned by the caller, the
compiler cache shared with the other builds, and the result booted."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.integration.conftest import Env


@pytest.fixture(scope="module")
def podman_env(qenv: Env) -> dict[str, str]:
    host = os.environ.get("QEMUPROV_TEST_PODMAN_HOST", "")
    if not host:
        pytest.fail("no Podman API service: run scripts/test, which starts one (QEMUPROV_TEST_PODMAN_HOST)")
    return {**qenv.vars, "DOCKER_HOST": host}


@pytest.fixture(scope="module")
def in_podman(qenv: Env, podman_env: dict[str, str]) -> Path:
    prefix = qenv.root / "fixture-7.2-podman"
    # A fresh build tree, so the compiles really run in Podman's container, through the shared ccache
    work = Path(os.environ["QEMUPROV_TEST_FIXTURES"]) / "cache" / "work" / "fixture-7.2"
    for tree in work.glob("build-podman-*"):
        shutil.rmtree(tree)
    result = qenv.run("build", "fixture-7.2", "--runner", "podman", "--prefix", str(prefix), "--force",
                      env=podman_env)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return prefix


def test_podman_build_installs_both_arches(qenv: Env, in_podman: Path) -> None:
    manifest = json.loads((in_podman / "qemuprov.json").read_text())
    assert manifest["runner"] == "podman"
    assert manifest["builder_image"]["tag"].startswith("qemuprov-builder-debian-bookworm:")
    probes = {Path(p["path"]).name: p for p in manifest["probe"]}
    for arch in ("x86_64", "aarch64"):
        assert probes[f"qemu-system-{arch}"]["vhost_user_fs"] is True and "user" in probes[f"qemu-system-{arch}"][
            "netdevs"]
    assert probes["virtiofsd"]["flavour"] == "c"
    cache = manifest["ccache"]  # the Docker build of the same tree, same clang, compiled these objects before
    assert cache and cache["hits"] >= 0.9 * (cache["hits"] + cache["misses"]) > 0, cache


def test_podman_build_files_belong_to_the_caller(in_podman: Path) -> None:
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in in_podman.rglob("*")}
    assert owners == {(os.getuid(), os.getgid())}
    work = Path(os.environ["QEMUPROV_TEST_FIXTURES"]) / "cache" / "work" / "fixture-7.2"
    assert next(work.glob("build-podman-*")).stat().st_uid == os.getuid()


def test_podman_build_verifies(qenv: Env, in_podman: Path) -> None:
    qenv.verify_x86_64(str(in_podman), "--arch", "x86_64")


def test_podman_build_leaves_no_container(podman_env: dict[str, str], in_podman: Path) -> None:
    import subprocess

    left = subprocess.run(["docker", "ps", "-aq", "--filter", "label=org.qemuprov.build"], env=podman_env,
                          capture_output=True, text=True)
    assert left.returncode == 0 and left.stdout.strip() == "", left.stdout + left.stderr
