"""The fixture QEMU tree built in a real Docker engine (started by scripts/test-engine), the runtime image and
tarball made from it, and the container fault cases."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import jsonschema

from qemuprov.records import manifest
from tests.integration.conftest import FIXTURES, ContainerBuild, Env, container_build

LABEL = "org.qemuprov.build"


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=300)


def build_containers() -> list[str]:
    return docker("ps", "-aq", "--filter", f"label={LABEL}").stdout.split()


def test_container_build_installs_and_probes(qenv: Env, in_docker: ContainerBuild) -> None:
    m = in_docker.manifest
    assert m["runner"] == "docker"
    image = m["builder_image"]
    assert isinstance(image, dict) and image["tag"].startswith("qemuprov-builder-debian-bookworm:")
    assert image["base"] == "debian:bookworm"
    result = qenv.run("probe", str(in_docker.prefix), "--json")
    by_name = {Path(p["path"]).name: p for p in json.loads(result.stdout)}
    for arch in ("x86_64", "aarch64"):
        assert by_name[f"qemu-system-{arch}"]["version"].startswith("7.2.")
        assert by_name[f"qemu-system-{arch}"]["vhost_user_fs"] is True
    assert by_name["virtiofsd"]["flavour"] == "c"
    assert build_containers() == [], "the build container was not removed"


def test_container_build_files_belong_to_the_caller(in_docker: ContainerBuild) -> None:
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in in_docker.prefix.rglob("*")}
    assert owners == {(os.getuid(), os.getgid())}
    work = Path(os.environ["QEMUPROV_TEST_FIXTURES"]) / "cache" / "work" / "fixture-7.2"
    build_tree = next(work.glob("build-docker-*"))
    assert build_tree.stat().st_uid == os.getuid()


def test_container_build_verifies_on_this_host(qenv: Env, in_docker: ContainerBuild) -> None:
    result = qenv.run("verify", str(in_docker.prefix), "--arch", "x86_64", "--json", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)[0]["ok"] is True


def test_second_container_build_reuses_image_build_tree_and_ccache(qenv: Env, in_docker: ContainerBuild) -> None:
    # Another prefix: the tree is relocatable and configured with one fixed prefix, so the build tree serves as it is.
    again = container_build(qenv, qenv.root / "fixture-7.2-docker-again", "--force")
    assert again.manifest["builder_image"] == in_docker.manifest["builder_image"]
    log = Path(str(again.manifest["log"])).read_text()
    assert "$ docker build" not in log, "the builder image was rebuilt although its Dockerfile did not change"
    assert "configure" not in again.manifest["timings"]  # type: ignore[operator]
    assert again.manifest["ccache"] == {"hits": 0, "misses": 0, "hit_rate": None, "remote_hits": 0}
    # With the build tree gone, every object comes from ccache.
    for build_dir in (FIXTURES / "cache" / "work" / "fixture-7.2").glob("build-docker-*"):
        shutil.rmtree(build_dir)
    rebuilt = container_build(qenv, qenv.root / "fixture-7.2-docker-again", "--force")
    cache = rebuilt.manifest["ccache"]
    assert isinstance(cache, dict) and cache["hit_rate"] >= 0.95, cache
    print(f"\nother prefix: {again.seconds:.0f} s; build tree deleted: {rebuilt.seconds:.0f} s; "
          f"first {in_docker.seconds:.0f} s; ccache {cache}")


def test_runtime_image_runs_qemu_and_virtiofsd(qenv: Env, in_docker: ContainerBuild) -> None:
    tag = "qemuprov-test/fixture:latest"
    result = qenv.run("image", str(in_docker.prefix), "--tag", tag)
    assert result.returncode == 0, result.stdout + result.stderr
    version = docker("run", "--rm", "--network", "none", tag, "qemu-system-x86_64", "--version")
    assert "QEMU emulator version 7.2" in version.stdout
    daemon = docker("run", "--rm", "--network", "none", tag, "virtiofsd", "--help")
    assert "-o source=PATH" in daemon.stdout
    # The dfsg tree has no BIOS: the image links the distribution's firmware where QEMU looks for it.
    bios = docker("run", "--rm", "--network", "none", tag, "sh", "-c",
                  "test -e /opt/qemuprov/fixture-7.2-docker/share/qemu/bios-256k.bin && echo found")
    assert bios.stdout.strip() == "found"
    labels = json.loads(docker("image", "inspect", tag, "--format", "{{json .Config.Labels}}").stdout)
    assert json.loads(labels["org.qemuprov.manifest"])["source"] == in_docker.manifest["source"]
    jsonschema.validate(json.loads(labels["org.qemuprov.manifest"]), manifest.schema())  # as a CI job would
    packages = docker("run", "--rm", "--network", "none", tag, "dpkg-query", "-W", "-f", "${Package}\n").stdout.split()
    assert "libglib2.0-0" in packages and "libseccomp2" in packages
    assert not any(p.endswith("-dev") for p in packages), "the runtime image carries build dependencies"


def test_runtime_image_through_an_engine_that_cannot_see_the_install(qenv: Env, in_docker: ContainerBuild) -> None:
    # As through docker:dind: the install goes into the container through the engine's API, not a bind mount.
    tag = "qemuprov-test/fixture-copied:latest"
    result = qenv.run("image", str(in_docker.prefix), "--tag", tag,
                      env={**qenv.vars, "QEMUPROV_CONTAINER_TRANSPORT": "copy"})
    assert result.returncode == 0, result.stdout + result.stderr
    packages = docker("run", "--rm", "--network", "none", tag, "dpkg-query", "-W", "-f", "${Package}\n").stdout.split()
    assert "libglib2.0-0" in packages and "libseccomp2" in packages  # the libraries were found from the copy
    version = docker("run", "--rm", "--network", "none", tag, "qemu-system-x86_64", "--version")
    assert "QEMU emulator version 7.2" in version.stdout


def test_tarball_is_relocatable(qenv: Env, in_docker: ContainerBuild, tmp_path: Path) -> None:
    tarball = tmp_path / "fixture.tar.gz"
    result = qenv.run("image", str(in_docker.prefix), "--tar", str(tarball))
    assert result.returncode == 0, result.stderr
    with tarfile.open(tarball) as tar:
        tar.extractall(tmp_path / "elsewhere", filter="tar")
    moved = tmp_path / "elsewhere" / "fixture-7.2-docker"
    version = subprocess.run([moved / "bin" / "qemu-system-x86_64", "--version"], capture_output=True, text=True)
    assert "QEMU emulator version 7.2" in version.stdout
    # QEMU finds its data (keymaps, trace events, firmware descriptors) relative to the moved binary.
    help_out = subprocess.run([moved / "bin" / "qemu-system-x86_64", "-L", "help"], capture_output=True, text=True)
    data_dirs = [Path(line).resolve() for line in help_out.stdout.split()]
    assert (moved / "share" / "qemu").resolve() in data_dirs, help_out.stdout


def test_unreachable_engine_is_exit_1_not_bad_input(qenv: Env) -> None:
    env = {**qenv.vars, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    result = subprocess.run([sys.executable, "-m", "qemuprov", "--recipes", str(qenv.recipes), "build",
                             "fixture-7.2", "--runner", "docker"], env=env, capture_output=True, text=True)
    assert result.returncode == 1  # the machine's state, not the user's input
    assert "no reachable container engine" in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.stderr


def test_auto_runner_falls_back_to_the_host_with_a_notice(qenv: Env, tmp_path: Path) -> None:
    env = {**qenv.vars, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    qenv.write_recipe("no-such-ref", 'extends = "fixture-7.2"\n[qemu]\nref = "v0.0-none"\n')
    result = subprocess.run([sys.executable, "-m", "qemuprov", "--recipes", str(qenv.recipes), "build",
                             "no-such-ref"], env=env, capture_output=True, text=True)
    assert "no container engine reachable" in result.stderr and "building on the host" in result.stderr


def test_missing_base_image_is_explained(qenv: Env, engine: str) -> None:
    result = qenv.run("build", "fixture-7.2", "--runner", "docker", "--builder-base", "qemuprov-test/absent:1",
                      "--prefix", str(qenv.root / "never"))
    assert result.returncode == 1
    assert "the base image qemuprov-test/absent:1 is not in the engine" in result.stderr
    assert "docker import" in result.stderr and "Traceback" not in result.stderr
    assert not (qenv.root / "never").exists()


def test_failure_inside_the_container_shows_the_log_and_removes_it(qenv: Env, in_docker: ContainerBuild) -> None:
    qenv.write_recipe("broken-in-docker", 'extends = "fixture-7.2"\n[qemu]\nconfigure = ["--enable-no-such-thing"]\n')
    result = qenv.run("build", "broken-in-docker", "--runner", "docker", "--prefix", str(in_docker.prefix))
    assert result.returncode == 1
    assert "configure failed" in result.stderr and "full log:" in result.stderr
    assert "no-such-thing" in result.stderr
    assert build_containers() == []
    assert json.loads((in_docker.prefix / "qemuprov.json").read_text())["built_at"] == in_docker.manifest["built_at"]
