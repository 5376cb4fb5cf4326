"""assets/pch-cc with the real clang on a small tree laid out like QEMU's: which files get the precompiled
qemu/osdep.h, that their objects are the ones a plain compile makes, and that a changed header or a broken file
still gets the plain compiler's answer."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from qemuprov.building.qemu_steps import PCH_WRAPPER

pytestmark = pytest.mark.integration

OSDEP = """#ifndef QEMU_OSDEP_H
#define QEMU_OSDEP_H
#include <stdio.h>
#include <stdlib.h>
#ifndef ANSWER
#define ANSWER {answer}
#endif
static inline int answer(void) {{ return ANSWER; }}
#endif
"""
LICENCE = "/*\n * SPDX-License-Identifier: GPL-2.0-or-later\n */\n// one more comment\n\n"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    if not shutil.which("clang"):
        pytest.fail("clang is not installed: scripts/test installs it")
    (tmp_path / "src" / "include" / "qemu").mkdir(parents=True)
    (tmp_path / "src" / "include" / "qemu" / "osdep.h").write_text(OSDEP.format(answer=42))
    (tmp_path / "build").mkdir()
    return tmp_path


def source(tree: Path, name: str, text: str) -> str:
    (tree / "src" / name).write_text(text)
    return f"../src/{name}"


def compile_c(tree: Path, src: str, obj: str, wrapped: bool = True, deps: bool = True) -> subprocess.CompletedProcess:
    argv = [*([str(PCH_WRAPPER)] if wrapped else []), "clang", "-I../src/include", "-O2", "-Wall"]
    if deps:
        argv += ["-MD", "-MQ", obj, "-MF", f"{obj}.d"]
    argv += ["-o", obj, "-c", src]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCACHE")} | {"CCACHE_DISABLE": "1"}
    return subprocess.run(argv, cwd=tree / "build", capture_output=True, text=True, env=env, check=False)


def same_object(tree: Path, src: str, obj: str) -> bool:
    plain = compile_c(tree, src, f"{obj}.plain.o", wrapped=False)
    assert plain.returncode == 0, plain.stderr
    return (tree / "build" / obj).read_bytes() == (tree / "build" / f"{obj}.plain.o").read_bytes()


def pch_files(tree: Path) -> list[str]:
    return sorted(p.name for p in (tree / "build").glob("qemuprov-pch/*.pch"))


def test_a_qemu_file_compiles_against_the_precompiled_header(tree: Path) -> None:
    src = source(tree, "a.c", LICENCE + '#include "qemu/osdep.h"\nint f(void) { return answer(); }\n')
    result = compile_c(tree, src, "a.o")
    assert result.returncode == 0, result.stderr
    assert len(pch_files(tree)) == 1
    assert same_object(tree, src, "a.o")
    deps = (tree / "build" / "a.o.d").read_text()
    assert "qemu/osdep.h" in deps  # ninja still rebuilds the file when a header changes


def test_a_define_before_osdep_h_gets_no_precompiled_header(tree: Path) -> None:
    src = source(tree, "b.c", '#define ANSWER 7\n#include "qemu/osdep.h"\nint f(void) { return answer(); }\n')
    result = compile_c(tree, src, "b.o")
    assert result.returncode == 0, result.stderr
    assert pch_files(tree) == []
    assert same_object(tree, src, "b.o")


def test_a_compile_without_a_depfile_runs_plain(tree: Path) -> None:
    src = source(tree, "c.c", '#include "qemu/osdep.h"\nint f(void) { return answer(); }\n')
    assert compile_c(tree, src, "c.o", deps=False).returncode == 0
    assert pch_files(tree) == []


def test_a_changed_header_gives_the_new_object(tree: Path) -> None:
    src = source(tree, "d.c", '#include "qemu/osdep.h"\nint f(void) { return answer(); }\n')
    assert compile_c(tree, src, "d.o").returncode == 0
    [pch] = (tree / "build").glob("qemuprov-pch/*.pch")
    first = pch.stat()
    header = tree / "src" / "include" / "qemu" / "osdep.h"
    header.write_text(OSDEP.format(answer=43))  # same size, and maybe the same mtime: make it differ
    os.utime(header, ns=(first.st_mtime_ns - 10**10, first.st_mtime_ns - 10**10))
    result = compile_c(tree, src, "d.o")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # the stale precompiled header is not the user's business
    assert same_object(tree, src, "d.o")
    assert compile_c(tree, src, "d.o").returncode == 0
    again = pch.stat()  # rebuilt for the next file (the file system may give it the old inode again)
    assert (again.st_ino, again.st_mtime_ns, again.st_ctime_ns) != (first.st_ino, first.st_mtime_ns, first.st_ctime_ns)


def test_a_broken_file_reports_its_error_once(tree: Path) -> None:
    src = source(tree, "e.c", '#include "qemu/osdep.h"\nint f(void) { return answer() }\n')
    result = compile_c(tree, src, "e.o")
    assert result.returncode != 0
    assert result.stderr.count("error: expected ';'") == 1, result.stderr
    assert "precompiled" not in result.stderr


def test_warnings_still_show(tree: Path) -> None:
    src = source(tree, "f.c", '#include "qemu/osdep.h"\nint f(void) { int unused; return answer(); }\n')
    result = compile_c(tree, src, "f.o")
    assert result.returncode == 0
    assert len(pch_files(tree)) == 1
    assert "unused variable" in result.stderr
