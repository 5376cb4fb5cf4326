"""The workspace owns every path of a build: staged and final both ways, a pulled entry's paths re-based, the
staging made and always removed, the log made with its latest link, and the same names the cleanup matches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qemuprov.building.workspace import Workspace
from qemuprov.infra import paths


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.setenv("QEMUPROV_CACHE", str(tmp_path / "cache"))
    return Workspace.of("qemu-9.2", tmp_path / "installs" / "qemu-9.2")


def test_staged_and_final_both_ways(ws: Workspace) -> None:
    with ws.begun():
        ws.tree_prefix = Path("/opt/qemuprov/prefix")
        assert ws.staged == ws.staging / "opt" / "qemuprov" / "prefix"
        binary = ws.staged / "bin" / "qemu-system-x86_64"
        assert ws.final(binary) == ws.prefix / "bin" / "qemu-system-x86_64"
        assert ws.staged_of(str(ws.final(binary))) == str(binary)
        assert ws.staged_of("/usr/share/seabios") == "/usr/share/seabios"  # not under the prefix: as is
        with pytest.raises(ValueError):
            ws.final(Path("/etc/passwd"))  # nothing outside the staged tree has a final path


def test_a_pulled_entry_is_rebased_and_nothing_else(ws: Workspace) -> None:
    built_at = Path("/home/ci/.local/share/qemuprov/installs/qemu-9.2")
    assert ws.rebased(f"{built_at}/share/qemu", built_at) == str(ws.prefix / "share" / "qemu")
    assert ws.rebased("/usr/share/qemu", built_at) == "/usr/share/qemu"
    assert ws.rebased(f"{built_at}-evil/x", built_at) == f"{built_at}-evil/x"  # a sibling is not under it


def test_staging_and_log_are_made_here_and_the_staging_always_goes(ws: Workspace) -> None:
    with pytest.raises(RuntimeError), ws.begun():
        staging, log = ws.staging, ws.log_path
        assert staging.parent == ws.prefix.parent and staging.name.startswith(".qemuprov-stage-")
        assert staging.stat().st_mode & 0o077 == 0
        assert log.parent == ws.root / "logs" and log.name.startswith("build-")
        assert (ws.root / "build.log").resolve() == log
        raise RuntimeError("the build failed")
    assert not staging.exists() and log.exists()


def test_cleanup_matches_what_the_workspace_makes(ws: Workspace) -> None:
    """A staging left by a build that died carries that build's pid; cleanup takes it, and keeps a live one."""
    with ws.begun():
        live = ws.staging
        dead = Path(str(live).replace(f"-{os.getpid()}", f"-{2 ** 22 + 7}"))
        assert dead != live
        dead.mkdir()
        ws.clean_up_after_killed_builds()
        assert live.exists() and not dead.exists()
    assert not any(p.name.startswith(".qemuprov-") for p in ws.prefix.parent.iterdir())


def test_fetch_stamps_only_a_whole_tree(ws: Workspace) -> None:
    assert ws.tree("qemu") == ws.root / "src" and ws.tree("virtiofsd") == ws.root / "virtiofsd-src"
    assert ws.build_dir(None, "bookworm").name == "build"
    assert ws.build_dir("docker", "bookworm").name == "build-docker-bookworm"
    assert paths.SIDE_KINDS == ("stage", "new", "old", "remove")


def test_a_tree_is_patched_after_the_fetch_and_fetched_again_when_a_patch_changes(
        ws: Workspace, tmp_path: Path) -> None:
    import io
    import subprocess

    from qemuprov.infra.progress import Reporter
    from qemuprov.recipe import Layer, RecipeBook
    from qemuprov.sources import trees

    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "hello.txt").write_text("hello\n")
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t",
                                                                 "commit", "-qm", "one"], ["tag", "v1"]):
        subprocess.run(["git", "-C", str(origin), *argv], check=True)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    patch = recipes / "hi.patch"
    patch.write_text("--- a/hello.txt\n+++ b/hello.txt\n@@ -1 +1 @@\n-hello\n+hi\n")
    (recipes / "p.toml").write_text(f'format = 1\nname = "p"\nbuilder = "debian-trixie"\n[virtiofsd]\n'
                                    f'source = "rust"\ngit = "file://{origin}"\nref = "v1"\npatches = ["hi.patch"]\n')
    recipe = RecipeBook([Layer("t", recipes)]).load("p")
    tree = recipe.sources()["virtiofsd"]
    src = ws.fetch("virtiofsd", recipe, trees.resolve(tree, "virtiofsd"), Reporter(io.StringIO()))
    assert (src / "hello.txt").read_text() == "hi\n"
    patch.write_text("--- a/hello.txt\n+++ b/hello.txt\n@@ -1 +1 @@\n-hello\n+howdy\n")
    recipe = RecipeBook([Layer("t", recipes)]).load("p")
    src = ws.fetch("virtiofsd", recipe, trees.resolve(tree, "virtiofsd"), Reporter(io.StringIO()))
    assert (src / "hello.txt").read_text() == "howdy\n"  # a fresh tree, not the first patch patched again
