"""What a careless or unlucky user (or a manifest someone sent) hands qemuprov: each is one line and exit 2, or
does what it says, and never deletes, runs or follows what it should not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.manifests import manifest_json


def _qemuprov(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "qemuprov", *args], capture_output=True, text=True, check=False,
                          timeout=60, cwd=cwd, env={**os.environ, **env})


def _one_line(result: subprocess.CompletedProcess[str], words: str, code: int = 2) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("qemuprov: error: ")]
    assert len(errors) == 1 and words in errors[0], result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr


def _install(root: Path, name: str = "q", **changes: object) -> Path:
    prefix = root / name
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "qemu-system-x86_64").write_text("#!/bin/sh\n")
    (prefix / "qemuprov.json").write_text(manifest_json(name=name, prefix=str(prefix), **changes))
    return prefix


# -- 9. a directory qemuprov did not install -------------------------------------------------------------------


def test_build_prefix_with_a_copied_manifest_is_refused_and_nothing_deleted(tmp_path: Path) -> None:
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work\n")
    (mine / "qemuprov.json").write_text(manifest_json(prefix=str(mine)))  # copied from an install, or crafted
    _one_line(_qemuprov("build", "qemu-7.2", "--prefix", str(mine), "--runner", "host"), "not a qemuprov install",
              2)
    assert (mine / "chapter1.tex").read_text() == "years of work\n"
    removed = _qemuprov("remove", str(mine))
    _one_line(removed, "qemuprov did not install there")
    assert (mine / "chapter1.tex").exists()


# -- 10. nothing printed for eval can run ----------------------------------------------------------------------


def test_env_prints_nothing_a_shell_would_run_from_a_hostile_manifest(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    payload = f"x\ntouch {marker}\n#"
    probe = {"kind": "qemu", "path": str(tmp_path / "root" / "q" / "bin" / "qemu-system-x86_64"), "arch": payload,
             "version": f"7.2\n$(touch {marker})", "dax": True, "error": None}
    prefix = _install(tmp_path / "root", probe=[probe], firmware=[f"/usr/share/x\ntouch {marker}"])
    for args in (["env", "q"], ["env", "q", "--osv"], ["env", str(prefix), "--osv", "--dax-size", "64M"]):
        result = _qemuprov(*args, QEMUPROV_ROOT=str(tmp_path / "root"))
        if "--osv" in args:  # the firmware directory would split on run.py's --pass-args: refused, nothing printed
            _one_line(result, "cannot go on run.py's --pass-args")
            assert result.stdout == ""
            continue
        assert result.returncode == 0, result.stderr
        for line in result.stdout.splitlines():
            assert line.startswith(("export PATH=", "#")), line
            assert not any(ord(c) < 32 for c in line), repr(line)
        subprocess.run(["bash", "-c", result.stdout], check=True, cwd=tmp_path)
        assert not marker.exists(), f"eval of `qemuprov {' '.join(args)}` ran a command"


# -- 11. remove ---------------------------------------------------------------------------------------------------


def test_remove_dotdot_from_inside_bin_removes_the_install_whole(tmp_path: Path) -> None:
    prefix = _install(tmp_path / "root")
    result = _qemuprov("remove", "..", cwd=prefix / "bin", QEMUPROV_ROOT=str(tmp_path / "root"))
    assert result.returncode == 0 and f"removed q ({prefix})" in result.stdout, result.stderr
    assert not prefix.exists() and list((tmp_path / "root").iterdir()) == []


def test_two_removes_at_once_remove_once_and_say_so(tmp_path: Path) -> None:
    import os

    prefix = _install(tmp_path / "root")
    for i in range(200):  # enough files that the two overlap
        (prefix / "bin" / f"f{i}").write_text("x")
    env = {**os.environ, "QEMUPROV_ROOT": str(tmp_path / "root")}
    both = [subprocess.Popen([sys.executable, "-m", "qemuprov", "remove", "q"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=60), *p.communicate()) for p in both]
    assert sorted(code for code, _, _ in results) == [0, 2], results
    assert not prefix.exists()
    for _, _, err in results:
        assert "untouched" not in err and "Traceback" not in err


# -- 12. lock files -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("commit", "words"), [('"main"', "qemu.commit: 'main' is not a full commit id"),
                                               ('"zz"', "qemu.commit: 'zz' is not a full commit id"),
                                               ("5", "qemu.commit: '5' is not a full commit id")])
def test_a_lock_file_names_commits_only(tmp_path: Path, commit: str, words: str) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "mine.toml").write_text('format = 1\nname = "mine"\nextends = "qemu-7.2"\n'
                                       '[qemu]\ngit = "file:///nonexistent/qemu"\nref = "v7.2.0"\n')
    (recipes / "mine.lock").write_text(f'format = 1\nrecipe = "mine"\n[qemu]\ngit = "file:///nonexistent/qemu"\n'
                                       f'ref = "v7.2.0"\ncommit = {commit}\n')
    _one_line(_qemuprov("--recipes", str(recipes), "build", "mine", "--runner", "host"), words)


# -- 13. config.toml ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "words"), [('[cache]\ntrusted_keys = "/path/key.pub"\n', "[cache] trusted_keys must"),
                                             ("[cache]\nurl = 5\n", "[cache] url must be a registry"),
                                             ('[cache]\nurl = "127.0.0.1:5000/q"\nallow_unsigned = "true"\n',
                                              "[cache] allow_unsigned must be true or false"),
                                             ('[limits]\nunpack = 5\n', "[limits] unpack must be a size")])
def test_config_values_of_the_wrong_type_are_named(isolated_home: Path, body: str, words: str) -> None:
    config = isolated_home / ".config" / "qemuprov" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(body)
    result = _qemuprov("build", "qemu-7.2", "--runner", "docker", "--cache-only", "--arch", "x86_64",
                       DOCKER_HOST="unix:///nonexistent.sock")
    if "[limits]" in body:
        from qemuprov.infra import unpack  # the setting is read where a tarball or layer is unpacked
        with pytest.raises(Exception, match=r"\[limits\] unpack must be a size"):
            unpack.limit()
        return
    _one_line(result, words)
    assert str(config) in result.stderr


# -- 14. smaller ones ----------------------------------------------------------------------------------------------


def test_push_with_a_host_build_is_refused_before_building() -> None:
    _one_line(_qemuprov("build", "qemu-7.2", "--runner", "host", "--cache", "127.0.0.1:1/q", "--push"),
              "--push: a host build never comes from or goes to a binary cache")


def test_cache_with_a_host_build_says_it_is_not_used(tmp_path: Path) -> None:
    result = _qemuprov("build", "nonexistent-recipe-for-this", "--runner", "host", "--cache", "127.0.0.1:1/q")
    assert result.returncode == 2  # the recipe is checked first; the note comes once the recipe is found
    result = _qemuprov("build", "qemu-7.2", "--runner", "host", "--cache", "127.0.0.1:1/q", "--prefix", "")
    _one_line(result, "--prefix: an empty directory name")


def test_image_tar_into_a_missing_directory_creates_nothing(tmp_path: Path) -> None:
    _install(tmp_path / "root")
    target = tmp_path / "nonexistent" / "x.tar.gz"
    _one_line(_qemuprov("image", "q", "--tar", str(target), QEMUPROV_ROOT=str(tmp_path / "root")),
              "is not a directory")
    assert not target.parent.exists()


def test_a_long_extends_chain_and_deep_nesting_are_one_line_each(tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    for i in range(1500):
        parent = f'extends = "c{i + 1}"\n' if i < 1499 else 'extends = "qemu-7.2"\n'
        (recipes / f"c{i}.toml").write_text(f'format = 1\nname = "c{i}"\n{parent}')
    _one_line(_qemuprov("--recipes", str(recipes), "show", "c0"), "a chain of more than 32 recipes")
    deep = tmp_path / "deep"
    deep.mkdir()
    (deep / "deep.toml").write_text('format = 1\nname = "deep"\nx = ' + "[" * 5000 + "]" * 5000 + "\n")
    (deep / "fine.toml").write_text('format = 1\nname = "fine"\nextends = "qemu-7.2"\n')
    _one_line(_qemuprov("--recipes", str(deep), "show", "deep"), "nested too deeply")
    listed = _qemuprov("--recipes", str(deep), "recipes")
    assert listed.returncode == 2 and "fine" in listed.stdout and "qemu-7.2" in listed.stdout, listed.stderr
    assert "nested too deeply" in listed.stderr and "Traceback" not in listed.stderr


def test_a_recipe_that_extends_itself_is_told_so(tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "selfish.toml").write_text('format = 1\nname = "selfish"\nextends = "selfish"\n')
    result = _qemuprov("--recipes", str(recipes), "show", "selfish")
    _one_line(result, "names this recipe itself")
    assert "did you mean" not in result.stderr


@pytest.mark.parametrize("args", [["show", "no-such-recipe", "--json"], ["verify", "no-such-install", "--json"],
                                  ["build", "qemu-7.2", "--json", "--arch", "sparc"]])
def test_errors_under_json_are_json_on_stdout(args: list[str]) -> None:
    result = _qemuprov(*args)
    assert result.returncode == 2, result.stderr
    answer = json.loads(result.stdout)
    assert answer["exit_code"] == 2 and answer["error"] and "qemuprov: error:" in result.stderr


# -- 6. a child that prints without end ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["virtiofsd", "qemu-system-x86_64"])
def test_probe_of_a_binary_that_prints_without_end_stays_small(tmp_path: Path, name: str) -> None:
    import resource

    fake = tmp_path / name
    fake.write_text("#!/bin/sh\nexec yes 'virtiofsd backend 1.10 -o source=PATH --shared-dir'\n")
    fake.chmod(0o755)

    def small() -> None:  # far below what the output would grow to in the probe's time limit
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    result = subprocess.run([sys.executable, "-m", "qemuprov", "probe", str(fake), "--json"], capture_output=True,
                            text=True, timeout=120, preexec_fn=small, check=False)
    assert result.returncode == 2, result.stderr
    (found,) = json.loads(result.stdout)
    assert "printed more than 8 MiB and was stopped" in found["error"], found


def test_list_of_a_hostile_manifest_prints_no_terminal_escapes(tmp_path: Path) -> None:
    probe = {"kind": "qemu", "path": "/x", "arch": "x86_64\x1b]0;owned\x07", "version": "7.2\x1b[2J", "dax": False,
             "error": None}
    _install(tmp_path / "root", name="q", probe=[probe])
    listed = _qemuprov("list", QEMUPROV_ROOT=str(tmp_path / "root"))
    assert listed.returncode == 0 and "\x1b" not in listed.stdout and "\x07" not in listed.stdout, listed.stdout


# -- 14. files that would never end: FIFOs, devices, giants -------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "zero", "giant"])
def test_a_manifest_config_or_docker_config_that_never_ends_hangs_nothing(isolated_home: Path, tmp_path: Path,
                                                                          kind: str) -> None:
    import os

    def plant(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "zero":
            path.symlink_to("/dev/zero")
        else:
            with path.open("wb") as out:
                out.truncate(64 << 20)  # sparse: 64 MiB of zeros for the price of nothing

    root = tmp_path / "root"
    plant(root / "q" / "qemuprov.json")
    listed = _qemuprov("list", "--json", QEMUPROV_ROOT=str(root))  # each within _qemuprov's 60 s
    assert "not a regular file" in json.loads(listed.stdout)[0]["damaged"] or kind == "giant", listed.stdout
    assert json.loads(listed.stdout)[0]["damaged"], listed.stdout
    for args in (["env", "q"], ["remove", "q"]):  # a damaged install: each says so, in one line
        result = _qemuprov(*args, QEMUPROV_ROOT=str(root))
        assert result.returncode in (0, 1, 2), result.stderr
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    config = isolated_home / ".config" / "qemuprov" / "config.toml"
    plant(config)
    _one_line(_qemuprov("build", "qemu-7.2", "--runner", "host", "--cache-only"), "config.toml: cannot read it")
    config.unlink()
    docker = tmp_path / "docker"
    plant(docker / "config.json")
    result = _qemuprov("build", "qemu-7.2", "--runner", "docker", "--cache", "127.0.0.1:9/q", "--cache-only",
                       "--arch", "x86_64", DOCKER_CONFIG=str(docker), DOCKER_HOST="unix:///nonexistent.sock")
    assert result.returncode in (1, 2) and "Traceback" not in result.stderr, result.stderr


# -- 15. which install is meant, and what its record may name -------------------------------------------------------


def test_two_installs_whose_records_say_the_same_name_are_told_apart(tmp_path: Path) -> None:
    root = tmp_path / "root"
    moved = _install(root, "qemu-7.2")
    moved.rename(root / "old-qemu-7.2")  # `mv qemu-7.2 old-qemu-7.2`, then a rebuild
    _install(root, "qemu-7.2")
    listed = json.loads(_qemuprov("list", "--json", QEMUPROV_ROOT=str(root)).stdout)
    assert sorted(e["name"] for e in listed) == ["old-qemu-7.2", "qemu-7.2"], listed
    removed = _qemuprov("remove", "qemu-7.2", QEMUPROV_ROOT=str(root))
    assert removed.returncode == 0 and f"({root / 'qemu-7.2'})" in removed.stdout, removed.stdout + removed.stderr
    assert (root / "old-qemu-7.2" / "qemuprov.json").exists()


def test_a_name_two_prefixes_answer_to_is_refused_with_both(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _install(root, "q")
    elsewhere = _install(tmp_path / "elsewhere", "q")
    (root / "prefixes.json").write_text(json.dumps([str(elsewhere)]))
    _one_line(_qemuprov("remove", "q", QEMUPROV_ROOT=str(root)), '"q" names 2 installs')
    assert (root / "q").exists() and elsewhere.exists()


def test_a_registered_prefix_that_became_a_link_is_not_followed_by_remove(tmp_path: Path) -> None:
    root = tmp_path / "root"
    documents = tmp_path / "Documents"
    documents.mkdir()
    (documents / "thesis.tex").write_text("years of work\n")
    (documents / "qemuprov.json").write_text(manifest_json(name="q", prefix=str(tmp_path / "q")))
    prefix = tmp_path / "q"
    prefix.symlink_to(documents)  # the prefix, registered when it was a real install, is now a link
    root.mkdir()
    (root / "prefixes.json").write_text(json.dumps([str(prefix)]))
    _one_line(_qemuprov("remove", str(prefix), QEMUPROV_ROOT=str(root)), "is now a symbolic link")
    assert (documents / "thesis.tex").read_text() == "years of work\n"


def test_env_libvirt_names_the_prefixes_own_daemon_and_osv_refuses_split_firmware(tmp_path: Path) -> None:
    probe = {"kind": "virtiofsd", "path": "/usr/local/bin/evil-daemon", "flavour": "rust", "version": "1.13",
             "error": None}
    qemu = {"kind": "qemu", "path": str(tmp_path / "root" / "q" / "bin" / "qemu-system-x86_64"), "arch": "x86_64",
            "version": "7.2.0", "dax": False, "error": None, "vhost_user_fs": True}
    prefix = _install(tmp_path / "root", probe=[qemu, probe], firmware=["/usr/share/qemu -netdev tap,script=/x"])
    libvirt = _qemuprov("env", "q", "--libvirt", "--arch", "x86_64", QEMUPROV_ROOT=str(tmp_path / "root"))
    assert libvirt.returncode == 0, libvirt.stderr
    assert "evil-daemon" not in libvirt.stdout and f"<binary path=\"{prefix}/bin/virtiofsd\"" in libvirt.stdout
    _one_line(_qemuprov("env", "q", "--osv", QEMUPROV_ROOT=str(tmp_path / "root")), "cannot go on run.py's --pass-args")


def test_characters_xml_cannot_hold_and_terminal_controls_never_reach_the_output(tmp_path: Path) -> None:
    qemu = {"kind": "qemu", "path": str(tmp_path / "root" / "q" / "bin" / "qemu-system-x86_64"), "arch": "x86_64",
            "version": "7.2.0", "dax": False, "error": None, "vhost_user_fs": True}
    daemon = {"kind": "virtiofsd", "path": "/x", "flavour": "rust", "version": "1.13", "error": None}
    _install(tmp_path / "root", probe=[qemu, daemon], firmware=["/usr/share/qemu\x1b[2J\x0b"])
    result = _qemuprov("env", "q", "--libvirt", "--arch", "x86_64", "--share", str(tmp_path / "s\x01"),
                       QEMUPROV_ROOT=str(tmp_path / "root"))
    _one_line(result, "which an XML document (libvirt's domain) cannot hold")
    assert "\x1b" not in result.stderr + result.stdout and "\x01" not in result.stderr
    planted = _install(tmp_path / "root2", "q\u202egnp.exe")
    listed = _qemuprov("list", QEMUPROV_ROOT=str(tmp_path / "root2"))
    assert "\u202e" not in listed.stdout and "\\u202e" in listed.stdout, listed.stdout
    missing = _qemuprov("env", "no\x1b[31msuch", QEMUPROV_ROOT=str(tmp_path / "root2"))
    assert "\x1b" not in missing.stderr and missing.returncode == 2
    assert planted.exists()
