"""Real programs: the fixture QEMU tree is built once per test session and shared."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

FIXTURES = Path(os.environ.get("QEMUPROV_TEST_FIXTURES", "/var/cache/qemuprov-test"))
TREE = FIXTURES / "qemu-7.2"
TREE_52 = FIXTURES / "qemu-5.2"
TAG = "v7.2-debian"


@dataclass
class Env:
    home: Path
    root: Path
    recipes: Path
    vars: dict[str, str]

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "qemuprov", "--recipes", str(self.recipes), *args]

    def run(self, *args: str, timeout: float = 1800, env: dict[str, str] | None = None,
            **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args),
                              env=env or self.vars, capture_output=True, text=True, timeout=timeout, check=False,
                              **kwargs)  # type: ignore[call-overload]

    def verify_x86_64(self, target: str, *extra: str) -> None:
        """`qemuprov verify TARGET` boots the x86_64 guest and the file round trip succeeds."""
        result = self.run("verify", target, *extra, "--json", timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        (outcome,) = json.loads(result.stdout)
        assert outcome["ok"] is True and outcome["arch"] == "x86_64"

    def assert_up_to_date(self, recipe: str, runner: str, *extra: str, env: dict[str, str] | None = None) -> None:
        result = self.run("build", recipe, "--runner", runner, *extra, env=env)
        assert result.returncode == 0 and "up to date" in result.stdout, result.stdout + result.stderr

    def build_fresh(self, name: str, runner: str, body: str | None = None, trees: tuple[Path, ...] = ()) -> Built:
        """Write the recipe (when a body is given) and build it with --force, from the fixture trees it names."""
        for tree in trees:
            if not (tree / ".git").is_dir():
                pytest.fail(f"the fixture tree {tree} is missing: run scripts/test, which prepares it")
        if body is not None:
            self.write_recipe(name, body)
        result = self.run("build", name, "--runner", runner, "--force")
        assert result.returncode == 0, result.stdout + result.stderr[-4000:]
        prefix = self.root / name
        return Built(prefix, json.loads((prefix / "qemuprov.json").read_text()), result)

    def write_recipe(self, name: str, body: str) -> None:
        (self.recipes / f"{name}.toml").write_text(f'format = 1\nname = "{name}"\n{body}')


@pytest.fixture(scope="session")
def qenv(tmp_path_factory: pytest.TempPathFactory) -> Env:
    if not (TREE / ".git").is_dir():
        pytest.fail(f"the fixture QEMU tree {TREE} is missing: run scripts/test, which prepares it")
    base = tmp_path_factory.mktemp("qemuprov")
    home, root, recipes = base / "home", base / "root", base / "recipes"
    for d in (home, recipes):
        d.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QEMUPROV_", "XDG_"))}
    # The cache (git mirrors, work trees, ccache) lives with the fixtures so later runs reuse it.
    env.update(HOME=str(home), QEMUPROV_ROOT=str(root), QEMUPROV_CACHE=str(FIXTURES / "cache"))
    qenv = Env(home, root, recipes, env)
    qenv.write_recipe("fixture-7.2", f'extends = "qemu-7.2"\n[qemu]\ngit = "file://{TREE}"\nref = "{TAG}"\n')
    return qenv


@dataclass
class Built:
    prefix: Path
    manifest: dict[str, object]
    result: subprocess.CompletedProcess[str]


@pytest.fixture(scope="session")
def built(qenv: Env) -> Built:
    return qenv.build_fresh("fixture-7.2", "host")


@pytest.fixture(scope="session")
def built_52(qenv: Env, engine: str) -> Built:
    """OSv's default QEMU: Debian 11's 5.2 tree, built in the bullseye builder container."""
    recipe = f'extends = "qemu-5.2"\n[qemu]\ngit = "file://{TREE_52}"\nref = "v5.2-debian"\n'
    return qenv.build_fresh("fixture-5.2", "docker", recipe, (TREE_52,))


VIRTIOFSD_TREE = FIXTURES / "virtiofsd-1.13"
VIRTIOFSD_14_TREE = FIXTURES / "virtiofsd-1.14"  # Debian sid's crate source: what qemuprov's DAX patch is made for


@pytest.fixture(scope="session")
def daemon_only(qenv: Env, engine: str) -> Built:
    """The Rust virtiofsd alone, built offline against Debian 13's crates in the trixie-crates builder."""
    recipe = (f'extends = "virtiofsd"\n[virtiofsd]\ngit = "file://{VIRTIOFSD_TREE}"\nref = "v1.13.2-debian"\n'
              'builder = "debian-trixie-crates"\ncrates = "debian"\n')
    return qenv.build_fresh("fixture-virtiofsd", "docker", recipe, (VIRTIOFSD_TREE,))


@dataclass
class ContainerBuild:
    prefix: Path
    manifest: dict[str, object]
    seconds: float


def container_build(qenv: Env, prefix: Path, *extra: str, env: dict[str, str] | None = None) -> ContainerBuild:
    started = time.monotonic()
    result = qenv.run("build", "fixture-7.2", "--runner", "docker", "--prefix", str(prefix), *extra,
                      env={**qenv.vars, **(env or {})})
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return ContainerBuild(prefix, json.loads((prefix / "qemuprov.json").read_text()), seconds)


@pytest.fixture(scope="session")
def in_docker(qenv: Env, engine: str) -> ContainerBuild:
    """Also fills the test Redis (through its socket, local hits too) for the build through the remote engine.

    The Redis of a run starts empty, but the fixture cache's build tree may be left from an earlier run, and a build
    with nothing to compile would share nothing: the container build tree goes first, so every object is compiled
    (from the local ccache) and written to Redis in this run."""
    redis = os.environ.get("QEMUPROV_TEST_REDIS")
    if not redis:
        pytest.fail("no test Redis: run scripts/test, which starts one (QEMUPROV_TEST_REDIS)")
    for tree in (FIXTURES / "cache" / "work" / "fixture-7.2").glob("build-docker-*"):
        shutil.rmtree(tree)
    return container_build(qenv, qenv.root / "fixture-7.2-docker", "--force", "--shared-ccache", redis,
                           env={"QEMUPROV_CCACHE_RESHARE": "1"})


@dataclass
class NormalUser:
    """The user scripts/test makes (uid 4242), with its own venv of this checkout and a HOME of its own."""

    name: str
    uid: int
    home: Path
    venv: Path

    def run(self, *args: str, timeout: float = 900,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        tmp = self.home / "tmp"
        env = {"HOME": str(self.home), "TMPDIR": str(tmp), "USER": self.name, "LC_ALL": "C.UTF-8",
               "PATH": "/usr/local/bin:/usr/bin:/bin", **(extra_env or {})}
        return subprocess.run(["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--init-groups",
                               str(self.venv / "bin" / "python"), "-m", "qemuprov", *args],
                              env=env, cwd=self.home, capture_output=True, text=True, timeout=timeout, check=False)

    def give(self, path: Path) -> Path:
        """Hand a file or tree to the user (git refuses a repository owned by someone else)."""
        subprocess.run(["chown", "-R", f"{self.uid}:{self.uid}", str(path)], check=True)
        return path


@pytest.fixture(scope="session")
def normal_user() -> Iterator[NormalUser]:
    venv = Path(os.environ.get("QEMUPROV_TEST_USER_VENV", FIXTURES / "user-venv"))
    found = subprocess.run(["id", "-u", "qemuprov-test"], capture_output=True, text=True)
    if found.returncode != 0 or not (venv / "bin" / "python").exists():
        pytest.fail("the normal user qemuprov-test or its venv is missing: run scripts/test, which makes them")
    uid = int(found.stdout)
    home = Path(f"/home/qemuprov-test/run-{os.getpid()}")
    for d in (home, home / "tmp"):
        d.mkdir(parents=True, exist_ok=True)
    subprocess.run(["chown", "-R", f"{uid}:{uid}", str(home)], check=True)
    yield NormalUser("qemuprov-test", uid, home, venv)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def engine() -> str:
    """The Docker engine scripts/test started (DOCKER_HOST); a missing engine fails, it never skips."""
    host = os.environ.get("DOCKER_HOST", "")
    probe = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"no Docker engine at DOCKER_HOST={host!r}: run scripts/test, which starts one "
                    f"({probe.stderr.strip()[:200]})")
    return host


@pytest.fixture(scope="session")
def dax_daemon(qenv: Env, engine: str) -> Built:
    """qemuprov's DAX patch on the Rust virtiofsd 1.14.0 (shipped virtiofsd-dax), built offline against Debian sid's
    crates in the sid-crates builder: the daemon of the shared memory route."""
    recipe = (f'extends = "virtiofsd-dax"\n[virtiofsd]\ngit = "file://{VIRTIOFSD_14_TREE}"\nref = "v1.14.0-debian"\n'
              'builder = "debian-sid-crates"\ncrates = "debian"\n')
    return qenv.build_fresh("fixture-virtiofsd-dax", "docker", recipe, (VIRTIOFSD_14_TREE,))


def checkout_wheel(into: Path) -> Path:
    """A wheel of this checkout, for a userland that installs qemuprov as users do."""
    made = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(into), str(REPO)],
                          capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    return next(into.glob("*.whl"))
