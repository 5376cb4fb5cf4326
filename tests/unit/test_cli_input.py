"""Bad arguments and unsafe places are refused before any work, in one line with exit 2; nothing is touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


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
