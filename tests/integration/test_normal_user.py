"""qemuprov as most people run it: as themselves, not root. Probe, doctor, a build whose C virtiofsd refuses a
normal user even `--help`, and verify with the Rust virtiofsd, all as the user scripts/test makes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import Built, ContainerBuild, Env, NormalUser
from tests.integration.standin import make_tree, set_delays

DEBIAN_VIRTIOFSD = "/usr/lib/qemu/virtiofsd"


def test_probe_knows_a_c_virtiofsd_that_refuses_this_user(normal_user: NormalUser) -> None:
    result = normal_user.run("probe", DEBIAN_VIRTIOFSD, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    (daemon,) = json.loads(result.stdout)
    assert daemon["error"] is None and daemon["flavour"] == "c" and daemon["version"].startswith("7.2")
    assert daemon["needs_root"] is True and "setgroups" in daemon["note"]


def test_doctor_as_a_normal_user(normal_user: NormalUser) -> None:
    result = normal_user.run("doctor", "--json")
    assert result.returncode in (0, 1) and "internal error" not in result.stderr, result.stderr
    checks = {c["what"]: c for c in json.loads(result.stdout)}
    # Debian's C virtiofsd, off this user's PATH, is found, recognised, and said to need root
    assert checks["virtiofsd on PATH"]["status"] == "WARN" and DEBIAN_VIRTIOFSD in checks["virtiofsd on PATH"]["detail"]
    assert checks["virtiofsd flavour"]["status"] == "PASS" and "7.2" in checks["virtiofsd flavour"]["detail"]
    assert checks["virtiofsd can run as this user"]["status"] == "WARN"


def _standin_recipe(normal_user: NormalUser, name: str) -> Path:
    """A recipe of the stand-in tree in the user's home, the user's; the recipes directory."""
    base = normal_user.home / name
    recipes = base / "recipes"
    recipes.mkdir(parents=True)
    body = make_tree(base / "tree", base / "control")
    set_delays(base / "control")
    (recipes / f"{name}.toml").write_text(f'format = 1\nname = "{name}"\n{body}')
    normal_user.give(base)
    return recipes


def test_build_of_a_c_daemon_holds_its_promise_for_a_normal_user(normal_user: NormalUser) -> None:
    recipes = _standin_recipe(normal_user, "standin")
    built = normal_user.run("--recipes", str(recipes), "build", "standin", "--runner", "host")
    assert built.returncode == 0, built.stdout + built.stderr  # [expect] virtiofsd = "c"
    prefix = normal_user.home / ".local/share/qemuprov/installs/standin"
    daemon = next(p for p in json.loads((prefix / "qemuprov.json").read_text())["probe"] if p["kind"] == "virtiofsd")
    assert daemon["flavour"] == "c" and "needs root to run" in daemon["note"]
    verify = normal_user.run("verify", "standin")
    assert verify.returncode == 2 and "the C daemon, which needs root" in verify.stderr
    assert "run verify with sudo" in verify.stderr and "Traceback" not in verify.stderr


def test_verify_as_a_normal_user_with_the_rust_virtiofsd(normal_user: NormalUser, daemon_only: Built,
                                                         qenv: Env) -> None:
    daemon = normal_user.home / "rust-virtiofsd"
    shutil.copy2(daemon_only.prefix / "bin" / "virtiofsd", daemon)
    normal_user.give(daemon)
    result = normal_user.run("verify", "--qemu", "/usr/bin/qemu-system-x86_64", "--virtiofsd", str(daemon), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    (outcome,) = json.loads(result.stdout)
    assert outcome["ok"] is True and outcome["accel"] == "tcg"
    # the pinned kit came through qemuprov's own apt configuration, without root
    assert outcome["kit"]["kernel"] == "6.12.117+deb13-cloud-amd64", outcome["kit"]


def test_a_rootless_podman_build_as_the_normal_user(normal_user: NormalUser, in_docker: ContainerBuild) -> None:
    """--runner podman through the user's own rootless Podman (Fedora's and RHEL's default): the steps run as
    root in the container, which the user namespace maps to the user, so every file is the user's."""
    host = os.environ.get("QEMUPROV_TEST_ROOTLESS_PODMAN", "")
    if not host:
        pytest.fail("no rootless Podman: run scripts/test, which starts one (QEMUPROV_TEST_ROOTLESS_PODMAN)")
    runtime = str(Path(host.removeprefix("unix://")).parent)
    user = ["setpriv", f"--reuid={normal_user.uid}", f"--regid={normal_user.uid}", "--init-groups", "env", "-i",
            f"HOME={normal_user.home}", f"XDG_RUNTIME_DIR={runtime}", "PATH=/usr/bin:/bin"]
    tag = str(in_docker.manifest["builder_image"]["tag"])  # type: ignore[index]
    # the builder image, as a registry would give it to the user's Podman (a rootless vfs build takes long)
    saved = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
    loaded = subprocess.run([*user, "podman", "load"], stdin=saved.stdout, capture_output=True, text=True,
                            timeout=900, cwd="/")
    assert saved.wait() == 0 and loaded.returncode == 0, loaded.stderr
    recipes = _standin_recipe(normal_user, "standin-rootless")
    built = normal_user.run("--recipes", str(recipes), "build", "standin-rootless", "--runner", "podman",
                            extra_env={"DOCKER_HOST": host, "XDG_RUNTIME_DIR": runtime})
    assert built.returncode == 0, built.stdout + built.stderr
    prefix = normal_user.home / ".local/share/qemuprov/installs/standin-rootless"
    record = json.loads((prefix / "qemuprov.json").read_text())
    assert record["runner"] == "podman" and record["builder_image"]["tag"] == tag
    work = normal_user.home / ".cache/qemuprov/work/standin-rootless"
    owners = {(p.stat().st_uid, p.stat().st_gid) for tree in (prefix, work) for p in tree.rglob("*")}
    assert owners == {(normal_user.uid, normal_user.uid)}
