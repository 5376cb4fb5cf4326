"""What the copy transport sends into a container that cannot see this machine's files: only what changed since
the last copy, removals within the copied roots only, owners set for the step user, and the listing kept."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from qemuprov.infra import transfer


def _tree(root: Path) -> Path:
    (root / "src" / "sub").mkdir(parents=True)
    (root / "src" / "configure").write_text("#!/bin/sh\n")
    (root / "src" / "configure").chmod(0o755)
    (root / "src" / "sub" / "a.c").write_text("int a;\n")
    os.symlink("a.c", root / "src" / "sub" / "link.c")
    return root / "src"


def test_a_first_copy_sends_everything_and_a_second_nothing(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    roots = {"/w/src": transfer.listing(src, "/w/src")}
    first = transfer.changes(roots, {})
    assert first.put == ["/w/src", "/w/src/configure", "/w/src/sub", "/w/src/sub/a.c", "/w/src/sub/link.c"]
    again = transfer.changes({"/w/src": transfer.listing(src, "/w/src")}, first.listing)
    assert again.put == [] and again.removed == []


def test_a_changed_file_goes_again_and_a_removed_one_is_removed_within_its_root(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    before = transfer.changes({"/w/src": transfer.listing(src, "/w/src")}, {}).listing
    before["/w/other/kept.c"] = ["f", 1, 1, 0o644, ""]  # copied by another session (another root)
    (src / "sub" / "a.c").write_text("int a = 1;\n")
    (src / "configure").unlink()
    found = transfer.changes({"/w/src": transfer.listing(src, "/w/src")}, before)
    assert found.put == ["/w/src/sub/a.c"] and found.removed == ["/w/src/configure"]
    assert "/w/other/kept.c" in found.listing and "/w/src/configure" not in found.listing


def test_a_missing_input_is_an_empty_listing(tmp_path: Path) -> None:
    assert transfer.listing(tmp_path / "not-yet", "/w/not-yet") == {}


def test_the_archive_holds_the_files_for_the_step_user_with_their_modes(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    found = transfer.changes({"/w/src": transfer.listing(src, "/w/src")}, {})
    out = io.BytesIO()
    transfer.write_archive(out, found.put, transfer.host_paths({"/w/src": src}, found.put), transfer.Owner(4242, 42),
                           {"/w/.listing": b"{}"})
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"w/src", "w/src/configure", "w/src/sub", "w/src/sub/a.c", "w/src/sub/link.c",
                                "w/.listing"}
        assert all((m.uid, m.gid) == (4242, 42) for m in members.values())
        assert members["w/src/configure"].mode & 0o100 and members["w/src/sub/link.c"].linkname == "a.c"
        handle = tar.extractfile("w/src/sub/a.c")
        assert handle is not None and handle.read() == b"int a;\n"
        assert members["w/src/sub/a.c"].mtime == os.stat(src / "sub" / "a.c").st_mtime  # to the ns, for make


class _Engine:
    """A container whose engine answers get_archive with the bytes it is given (an engine we do not control)."""

    def __init__(self, archive: bytes) -> None:
        self.archive = archive

    def get_archive(self, path: str) -> tuple[list[bytes], dict[str, object]]:
        return [self.archive[i:i + 4096] for i in range(0, len(self.archive), 4096)], {}


def _tar(*members: tuple[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_outputs_that_climb_out_are_refused_and_nothing_lands_outside(tmp_path: Path) -> None:
    import pytest

    from qemuprov.infra.unpack import UnsafeArchive

    dest = tmp_path / "staging-parent"
    engine = _Engine(_tar(("stage/bin/qemu", b"ok"), ("stage/../../escaped", b"bad")))
    with pytest.raises(UnsafeArchive):
        transfer.copy_out(engine, "/stage", dest)
    assert not (tmp_path / "escaped").exists()


def test_outputs_larger_than_the_limit_stop_there(tmp_path: Path, monkeypatch: object) -> None:
    import pytest

    from qemuprov.infra.unpack import UnsafeArchive

    monkeypatch.setenv("QEMUPROV_UNPACK_LIMIT", "64K")  # type: ignore[attr-defined]
    engine = _Engine(_tar(("stage/big", b"\0" * (256 << 10))))
    with pytest.raises(UnsafeArchive, match="more than"):
        transfer.copy_out(engine, "/stage", tmp_path)
    assert not (tmp_path / "stage" / "big").exists()


def test_a_listing_that_is_not_one_is_taken_as_none(tmp_path: Path) -> None:
    assert transfer.read_listing(_Engine(_tar((".qemuprov-copied.json", b"[1, 2]"))), "/w/x") == {}
    assert transfer.read_listing(_Engine(b"not a tar at all"), "/w/x") == {}


def test_outputs_beside_the_one_asked_for_touch_nothing_here(tmp_path: Path) -> None:
    import pytest

    from qemuprov.infra.unpack import UnsafeArchive

    neighbour = tmp_path / "other-install" / "bin" / "qemu"
    neighbour.parent.mkdir(parents=True)
    neighbour.write_text("the user's")
    engine = _Engine(_tar(("stage/bin/qemu", b"ok"), ("other-install/bin/qemu", b"replaced")))
    with pytest.raises(UnsafeArchive, match="outside stage, the one directory asked for"):
        transfer.copy_out(engine, "/stage", tmp_path)
    assert neighbour.read_text() == "the user's" and not (tmp_path / "stage").exists()


def test_outputs_merge_into_a_staging_an_earlier_session_filled(tmp_path: Path) -> None:
    (tmp_path / "stage" / "bin").mkdir(parents=True)
    (tmp_path / "stage" / "bin" / "qemu").write_text("from the QEMU session")
    transfer.copy_out(_Engine(_tar(("stage/libexec/virtiofsd", b"daemon"))), "/stage", tmp_path)
    assert (tmp_path / "stage" / "bin" / "qemu").read_text() == "from the QEMU session"
    assert (tmp_path / "stage" / "libexec" / "virtiofsd").read_bytes() == b"daemon"
    assert not list(tmp_path.glob(".qemuprov-out-*"))  # no scratch left behind


def test_a_link_in_an_output_may_not_climb_out_of_the_output_itself(tmp_path: Path) -> None:
    """By the archive's rule a link at stage/a/b may climb two levels; after the move that names the staging's
    parent (the install root, or $HOME for --prefix ~/qemu72): each output is its own root."""
    import pytest

    from qemuprov.infra.unpack import UnsafeArchive

    for target in ("../..", "../../Documents", "../../other-install/bin"):
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            link = tarfile.TarInfo("stage/share/qemu")
            link.type, link.linkname = tarfile.SYMTYPE, target
            tar.addfile(link)
        with pytest.raises(UnsafeArchive, match="may lead outside"):
            transfer.copy_out(_Engine(out.getvalue()), "/stage", tmp_path / "home")
        assert not (tmp_path / "home" / "stage").exists()
    inside = io.BytesIO()
    with tarfile.open(fileobj=inside, mode="w") as tar:
        link = tarfile.TarInfo("stage/bin/qemu-kvm")
        link.type, link.linkname = tarfile.SYMTYPE, "../libexec/qemu"
        tar.addfile(link)
    assert transfer.copy_out(_Engine(inside.getvalue()), "/stage", tmp_path / "home")
    assert os.readlink(tmp_path / "home" / "stage" / "bin" / "qemu-kvm") == "../libexec/qemu"


def test_a_listing_nested_past_any_recursion_is_taken_as_none(tmp_path: Path) -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    assert transfer.read_listing(_Engine(_tar((".qemuprov-copied.json", deep))), "/w/x") == {}
