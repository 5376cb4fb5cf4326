"""The CI templates in examples/ci run as written: their steps, in their order, each job on a machine of its own
(its own HOME, install root and Docker login), against the suite's registry, its Docker engine and (GitLab's
docker:dind service) its engine in a container. What this machine
cannot be is stood in for, and only that: `pipx install` is this checkout's qemuprov (a shim on PATH), `sudo`
(the suite runs as root and has none) runs its command, and qemu-7.2 is the fixture tree of QEMU 7.2 (the
upstream one cannot be reached), as a recipe layer over the shipped one."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.integration.conftest import FIXTURES, TAG, TREE, ContainerBuild, Env
from tests.integration.test_binary_cache import _keypair

TEMPLATES = REPO / "examples" / "ci"


@pytest.fixture(scope="module")
def machine_parts(qenv: Env, in_docker: ContainerBuild, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """in_docker: the same tree built in Docker before, so the template's build compiles from a warm ccache."""
    host = os.environ.get("QEMUPROV_TEST_REGISTRY", "")
    if not host:
        pytest.fail("no test registry: run scripts/test, which starts one (QEMUPROV_TEST_REGISTRY)")
    base = tmp_path_factory.mktemp("ci-templates")
    shims = base / "shims"
    shims.mkdir()
    (shims / "qemuprov").write_text(f'#!/bin/sh\nexec {sys.executable} -m qemuprov "$@"\n')
    (shims / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    for shim in shims.iterdir():
        shim.chmod(0o755)
    recipes = base / "recipes"
    recipes.mkdir()
    (recipes / "qemu-7.2.toml").write_text(f'format = 1\nname = "qemu-7.2"\nextends = "qemu-7.2"\n[qemu]\n'
                                           f'git = "file://{TREE}"\nref = "{TAG}"\n')
    key, pub = _keypair(base / "ci")
    return {"host": host, "password": (FIXTURES / "registry" / "password").read_text().strip(), "base": base,
            "shims": shims, "recipes": recipes, "key": Path(key), "pub": Path(pub)}


def _machine(parts: dict[str, Any], qenv: Env, name: str) -> dict[str, str]:
    """A fresh CI machine: its own HOME, install root and Docker config; the suite's engine, the fixtures'
    caches (git mirrors and ccache: the jobs would otherwise compile QEMU from nothing)."""
    home = parts["base"] / name
    (home / "tmp").mkdir(parents=True)
    (home / "docker").mkdir()
    return {"PATH": f"{parts['shims']}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(home),
            "DOCKER_HOST": os.environ.get("DOCKER_HOST", ""), "DOCKER_CONFIG": str(home / "docker"),
            "QEMUPROV_ROOT": str(home / "root"), "QEMUPROV_CACHE": qenv.vars["QEMUPROV_CACHE"],
            "QEMUPROV_RECIPES": str(parts["recipes"]), "RUNNER_TEMP": str(home / "tmp"), "LC_ALL": "C.UTF-8"}


def _run(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """As GitHub's and GitLab's shells run a step: bash, stop at the first failure, pipefail."""
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=2400, check=False)


def _steps(scripts: list[str], env: dict[str, str], cwd: Path) -> str:
    said = ""
    installs = [s for s in scripts if s.startswith("pipx install")]
    assert installs, "the job installs qemuprov first"
    for script in scripts:
        if script in installs:
            continue  # the shim on PATH is this checkout's qemuprov
        result = _run(script, env, cwd)
        said += result.stdout + result.stderr
        assert result.returncode == 0, f"`{script}` failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return said


def _assert_installed_from_the_cache(env: dict[str, str], said: str, install_json: Path) -> None:
    assert "==> build:" not in said and "==> configure" not in said, "the job that must not compile compiled"
    assert json.loads(install_json.read_text())["from_cache"] is True
    assert "QEMU emulator version 7.2" in said and "virtiofsd version" in said.lower()
    assert re.search(r"x86_64\s+PASS", said), said


def test_the_github_actions_workflow_builds_once_and_installs_everywhere(machine_parts: dict[str, Any],
                                                                       qenv: Env) -> None:
    workflow = yaml.safe_load((TEMPLATES / "github-actions.yml").read_text())
    parts, repo = machine_parts, f"{machine_parts['host']}/ci-github-{os.getpid()}/qemu-cache"
    supplied = {"REGISTRY": parts["host"], "QEMUPROV_SOURCE": "(this checkout)", "QEMUPROV_BINARY_CACHE": repo,
                "REGISTRY_USER": "qemuprov", "REGISTRY_PASSWORD": parts["password"],
                "SIGNING_KEY": parts["key"].read_text(), "TRUSTED_KEY": parts["pub"].read_text()}
    order = ["build", "use"]
    assert list(workflow["jobs"]) == order and workflow["jobs"]["use"]["needs"] == "build"
    for name in order:
        job = workflow["jobs"][name]
        wanted = {**workflow.get("env", {}), **job.get("env", {})}
        assert set(wanted) <= set(supplied), f"the test does not supply {set(wanted) - set(supplied)}"
        env = {**_machine(parts, qenv, f"github-{name}"), **{k: supplied[k] for k in wanted}}
        said = _steps([step["run"] for step in job["steps"]], env, Path(env["HOME"]))
    _assert_installed_from_the_cache(env, said, Path(env["RUNNER_TEMP"]) / "install.json")


def test_the_gitlab_pipeline_builds_once_and_installs_everywhere(machine_parts: dict[str, Any], qenv: Env,
                                                                 in_docker: ContainerBuild) -> None:
    """The build job's docker:dind service is the suite's engine in a container (scripts/test-dind), which cannot
    see the job's files; its SHARED_CCACHE is the suite's Redis on TCP, which in_docker filled."""
    pipeline = yaml.safe_load((TEMPLATES / "gitlab-ci.yml").read_text())
    parts = machine_parts
    remote, redis = os.environ.get("QEMUPROV_TEST_REMOTE_ENGINE"), os.environ.get("QEMUPROV_TEST_REDIS_TCP")
    if not remote or not redis:
        pytest.fail("no remote engine or Redis on TCP: run scripts/test, which starts them")
    supplied = {"REGISTRY": parts["host"], "REGISTRY_USER": "qemuprov", "REGISTRY_PASSWORD": parts["password"],
                "QEMUPROV_SOURCE": "(this checkout)", "QEMUPROV_SIGNING_KEY": str(parts["key"]),
                "QEMUPROV_TRUSTED_KEY": str(parts["pub"]), "SHARED_CCACHE": redis}
    variables = {k: v.replace("$REGISTRY", parts["host"] + f"/ci-gitlab-{os.getpid()}")
                 for k, v in pipeline["variables"].items()}
    jobs = [(name, job) for stage in pipeline["stages"] for name, job in pipeline.items()
            if isinstance(job, dict) and job.get("stage") == stage]
    assert [name for name, _ in jobs] == ["build-qemu", "use-qemu"]
    build_job = pipeline["build-qemu"]
    assert any("dind" in str(service) for service in build_job["services"])
    assert build_job["variables"]["DOCKER_HOST"] == "tcp://docker:2375"  # the service, here the suite's dind
    _new_dind_service(remote)
    for name, job in jobs:
        template = pipeline[job["extends"]] if "extends" in job else {}
        env = {**_machine(parts, qenv, f"gitlab-{name}"), **supplied, **variables}
        for key, value in job.get("variables", {}).items():
            env[key] = remote if key == "DOCKER_HOST" else _expand(value, env)
        workspace = Path(env["HOME"])
        said = _steps([*template.get("before_script", []), *job["script"]], env, workspace)
        if name == "build-qemu":
            built = env
            assert "cannot see this machine's files: the sources go in" in said, said[-3000:]
    _assert_installed_from_the_cache(env, said, workspace / "install.json")
    # The build through the engine that sees nothing of ours compiled what the local build had (through Redis)
    # and made the same bytes.
    manifest = json.loads((Path(built["QEMUPROV_ROOT"]) / "qemu-7.2" / "qemuprov.json").read_text())
    assert manifest["ccache"]["remote_hits"] > 0.9 * (manifest["ccache"]["hits"] + manifest["ccache"]["misses"])
    installed = Path(env["QEMUPROV_ROOT"]) / "qemu-7.2"
    binaries = sorted(p.name for p in (installed / "bin").iterdir())
    assert binaries == ["qemu-system-aarch64", "qemu-system-x86_64", "virtiofsd"]
    for binary in binaries:
        assert _digest(installed / "bin" / binary) == _digest(in_docker.prefix / "bin" / binary), f"{binary} differs"


def _new_dind_service(engine: str) -> None:
    """A job's docker:dind service starts empty: no volumes of an earlier run (build tree, ccache)."""
    env = {**os.environ, "DOCKER_HOST": engine}
    found = subprocess.run(["docker", "volume", "ls", "-q", "--filter", "name=qemuprov-"], env=env,
                           capture_output=True, text=True, check=True).stdout.split()
    if found:
        subprocess.run(["docker", "volume", "rm", "-f", *found], env=env, capture_output=True, check=True)


def _expand(value: str, known: dict[str, str]) -> str:
    """As GitLab expands a job's variables: $NAME from those known, an unset one to nothing."""
    return re.sub(r"\$(\w+)", lambda found: known.get(found.group(1), ""), value)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
