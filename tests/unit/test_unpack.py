"""qemuprov.unpack against hostile archives: nothing outside the destination is written or changed, nothing but
files, directories and inside symlinks is made, and a bomb stops at the limit. These run on Debian 12's own
python3 (3.11.2, no extraction filters) too: see test_on_debian_python."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest

from qemuprov.infra import unpack
from tests.hostile import Member, archive, gzip_bomb


@pytest.fixture()
def victim(tmp_path: Path) -> Path:
    """A file of the user's outside the destination; no member may change it."""
    path = tmp_path / "victim"
    path.write_text("the user's file\n")
    path.chmod(0o600)
    os.utime(path, (1000000000, 1000000000))
    return path


def _unpacked(tmp_path: Path, members: list[Member], **kwargs: int) -> Path:
    (tmp_path / "layer.tar.gz").write_bytes(archive(members))
    dest = tmp_path / "dest" / "prefix"
    dest.mkdir(parents=True)
    unpack.unpack(tmp_path / "layer.tar.gz", dest, **kwargs)
    return dest


def _untouched(victim: Path) -> None:
    info = victim.stat()
    assert victim.read_text() == "the user's file\n"
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_mtime == 1000000000 and info.st_nlink == 1


def _refused(tmp_path: Path, members: list[Member], words: str) -> None:
    with pytest.raises(unpack.UnsafeArchive, match=words):
        _unpacked(tmp_path, members)


@pytest.mark.parametrize("link", ["ABSOLUTE", "../../victim", "bin/../../../victim"])
def test_a_hard_link_out_then_a_file_of_its_name_writes_nothing_outside(tmp_path: Path, victim: Path,
                                                                        link: str) -> None:
    target = str(victim) if link == "ABSOLUTE" else link
    _refused(tmp_path, [Member("bin", tarfile.DIRTYPE, mode=0o755),
                        Member("bin/qemu", tarfile.LNKTYPE, linkname=target),
                        Member("bin/qemu", data=b"pwned")], "a hard link to .*, which is no earlier file")
    _untouched(victim)


def test_a_hard_link_alone_changes_nothing_outside(tmp_path: Path, victim: Path) -> None:
    _refused(tmp_path, [Member("x", tarfile.LNKTYPE, linkname=str(victim), mode=0o4777, uid=4242)],
             "a hard link to .*, which is no earlier file")
    _untouched(victim)


def test_a_hard_link_to_an_earlier_member_is_kept(tmp_path: Path) -> None:
    dest = _unpacked(tmp_path, [Member("a", data=b"same"), Member("b", tarfile.LNKTYPE, linkname="a"),
                                Member("b", data=b"other")])  # replacing the link must not change a
    assert (dest / "a").read_bytes() == b"same" and (dest / "b").read_bytes() == b"other"


@pytest.mark.parametrize(("link", "allowed"), [("../share/qemu", True), ("qemu-system-x86_64", True),
                                              ("/etc/passwd", False), ("../../victim", False),
                                              ("sub/../../..", False), (".", False)])
def test_symlinks_stay_inside(tmp_path: Path, link: str, allowed: bool) -> None:
    members = [Member("bin", tarfile.DIRTYPE, mode=0o755), Member("bin/l", tarfile.SYMTYPE, linkname=link)]
    if allowed:
        assert os.readlink(_unpacked(tmp_path, members) / "bin" / "l") == link
    else:
        _refused(tmp_path, members, "symlink")


def test_a_symlink_then_a_write_through_it_is_refused(tmp_path: Path, victim: Path) -> None:
    _refused(tmp_path, [Member("up", tarfile.SYMTYPE, linkname=".."), Member("up/victim", data=b"pwned")],
             "symlink|not a directory")
    _untouched(victim)


def test_a_climb_through_a_symlink_to_the_root_is_refused(tmp_path: Path, victim: Path) -> None:
    """`a/s -> ..` is inside, and `a/l -> s/../victim` reads as inside; through s it is not."""
    _refused(tmp_path, [Member("a", tarfile.DIRTYPE, mode=0o755), Member("a/s", tarfile.SYMTYPE, linkname=".."),
                        Member("a/l", tarfile.SYMTYPE, linkname="s/../../victim")], "symlink")


def test_a_file_written_over_a_symlink_replaces_the_link(tmp_path: Path, victim: Path) -> None:
    dest = _unpacked(tmp_path, [Member("x", tarfile.SYMTYPE, linkname="y"), Member("x", data=b"data")])
    assert (dest / "x").read_bytes() == b"data" and not (dest / "x").is_symlink()
    _untouched(victim)


@pytest.mark.parametrize(("kind", "what"), [(tarfile.CHRTYPE, "device"), (tarfile.BLKTYPE, "device"),
                                            (tarfile.FIFOTYPE, "fifo")])
def test_devices_and_fifos_are_refused(tmp_path: Path, kind: bytes, what: str) -> None:
    _refused(tmp_path, [Member("bin/node", kind)], what)


@pytest.mark.parametrize("name", ["/etc/evil", "../evil", "a/../../evil"])
def test_names_that_leave_are_refused(tmp_path: Path, name: str) -> None:
    _refused(tmp_path, [Member(name, data=b"x")], "absolute|outside")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "dest" / "evil").exists()


def test_owners_and_modes_are_the_installers(tmp_path: Path) -> None:
    dest = _unpacked(tmp_path, [Member("bin", tarfile.DIRTYPE, mode=0o7777, uid=4242),
                                Member("bin/qemu", data=b"#!", mode=0o6777, uid=4242)])
    for path, mode in ((dest / "bin", 0o755), (dest / "bin" / "qemu", 0o755)):
        info = path.stat()
        assert info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == mode, (path, oct(info.st_mode))


def test_a_gzip_bomb_stops_at_the_limit(tmp_path: Path) -> None:
    (tmp_path / "bomb.tar.gz").write_bytes(gzip_bomb(64 << 20))
    assert (tmp_path / "bomb.tar.gz").stat().st_size < 1 << 20
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(unpack.UnsafeArchive, match="more than the limit of 16 MiB"):
        unpack.unpack(tmp_path / "bomb.tar.gz", dest, max_bytes=16 << 20)
    assert sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) == 0  # refused before writing


def test_the_limit_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QEMUPROV_UNPACK_LIMIT", "1M")
    assert unpack.limit() == 1 << 20
    monkeypatch.setenv("QEMUPROV_UNPACK_LIMIT", "lots")
    with pytest.raises(Exception, match='QEMUPROV_UNPACK_LIMIT: "lots" is not a size'):
        unpack.limit()


def test_the_directories_a_name_implies_count_against_the_member_budget(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import tarfile

    from qemuprov.infra import unpack

    monkeypatch.setattr(unpack, "MAX_MEMBERS", 1000)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for i in range(20):  # 20 members whose names imply 100 directories each
            info = tarfile.TarInfo("/".join(f"d{i}-{j}" for j in range(100)) + "/f")
            tar.addfile(info, io.BytesIO(b""))
    (tmp_path / "a.tar").write_bytes(out.getvalue())
    (tmp_path / "dest").mkdir()
    with pytest.raises(unpack.UnsafeArchive, match="directories their names imply"):
        unpack.unpack(tmp_path / "a.tar", tmp_path / "dest")
    assert sum(1 for _ in (tmp_path / "dest").rglob("*")) <= 1000 + 101  # at most one name past the budget


def test_an_extended_header_past_its_cap_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import tarfile

    from qemuprov.infra import unpack

    monkeypatch.setattr(unpack, "HEADER_CAP", 4096)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("f")
        info.pax_headers = {"comment": "x" * 100_000}
        tar.addfile(info, io.BytesIO(b""))
    (tmp_path / "a.tar").write_bytes(out.getvalue())
    (tmp_path / "dest").mkdir()
    with pytest.raises(unpack.UnsafeArchive, match="extended header"):
        unpack.unpack(tmp_path / "a.tar", tmp_path / "dest")
