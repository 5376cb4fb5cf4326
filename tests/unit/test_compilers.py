"""Which compiler a host build uses: the user's CC/CXX, else clang when it is installed (and ccache wraps it,
when ccache is in use), else configure's default. PATH here is a directory of stand-in programs."""

from __future__ import annotations

from pathlib import Path

import pytest

from qemuprov.infra import compilers
from qemuprov.infra.compilers import CLANG, describe_host_compilers
from qemuprov.infra.runners import HostRunner


def programs(directory: Path, *names: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        program = directory / name
        program.write_text("#!/bin/sh\nexit 0\n")
        program.chmod(0o755)
    return directory


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compilers, "CCACHE_MASQUERADE", str(tmp_path / "masquerade"))
    return tmp_path


def test_clang_is_chosen_when_installed(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(programs(host / "bin", "gcc", "clang", "clang++")))
    runner = HostRunner()
    assert runner.compilers == CLANG
    assert runner.env({"LC_ALL": "C"})["CC"] == "clang"


def test_gcc_stays_without_clang_plus_plus(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(programs(host / "bin", "gcc", "clang")))
    assert HostRunner().compilers == {}
    assert "CC" not in HostRunner().env({})


def test_clang_not_wrapped_by_ccache_is_not_chosen(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without masquerade links clang would bypass ccache, and warm rebuilds would compile everything again.
    programs(host / "masquerade", "gcc", "cc")
    monkeypatch.setenv("PATH", str(programs(host / "bin", "ccache", "gcc", "clang", "clang++")))
    assert HostRunner().compilers == {}
    programs(host / "masquerade", "clang", "clang++")
    assert HostRunner().compilers == CLANG
    assert HostRunner().env({})["PATH"].startswith(str(host / "masquerade") + ":")


def test_the_users_cc_wins(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(programs(host / "bin", "gcc", "clang", "clang++")))
    monkeypatch.setenv("CC", "gcc-12")
    runner = HostRunner()
    assert runner.compilers == {"CC": "gcc-12"}
    assert runner.env({})["CC"] == "gcc-12" and "CXX" not in runner.env({})


def test_doctor_names_the_host_compiler(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(programs(host / "bin", "gcc")))
    assert describe_host_compilers().startswith("gcc (install clang")
    programs(host / "bin", "clang", "clang++")
    assert describe_host_compilers() == "clang"
    monkeypatch.setenv("CC", "gcc-12")
    assert describe_host_compilers() == "CC=gcc-12 (from the environment)"
