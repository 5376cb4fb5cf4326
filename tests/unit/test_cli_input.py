"""Bad arguments and unsafe places are refused before any work, in one line with exit 2; nothing is touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.manifests import manifest_json


def _qemuprov(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qemuprov", *args], capture_output=True, text=True, check=False,
                          timeout=60)


def _refused(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("qemuprov: error: ") and words in result.stderr.splitlines()[0]
    assert "Traceback" not in result.stderr and "==>" not in result.stderr


def test_prefix_holding_the_users_files_is_refused_and_left_alone(tmp_path: Path) -> None:
    prefix = tmp_path / "mine"
    (prefix / "docs").mkdir(parents=True)
    (prefix / "IMPORTANT.txt").write_text("keep me\n")
    _refused(_qemuprov("build", "qemu-7.2", "--prefix", str(prefix)), "not a qemuprov install")
    assert (prefix / "IMPORTANT.txt").read_text() == "keep me\n" and (prefix / "docs").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "mine"]  # no staging, nothing hidden beside it


def test_prefix_that_is_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("data\n")
    _refused(_qemuprov("build", "qemu-7.2", "--prefix", str(file)), "exists and is not a directory")
    assert file.read_text() == "data\n" and sorted(p.name for p in tmp_path.iterdir()) == ["file", "home"]


@pytest.mark.parametrize("where", ["/", "/usr/local", "/tmp", "HOME"])
def test_shared_directories_are_refused_as_prefix(where: str) -> None:
    prefix = os.environ["HOME"] if where == "HOME" else where
    _refused(_qemuprov("build", "qemu-7.2", "--prefix", prefix), "a shared directory")


@pytest.mark.parametrize("arch", ["", ",", "x86_64,", " "])
def test_empty_arches_are_refused(arch: str) -> None:
    _refused(_qemuprov("build", "qemu-7.2", "--arch", arch), "names an empty arch")


def test_a_reader_that_stops_early_is_no_error() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "qemuprov", "show", "qemu-7.2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `| head -1` having read all it wanted before qemuprov writes
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 141 and stderr == ""


def test_probe_takes_the_exit_status_of_what_it_runs(tmp_path: Path) -> None:
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text('#!/bin/sh\necho "QEMU emulator version 7.2.0"\nexit 1\n')
    fake.chmod(0o755)
    result = _qemuprov("probe", str(fake), "--json")
    assert result.returncode == 2
    assert "--version exited with status 1" in result.stdout


def test_a_probe_timeout_stops_the_whole_process_group(tmp_path: Path) -> None:
    from qemuprov.infra import procs

    marker = f"sleep 1{os.getpid() % 1000:03d}"
    result = procs.run(["sh", "-c", f"{marker} & {marker}; wait"], timeout=1)
    assert result.timed_out
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    assert left.stdout == "", f"grandchildren outlived the timeout: {left.stdout}"


def test_doctor_finds_virtiofsd_in_a_directory_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qemuprov.knowledge import probe

    (tmp_path / "usr-lib-virtiofsd").mkdir()
    daemon = tmp_path / "usr-lib-virtiofsd" / "virtiofsd"
    daemon.write_text("#!/bin/sh\n")
    daemon.chmod(0o755)
    monkeypatch.setattr(probe, "DISTRO_VIRTIOFSD", (str(tmp_path / "missing"), str(tmp_path / "usr-lib-virtiofsd")))
    assert probe.distro_virtiofsd() == [daemon]


@pytest.mark.parametrize(("content", "why"), [('{"format": 1, "name": "q", "pro', "is not valid JSON"),
                                              (manifest_json(probe="x"), "probe has the wrong type (str)"),
                                              (manifest_json(format=3), "format 3, but this qemuprov reads"),
                                              (manifest_json(binaries=None), "binaries is null"),
                                              ("[1, 2]", "holds no JSON object")])
def test_a_damaged_install_is_named_and_can_be_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       content: str, why: str) -> None:
    root = tmp_path / "root"
    (root / "q" / "bin").mkdir(parents=True)
    (root / "q" / "qemuprov.json").write_text(content)
    (root / "prefixes.json").write_text('{"not": "a list"}')
    monkeypatch.setenv("QEMUPROV_ROOT", str(root))
    listed = _qemuprov("list")
    assert listed.returncode == 0 and "DAMAGED" in listed.stdout and why in listed.stdout, listed.stderr
    env = _qemuprov("env", "q")
    assert env.returncode == 1 and f"the install q ({root / 'q'}) is damaged" in env.stderr
    assert "Traceback" not in env.stderr + listed.stderr
    doctor = json.loads(_qemuprov("doctor", "--json").stdout)
    assert any(c["what"] == "install q" and c["status"] == "FAIL" for c in doctor)
    removed = _qemuprov("remove", "q")
    assert removed.returncode == 0 and not (root / "q").exists()


def test_remove_deletes_only_what_qemuprov_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QEMUPROV_ROOT", str(tmp_path / "root"))
    stray = tmp_path / "work" / "notes"  # a directory of the user's, with a qemuprov.json copied into it
    stray.mkdir(parents=True)
    (stray / "qemuprov.json").write_text(manifest_json(prefix="/opt/somewhere-else"))
    (stray / "thesis.tex").write_text("years of work\n")
    refused = _qemuprov("remove", str(stray))
    assert refused.returncode == 2 and "qemuprov did not install there" in refused.stderr, refused.stderr
    assert (stray / "thesis.tex").exists()
    damaged = tmp_path / "work" / "other"
    damaged.mkdir()
    (damaged / "qemuprov.json").write_text("{")
    assert _qemuprov("remove", str(damaged)).returncode == 2 and damaged.exists()
    crafted = tmp_path / "work" / "crafted"  # a qemuprov.json that names its own directory proves nothing
    crafted.mkdir()
    (crafted / "qemuprov.json").write_text(manifest_json(prefix=str(crafted)))
    (crafted / "data.csv").write_text("keep\n")
    refused = _qemuprov("remove", str(crafted))
    assert refused.returncode == 2 and (crafted / "data.csv").exists(), refused.stderr
    own = tmp_path / "mine"  # an install made with --prefix: remembered in prefixes.json
    own.mkdir()
    (own / "qemuprov.json").write_text(manifest_json(prefix=str(own)))
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "prefixes.json").write_text(json.dumps([str(own)]))
    removed = _qemuprov("remove", str(own))
    assert removed.returncode == 0 and not own.exists(), removed.stderr


def test_a_cache_path_that_is_a_file_costs_a_note_not_the_probe(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    cache.write_text("not a directory\n")
    monkeypatch.setenv("QEMUPROV_CACHE", str(cache))
    fake = tmp_path / "virtiofsd"
    fake.write_text('#!/bin/sh\necho "usage: virtiofsd [options]"; echo "    -o source=PATH  shared directory"\n')
    fake.chmod(0o755)
    result = _qemuprov("probe", str(fake), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["flavour"] == "c" and "cannot keep the cache" in result.stderr


def test_recipes_option_after_the_command(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text('format = 1\nname = "mine"\nextends = "qemu-7.2"\n')
    before = _qemuprov("--recipes", str(tmp_path), "show", "mine")
    after = _qemuprov("show", "mine", "--recipes", str(tmp_path))
    assert before.returncode == after.returncode == 0 and before.stdout == after.stdout


def test_remove_unlinks_the_vhost_user_descriptor_linked_for_libvirt(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`env --libvirt` says how to link an install's descriptor where libvirt looks; remove takes the link away,
    and leaves every other descriptor there alone."""
    root, config = tmp_path / "root", tmp_path / "config"
    monkeypatch.setenv("QEMUPROV_ROOT", str(root))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    descriptors = root / "q" / "share" / "qemu" / "vhost-user"
    descriptors.mkdir(parents=True)
    (descriptors / "50-qemuprov-virtiofsd.json").write_text("{}\n")
    (root / "q" / "qemuprov.json").write_text(manifest_json(prefix=str(root / "q")))
    linked = config / "qemu" / "vhost-user"
    linked.mkdir(parents=True)
    (linked / "50-qemuprov-q.json").symlink_to(descriptors / "50-qemuprov-virtiofsd.json")
    (linked / "60-other.json").symlink_to(tmp_path / "elsewhere.json")
    (linked / "70-file.json").write_text("{}\n")
    removed = _qemuprov("remove", "q")
    assert removed.returncode == 0, removed.stderr
    assert sorted(p.name for p in linked.iterdir()) == ["60-other.json", "70-file.json"]
