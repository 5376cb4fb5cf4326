"""`qemuprov build --cache` against the hostile registry, from the command line, over a previous install: the
exit code and the message of each case, nothing outside staging changed, and the previous install still works.
With --cache-only a refused entry fails (exit 1, the reason in the JSON) without building; without it, the
build follows the notice. A substituted install records the key qemuprov looked up and its own resolution, never
the entry's word, and cannot be pushed on."""

from __future__ import annotations

import json
import socket
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from qemuprov.ci import binary_cache
from tests.hostile import PASSWORD, Hostile, Member, archive, docker_config, running
from tests.integration.conftest import Env
from tests.integration.standin import make_tree, set_delays

RECIPE = "standin-hostile"


@pytest.fixture(scope="module")
def previous(qenv: Env, engine: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Env, str]:
    """A module of its own (cache, root, recipe), with an install built on the host to keep."""
    base = tmp_path_factory.mktemp("hostile-cli")
    control = base / "cache" / "work" / RECIPE / "control"
    env = Env(qenv.home, base / "root", qenv.recipes, {**qenv.vars, "QEMUPROV_CACHE": str(base / "cache"),
                                                       "QEMUPROV_ROOT": str(base / "root")})
    env.write_recipe(RECIPE, make_tree(base / "tree", control))
    set_delays(control)
    first = env.run("build", RECIPE, "--runner", "host")
    assert first.returncode == 0, first.stdout + first.stderr
    return env, (env.root / RECIPE / "qemuprov.json").read_text()


@pytest.fixture()
def hostile(tmp_path: Path) -> Iterator[Hostile]:
    with running() as server:
        yield server


def _run(env: Env, hostile: Hostile, tmp_path: Path, *extra: str, url: str | None = None,
         **more: str) -> subprocess.CompletedProcess[str]:
    pub = tmp_path / "trusted.pub"
    pub.write_bytes(hostile.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    variables = {**env.vars, "DOCKER_CONFIG": docker_config(tmp_path / "docker", hostile.url),
                 "QEMUPROV_TRUSTED_KEYS": str(pub), **more}
    return env.run("build", RECIPE, "--runner", "docker", "--cache", url or f"{hostile.url}/qemuprov/cache", *extra,
                   env=variables)


def _previous_works(env: Env, manifest: str) -> None:
    prefix = env.root / RECIPE
    assert (prefix / "qemuprov.json").read_text() == manifest
    version = subprocess.run([prefix / "bin" / "qemu-system-x86_64", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "QEMU emulator version" in version.stdout
    assert [p.name for p in env.root.glob(".qemuprov-*")] == []


def _config(env: Env, **changes: object) -> bytes:
    record = json.loads((env.root / RECIPE / "qemuprov.json").read_text())
    return json.dumps({**record, **changes}).encode()


def _install_layer(env: Env) -> bytes:
    return binary_cache._layer(env.root / RECIPE)


def test_a_layer_that_writes_outside_fails_a_cache_only_build(previous: tuple[Env, str], hostile: Hostile,
                                                              tmp_path: Path) -> None:
    env, manifest = previous
    victim = tmp_path / "victim"
    victim.write_text("the user's file\n")
    hostile.entry(_config(env), archive([Member("bin", tarfile.DIRTYPE, mode=0o755),
                                         Member("bin/qemu-system-x86_64", tarfile.LNKTYPE, linkname=str(victim)),
                                         Member("bin/qemu-system-x86_64", data=b"#!/bin/sh\necho pwned\n")]))
    result = _run(env, hostile, tmp_path, "--cache-only", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    answer = json.loads(result.stdout)
    assert answer["reason"] == "refused" and "no earlier file" in answer["error"] and "nothing was built" in \
        answer["error"]
    assert "==> configure" not in result.stderr and "Traceback" not in result.stderr
    assert victim.read_text() == "the user's file\n"
    _previous_works(env, manifest)


@pytest.mark.parametrize("case", ["no-entry", "unreachable"])
def test_cache_only_says_why_nothing_came(previous: tuple[Env, str], hostile: Hostile, tmp_path: Path,
                                          case: str) -> None:
    env, manifest = previous
    url = None
    if case == "unreachable":
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            url = f"127.0.0.1:{closed.getsockname()[1]}/qemuprov/down"
    result = _run(env, hostile, tmp_path, "--cache-only", "--json", url=url)
    assert result.returncode == 1 and json.loads(result.stdout)["reason"] == case, result.stdout + result.stderr
    assert "--cache-only:" in result.stderr and "==> configure" not in result.stderr
    _previous_works(env, manifest)


@pytest.mark.parametrize("answer", ["list", "500"])
def test_a_malformed_answer_is_a_notice_then_the_build(previous: tuple[Env, str], hostile: Hostile,
                                                       tmp_path: Path, answer: str) -> None:
    env, manifest = previous
    if answer == "list":
        hostile.manifest = ["not", "a", "manifest"]
    else:
        from tests.hostile import Reply
        hostile.routes.append(lambda seen: Reply(500, b"internal"))
    result = _run(env, hostile, tmp_path, "--prefix", str(tmp_path / "built"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "refused the entry" in result.stderr and "--no-cache" in result.stderr, result.stderr
    assert "==> build:" in result.stderr and "internal error" not in result.stderr  # it built
    _previous_works(env, manifest)


def test_an_entry_that_fails_its_probe_names_no_cache(previous: tuple[Env, str], hostile: Hostile,
                                                      tmp_path: Path) -> None:
    env, manifest = previous
    hostile.entry(_config(env), archive([Member("bin", tarfile.DIRTYPE, mode=0o755),
                                         Member("bin/qemu-system-x86_64", data=b"#!/bin/sh\nexit 1\n", mode=0o755),
                                         Member("bin/virtiofsd", data=b"#!/bin/sh\nexit 1\n", mode=0o755)]))
    result = _run(env, hostile, tmp_path)
    assert result.returncode == 1 and "from the binary cache does not deliver" in result.stderr, result.stderr
    assert "--no-cache" in result.stderr
    _previous_works(env, manifest)


def test_a_pulled_install_keeps_the_key_looked_up_not_the_entrys_word(previous: tuple[Env, str],
                                                                       hostile: Hostile, tmp_path: Path) -> None:
    env, _ = previous
    real = json.loads((env.root / RECIPE / "qemuprov.json").read_text())["source"]
    forged = {**real, "url": "https://evil.example/qemu.git", "commit": "e" * 40}
    claimed = {"arch": "x86_64", "ok": True, "seconds": 1.0, "accel": "kvm", "message": "forged"}  # well formed
    hostile.entry(_config(env, cache_key="f" * 64, verify=[claimed], source=forged, runner="docker"),
                  _install_layer(env))
    prefix = tmp_path / "pulled"
    result = _run(env, hostile, tmp_path, "--prefix", str(prefix))
    assert result.returncode == 0 and "from the binary cache" in result.stdout, result.stdout + result.stderr
    record = json.loads((prefix / "qemuprov.json").read_text())
    looked_up = next(s.path.rsplit("/", 1)[1] for s in hostile.seen if "/manifests/" in s.path)
    assert record["cache_key"] == looked_up == record["substituted"]["tag"] != "f" * 64
    assert record["verify"] is None and record["source"]["commit"] != "e" * 40
    assert "probe against [expect]" in record["substituted"]["checked_here"]
    pushed = env.run("push", str(prefix), f"{hostile.url}/qemuprov/again",
                     env={**env.vars, "DOCKER_CONFIG": docker_config(tmp_path / "docker", hostile.url)})
    assert pushed.returncode == 2 and "not built here" in pushed.stderr, pushed.stderr
    assert not [s for s in hostile.seen if s.method in ("PUT", "POST")]


def test_a_password_in_the_cache_url_is_refused_and_never_printed(previous: tuple[Env, str], hostile: Hostile,
                                                                  tmp_path: Path) -> None:
    env, manifest = previous
    result = _run(env, hostile, tmp_path, url=f"http://ci:{PASSWORD}@{hostile.url}/qemuprov/cache")
    assert result.returncode == 2 and "docker login" in result.stderr, result.stderr
    assert PASSWORD not in result.stdout + result.stderr and hostile.seen == []
    _previous_works(env, manifest)
