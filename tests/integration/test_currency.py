"""Recipes that stay current and builds that can be repeated: `outdated` against real git repositories made
here (tags added and moved), and lock files on builds of the stand-in tree."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Env
from tests.integration.standin import make_tree, set_delays


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@localhost", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def _commit(repo: Path, message: str) -> str:
    _git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


def _qemuprov(recipes: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qemuprov", "--recipes", str(recipes), *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def releases(tmp_path: Path) -> tuple[Path, Path]:
    """A repository with releases v1.0.0, v1.0.1 and v1.1.0, a release candidate, an odd tag and a branch; and
    recipes that name them."""
    repo = tmp_path / "upstream"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    for tag in ("v1.0.0", "v1.0.1", "v1.1.0", "v1.2.0-rc1", "dax-2022-05-17-qemu7.0"):
        _commit(repo, tag)
        _git(repo, "tag", *(["-a", "-m", tag] if tag == "v1.1.0" else []), tag)  # annotated tags peel
    head = _git(repo, "rev-parse", "HEAD")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    data = b"a tarball\n"
    for name, qemu in (("old", f'git = "file://{repo}"\nref = "v1.0.0"'),
                       ("fresh", f'git = "file://{repo}"\nref = "v1.1.0"'),
                       ("branch", f'git = "file://{repo}"\nref = "main"\ncommit = "{head[:12]}"'),
                       ("down", 'git = "file:///nonexistent/qemu.git"\nref = "v1.0.0"'),
                       ("tarball", f'git = ""\ntarball = "file:///x.tar.xz"\n'
                                   f'sha256 = "{hashlib.sha256(data).hexdigest()}"')):
        (recipes / f"{name}.toml").write_text(f'format = 1\nname = "{name}"\nextends = "qemu-7.2"\n[qemu]\n{qemu}\n')
    return repo, recipes


def test_outdated_reports_series_and_newest(releases: tuple[Path, Path]) -> None:
    repo, recipes = releases
    result = _qemuprov(recipes, "outdated", "old", "fresh", "tarball", "branch", "--json")
    assert result.returncode == 3, result.stdout + result.stderr  # an upgrade is due
    by_name = {r["recipe"]: r for r in json.loads(result.stdout)}
    assert (by_name["old"]["series_newest"], by_name["old"]["newest"], by_name["old"]["status"]) == \
        ("v1.0.1", "v1.1.0", "outdated")
    assert (by_name["fresh"]["newest"], by_name["fresh"]["status"], by_name["fresh"]["due"]) == \
        ("v1.1.0", "current", False)  # the release candidate and the odd tag are no releases
    assert by_name["tarball"]["status"] == "not checkable" and by_name["branch"]["status"] == "branch"
    _commit(repo, "the branch moves on")
    moved = json.loads(_qemuprov(recipes, "outdated", "branch", "--json").stdout)[0]
    assert moved["status"] == "moved" and moved["due"] is True


def test_outdated_exit_codes_and_an_unreachable_remote(releases: tuple[Path, Path]) -> None:
    _, recipes = releases
    assert _qemuprov(recipes, "outdated", "fresh").returncode == 0
    down = _qemuprov(recipes, "outdated", "down", "fresh")
    assert down.returncode == 1 and "Traceback" not in down.stderr
    lines = [ln for ln in down.stdout.splitlines() if ln.startswith("down ")]
    assert len(lines) == 1 and "unreachable" in lines[0] and "does not appear to be a git repository" in lines[0]
    assert any(ln.startswith("fresh ") and "current" in ln for ln in down.stdout.splitlines())
    assert _qemuprov(recipes, "outdated", "no-such-recipe").returncode == 2


def test_a_lock_keeps_a_build_on_its_commit(qenv: Env, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    body = make_tree(tree, tmp_path / "control")
    set_delays(tmp_path / "control")
    qenv.write_recipe("standin-lock", body)
    first = _git(tree, "rev-parse", "HEAD")
    locked = qenv.run("lock", "standin-lock")
    assert locked.returncode == 0, locked.stderr
    lock_file = qenv.recipes / "standin-lock.lock"
    assert f'commit = "{first}"' in lock_file.read_text()

    second = _commit(tree, "a fix")
    _git(tree, "tag", "-f", "v7.2-standin")  # the tag moves after locking
    built = qenv.run("build", "standin-lock", "--runner", "host", "--force")
    assert built.returncode == 0, built.stdout + built.stderr
    assert f"locked at {first[:12]}" in built.stderr
    manifest = json.loads((qenv.root / "standin-lock" / "qemuprov.json").read_text())
    assert manifest["source"]["commit"] == first and manifest["lock"] == str(lock_file)

    moved = qenv.run("build", "standin-lock", "--runner", "host", "--force", "--update-lock")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert f'commit = "{second}"' in lock_file.read_text()
    assert json.loads((qenv.root / "standin-lock" / "qemuprov.json").read_text())["source"]["commit"] == second

    qenv.write_recipe("standin-lock", body.replace('ref = "v7.2-standin"', 'ref = "main"'))
    changed = qenv.run("build", "standin-lock", "--runner", "host")
    assert changed.returncode == 2 and "but the recipe now names main of" in changed.stderr
    assert "qemuprov lock standin-lock" in changed.stderr and "Traceback" not in changed.stderr
    qenv.write_recipe("standin-lock", body)


def test_a_locked_commit_that_is_gone_is_one_clear_line(qenv: Env, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    body = make_tree(tree, tmp_path / "control")
    set_delays(tmp_path / "control")
    qenv.write_recipe("standin-gone", body)
    fresh_cache = {**qenv.vars, "QEMUPROV_CACHE": str(tmp_path / "cache")}  # no mirror holds the commit
    assert qenv.run("lock", "standin-gone", env=fresh_cache).returncode == 0
    _git(tree, "commit", "-q", "--amend", "-m", "history rewritten")
    _git(tree, "tag", "-f", "v7.2-standin")
    _git(tree, "reflog", "expire", "--expire=now", "--all")
    _git(tree, "gc", "-q", "--prune=now")
    gone = qenv.run("build", "standin-gone", "--runner", "host", env={**qenv.vars,
                                                                      "QEMUPROV_CACHE": str(tmp_path / "cache2")})
    assert gone.returncode == 2, gone.stdout + gone.stderr
    assert "the locked commit" in gone.stderr and "is gone" in gone.stderr and "Traceback" not in gone.stderr
