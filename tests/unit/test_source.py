"""Source fetching against small local git repositories and tarballs (real git, real tar)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from qemuprov.errors import UserError
from qemuprov.recipe import Source
from qemuprov.sources import trees


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "upstream"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "VERSION").write_text("7.2.0\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "one")
    git(path, "tag", "-a", "v1", "-m", "v1")
    (path / "VERSION").write_text("7.2.1\n")
    git(path, "commit", "-qam", "two")
    return path


def test_tag_and_branch_resolve_to_their_commits(repo: Path, tmp_path: Path) -> None:
    url = f"file://{repo}"
    tagged = trees.fetch(Source(git=url, ref="v1"), tmp_path / "a")
    assert tagged.commit == git(repo, "rev-parse", "v1^{commit}")
    assert (tmp_path / "a" / "VERSION").read_text() == "7.2.0\n"
    branch = trees.fetch(Source(git=url, ref="main"), tmp_path / "b")
    assert branch.commit == git(repo, "rev-parse", "main")
    assert not (tmp_path / "b" / ".git").exists()


def test_commit_pin_is_verified(repo: Path, tmp_path: Path) -> None:
    url = f"file://{repo}"
    with pytest.raises(UserError, match="qemu.commit: main is now .* but the recipe pins 0{40}"):
        trees.fetch(Source(git=url, ref="main", commit="0" * 40), tmp_path / "c")
    pinned = git(repo, "rev-parse", "main")
    assert trees.fetch(Source(git=url, ref="main", commit=pinned), tmp_path / "d").commit == pinned


def test_tarball_checked_and_unpacked(tmp_path: Path) -> None:
    tree = tmp_path / "qemu-7.2.0"
    tree.mkdir()
    (tree / "VERSION").write_text("7.2.0\n")
    archive = tmp_path / "qemu-7.2.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=tree.name)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    fetched = trees.fetch(Source(tarball=f"file://{archive}", sha256=digest), tmp_path / "src")
    assert (tmp_path / "src" / "VERSION").read_text() == "7.2.0\n" and fetched.sha256 == digest
    with pytest.raises(UserError, match=f"qemu.sha256: .* has sha256 {digest}, the recipe says 1{{64}}"):
        trees.fetch(Source(tarball=f"file://{archive}", sha256="1" * 64), tmp_path / "src2")


def test_a_mirror_init_left_by_a_killed_fetch_is_removed(tmp_path: Path) -> None:
    from qemuprov.sources.trees import _remove_abandoned_inits

    dead, alive, old = tmp_path / ".init-999999999-abc", tmp_path / f".init-{os.getpid()}-def", tmp_path / ".init-x1"
    for d in (dead, alive, old):
        (d / "objects").mkdir(parents=True)
    _remove_abandoned_inits(tmp_path)
    assert sorted(p.name for p in tmp_path.glob(".init-*")) == [alive.name]
