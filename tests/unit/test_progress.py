"""One reporter for every long step: what each tool prints becomes a line every ten percent (no terminal here)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from qemuprov.infra.progress import Reporter
from qemuprov.recipe import Source
from qemuprov.sources import trees


def _lines(feed: list[str], crates: int | None = None) -> list[str]:
    out = io.StringIO()
    report = Reporter(out)
    if crates:
        report.expect_crates(crates)
    for line in feed:
        report.line(line)
    return out.getvalue().splitlines()


def test_ninja_docker_and_git_counters() -> None:
    ninja = _lines([f"[{n}/20] Compiling C object x.o" for n in range(1, 21)])
    assert ninja == ["    1/20 (0%)", *(f"    {n}/20 ({n * 5}%)" for n in range(2, 21, 2))]
    docker = _lines([f"Step {n}/4 : RUN true" for n in range(1, 5)] + ["Successfully built 0123"])
    assert docker == ["    1/4 (20%)", "    2/4 (50%)", "    3/4 (70%)", "    4/4 (100%)"]
    git = _lines(["Receiving objects:  50% (5/10)\rReceiving objects: 100% (10/10), 1.2 MiB | 3 MiB/s, done.\n"])
    assert git == ["    5/10 (50%)", "    10/10 (100%)"]


def test_cargo_crates_are_counted_against_the_lock() -> None:
    lines = _lines([f"   Compiling crate{n} v1.0.{n}" for n in range(4)] + ["    Finished release"], crates=4)
    assert lines == ["    1/4 (20%)", "    2/4 (50%)", "    3/4 (70%)", "    4/4 (100%)"]


def test_tarball_download_reports_megabytes(tmp_path: Path) -> None:
    data = bytes(3 << 20)
    (tmp_path / "t.tar").write_bytes(data)
    out = io.StringIO()
    store = tmp_path / "store.tar"
    trees._download_checked(Source(tarball=f"file://{tmp_path / 't.tar'}", sha256=hashlib.sha256(data).hexdigest()),
                             store, "qemu", Reporter(out))
    assert store.read_bytes() == data
    shown = out.getvalue().splitlines()
    assert shown[0].startswith("    1.0/3.1 MB, ") and shown[-1].startswith("    3.1/3.1 MB, ")
    assert shown[-1].endswith("(100%)")
