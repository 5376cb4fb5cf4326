from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qemuprov.errors import UserError
from qemuprov.recipe import (
    Layer,
    RecipeBook,
    VirtiofsdFlavour,
    VirtiofsdSource,
    default_layers,
    valid_ref,
)
from tests.conftest import DATA

BROKEN = DATA / "recipes" / "broken"
GOOD = DATA / "recipes" / "good"

SHIPPED_NAMES = ["qemu-5.2", "qemu-7.2", "qemu-stable", "qemu-stable-dax", "virtio-fs-dev", "virtiofsd",
                 "virtiofsd-dax"]


def expected_error(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# error: "), f"{path} must start with '# error: <message>'"
    return first[len("# error: "):]


def book_with(*dirs: Path) -> RecipeBook:
    return RecipeBook(default_layers([str(d) for d in dirs]))


def test_shipped_recipes_load() -> None:
    recipes, errors = book_with().load_all()
    assert errors == []
    by_name = {r.name: r for r in recipes}
    assert sorted(by_name) == SHIPPED_NAMES
    dev = by_name["virtio-fs-dev"]
    assert dev.expect.dax is True
    assert dev.qemu.source.ref == "virtio-fs-dev"
    assert dev.expect.virtiofsd is VirtiofsdFlavour.C
    stable = by_name["qemu-stable"]
    assert stable.virtiofsd.source is VirtiofsdSource.RUST
    assert stable.virtiofsd.tree is not None and stable.virtiofsd.tree.ref == "v1.14.0"
    daemon = by_name["virtiofsd"]
    assert daemon.qemu is None and daemon.arches == () and daemon.expect.virtiofsd is VirtiofsdFlavour.RUST
    assert daemon.virtiofsd.tree == stable.virtiofsd.tree
    for recipe in recipes:
        assert recipe.origin == "shipped"
        if recipe.qemu:
            assert recipe.qemu.arches == ("x86_64", "aarch64")


@pytest.mark.parametrize("path", sorted(BROKEN.glob("*.toml")), ids=lambda p: p.stem)
def test_broken_recipe_gives_its_exact_error(path: Path) -> None:
    book = book_with(BROKEN)
    with pytest.raises(UserError) as caught:
        book.load(path.stem)
    assert caught.value.message == f"{path}: {expected_error(path)}"


def test_user_recipe_extends_shipped_and_keeps_the_rest() -> None:
    recipe = book_with(GOOD).load("my-qemu")
    assert recipe.qemu.source.git == "https://git.example.com/mirror/qemu.git"
    assert recipe.qemu.source.ref == "v7.2.0"
    assert recipe.builder == "debian-bookworm"
    assert recipe.expect.version == "7.2"
    assert recipe.extends == "qemu-7.2"
    # good/ also overrides qemu-7.2 itself, so the chain is shipped -> good/qemu-7.2 -> good/my-qemu.
    assert [Path(f).parent.name for f in recipe.chain] == ["recipes", "good", "good"]
    assert recipe.qemu.arches == ("x86_64",)


def test_recipe_extending_its_own_name_takes_the_lower_layer() -> None:
    recipe = book_with(GOOD).load("qemu-7.2")
    assert recipe.qemu.arches == ("x86_64",)
    assert recipe.qemu.source.git == "https://gitlab.com/qemu-project/qemu.git"
    assert recipe.origin == str(GOOD)


def test_user_config_dir_layer(isolated_home: Path) -> None:
    user_dir = isolated_home / ".config" / "qemuprov" / "recipes"
    user_dir.mkdir(parents=True)
    (user_dir / "mine.toml").write_text((GOOD / "my-qemu.toml").read_text().replace("my-qemu", "mine"))
    recipe = book_with().load("mine")
    assert recipe.origin == "user"


def test_env_layer_must_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QEMUPROV_RECIPES", str(tmp_path / "nope"))
    with pytest.raises(UserError, match="QEMUPROV_RECIPES: .* is not a directory"):
        default_layers()


def test_extends_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('format = 1\nname = "a"\nextends = "b"\n')
    (tmp_path / "b.toml").write_text('format = 1\nname = "b"\nextends = "a"\n')
    with pytest.raises(UserError, match="extends: forms a cycle"):
        RecipeBook([Layer("t", tmp_path)]).load("a")


def test_mirror_keeps_commit_pin_new_ref_drops_it(tmp_path: Path) -> None:
    pin = "a" * 40
    (tmp_path / "base.toml").write_text(
        'format = 1\nname = "base"\nbuilder = "debian-bookworm"\n[qemu]\n'
        f'git = "https://example.com/q.git"\nref = "v1"\ncommit = "{pin}"\narches = ["x86_64"]\n')
    (tmp_path / "mirror.toml").write_text(
        'format = 1\nname = "mirror"\nextends = "base"\n[qemu]\ngit = "file:///srv/q.git"\n')
    (tmp_path / "moved.toml").write_text(
        'format = 1\nname = "moved"\nextends = "base"\n[qemu]\nref = "v2"\n')
    book = RecipeBook([Layer("t", tmp_path)])
    assert book.load("mirror").qemu.source.commit == pin
    assert book.load("moved").qemu.source.commit is None


@pytest.mark.parametrize("ref,ok", [
    ("v7.2.0", True), ("virtio-fs-dev", True), ("refs/tags/v5.2.0", True), ("a" * 40, True),
    ("", False), ("-x", False), ("a..b", False), ("a b", False), ("x.lock", False), ("a:b", False),
    ("a/.b", False), ("HEAD~1", False), ("@", False), ("a//b", False),
])
def test_valid_ref(ref: str, ok: bool) -> None:
    assert valid_ref(ref) is ok


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qemuprov", *args], capture_output=True, text=True,
                          env=env, check=False)


@pytest.mark.parametrize("path", sorted(BROKEN.glob("*.toml"))[:6], ids=lambda p: p.stem)
def test_cli_broken_recipe_is_one_line_exit_2(path: Path) -> None:
    result = run_cli("--recipes", str(BROKEN), "show", path.stem)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("hint:")]
    assert lines == [f"qemuprov: error: {path}: {expected_error(path)}"]


def test_cli_recipes_json_parses() -> None:
    import json

    result = run_cli("recipes", "--json")
    assert result.returncode == 0, result.stderr
    names = [entry["name"] for entry in json.loads(result.stdout)]
    assert names == SHIPPED_NAMES


def test_cli_show_virtio_fs_dev() -> None:
    result = run_cli("show", "virtio-fs-dev")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for needle in ("https://gitlab.com/virtio-fs/qemu.git", "virtio-fs-dev", "x86_64, aarch64",
                   "dax=yes", "virtiofsd=c"):
        assert needle in out


def test_cli_show_daemon_only_recipe() -> None:
    result = run_cli("show", "virtiofsd")
    assert result.returncode == 0, result.stderr
    assert "none: this recipe builds virtiofsd alone" in result.stdout
    assert "rust from https://gitlab.com/virtio-fs/virtiofsd.git (v1.14.0)" in result.stdout
    assert "plan: cargo build of virtiofsd" in result.stdout


def test_cli_build_daemon_only_rejects_arch() -> None:
    result = run_cli("build", "virtiofsd", "--arch", "x86_64")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0] == ("qemuprov: error: --arch: virtiofsd builds no QEMU, only virtiofsd "
                                             "(which serves guests of any arch)")


def test_a_recipe_that_is_not_utf8_is_named_and_the_others_still_list(tmp_path: Path) -> None:
    (tmp_path / "latin1.toml").write_bytes(b'format = 1\nname = "latin1"\ndescription = "caf\xe9"\n')
    (tmp_path / "fine.toml").write_text('format = 1\nname = "fine"\nextends = "qemu-7.2"\n')
    recipes, errors = book_with(tmp_path).load_all()
    assert "fine" in {r.name for r in recipes}
    assert [e.message for e in errors] == [f"{tmp_path / 'latin1.toml'}: not UTF-8 text (byte 45 is 0xe9); "
                                           "save the file as UTF-8"]
    result = subprocess.run([sys.executable, "-m", "qemuprov", "--recipes", str(tmp_path), "show", "latin1"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "not UTF-8 text" in result.stderr and "Traceback" not in result.stderr


def test_patches_are_found_beside_the_recipe_then_shipped_and_keyed_by_their_bytes(tmp_path: Path) -> None:
    (tmp_path / "mine.patch").write_text("--- a/x\n+++ b/x\n")
    (tmp_path / "dax-mine.toml").write_text('format = 1\nname = "dax-mine"\nextends = "virtiofsd-dax"\n'
                                            '[virtiofsd]\npatches = ["virtiofsd-1.14.0-dax-window.patch", '
                                            '"mine.patch"]\n')
    recipe = book_with(tmp_path).load("dax-mine")
    shipped, mine = recipe.patches("virtiofsd")
    assert shipped.location.endswith("patches/virtiofsd-1.14.0-dax-window.patch")
    assert mine.location == str(tmp_path / "mine.patch") and len(mine.sha256) == 64
    inputs = recipe.build_inputs(of_the_bytes=True)["virtiofsd"]["patches"]
    assert inputs == [{"name": p.name, "sha256": p.sha256} for p in (shipped, mine)]  # where it lies is no input
    before = recipe.build_inputs(of_the_bytes=True)
    (tmp_path / "mine.patch").write_text("--- a/x\n+++ b/x\n@@ changed @@\n")
    assert book_with(tmp_path).load("dax-mine").build_inputs(of_the_bytes=True) != before


@pytest.mark.parametrize(("patches", "why"), [('["../escape.patch"]', 'is not a patch file name'),
                                              ('["/etc/passwd"]', 'is not a patch file name'),
                                              ('["a.patch", "a.patch"]', "names a patch twice"),
                                              ('["gone.patch"]', r'no patch file "gone.patch" \(looked in')])
def test_bad_patch_lists_are_one_line(tmp_path: Path, patches: str, why: str) -> None:
    (tmp_path / "a.patch").write_text("")
    (tmp_path / "bad.toml").write_text(f'format = 1\nname = "bad"\nextends = "virtiofsd"\n[virtiofsd]\n'
                                       f'patches = {patches}\n')
    with pytest.raises(UserError, match=f"bad.toml: virtiofsd.patches: .*{why}"):
        book_with(tmp_path).load("bad")


def test_patches_only_for_a_tree_qemuprov_builds(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('format = 1\nname = "c"\nextends = "qemu-7.2"\n[virtiofsd]\n'
                                     'source = "qemu"\npatches = ["x.patch"]\n')
    with pytest.raises(UserError, match='virtiofsd.patches: only for source = "rust"'):
        book_with(tmp_path).load("c")
