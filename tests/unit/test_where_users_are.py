"""Issue 36's logic, on any host: lock files written by a TOML writer, the Docker context, bounded reads of
files someone else controls, and KVM tested with the host's own arch."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from qemuprov import arches
from qemuprov.infra import safefile
from qemuprov.sources import lockfiles

HOSTILE_REFS = ["v7.2.0", "emoji-\U0001f600-branch", "tab\there", 'quote"and\\backslash', "new\nline",
                "bell\x07", "\u202eevil", "'''", "[section]", "ünïcödé", "\U00010000"]


@pytest.mark.parametrize("ref", HOSTILE_REFS)
def test_a_lock_file_reads_back_what_was_written(tmp_path: Path, ref: str) -> None:
    lock = lockfiles.Lock("mine", tmp_path / "mine.lock", {
        "qemu": lockfiles.LockedSource(f"file:///src/{ref}", ref, "a" * 40, {f"sub/{ref}": "b" * 40}),
        "virtiofsd": lockfiles.LockedSource("https://example.com/v.git", ref, "c" * 64)}, "2026-12-06T00:00:00+00:00")
    lockfiles.write(lock)
    data = tomllib.loads((tmp_path / "mine.lock").read_text())
    assert data["qemu"]["ref"] == ref and data["qemu"]["git"] == f"file:///src/{ref}"
    assert data["qemu"]["submodules"] == {f"sub/{ref}": "b" * 40}
    assert data["virtiofsd"]["commit"] == "c" * 64 and "submodules" not in data["virtiofsd"]
    assert data["format"] == lockfiles.FORMAT and data["recipe"] == "mine"


def test_a_small_file_read_refuses_what_would_hang_or_never_end(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(safefile.NotReadable, match="not a regular file"):
        safefile.read_bytes(fifo)  # would block for ever with a plain open()
    with pytest.raises(safefile.NotReadable, match="not a regular file"):
        safefile.read_bytes(Path("/dev/zero"))
    big = tmp_path / "big"
    big.write_bytes(b"x" * 2048)
    with pytest.raises(safefile.NotReadable, match="larger than 1 KiB"):
        safefile.read_bytes(big, cap=1024)
    link = tmp_path / "link"
    link.symlink_to(big)
    assert safefile.read_bytes(link) == b"x" * 2048
    with pytest.raises(safefile.NotReadable, match="symbolic link"):
        safefile.read_bytes(link, follow=False)
    with pytest.raises(FileNotFoundError):
        safefile.read_bytes(tmp_path / "missing")


# -- KVM on the host's own arch ------------------------------------------------------------------------------------


def _kvm_world(monkeypatch: pytest.MonkeyPatch, usable: bool) -> list[tuple[str, str]]:
    """/dev/kvm accessible, and a KVM test whose verdict is `usable`; the (qemu, arch) each test was run with."""
    from qemuprov.knowledge import kvm
    from qemuprov.proving import verify

    tested: list[tuple[str, str]] = []

    def fake_verdict(qemu: Path, cache_file: Path, arch: object) -> dict[str, object]:
        tested.append((str(qemu), str(arch)))
        return {"usable": usable, "seconds": 0.1, "detail": "test"}

    monkeypatch.setattr(kvm, "device", lambda path="/dev/kvm": kvm.KvmDevice(True, True))
    monkeypatch.setattr(kvm, "verdict", fake_verdict)
    monkeypatch.setattr(verify, "notice", lambda message: None)
    return tested


@pytest.mark.parametrize("machine", ["aarch64", "arm64"])
def test_an_aarch64_host_tests_kvm_with_its_own_qemu_and_arch(monkeypatch: pytest.MonkeyPatch, isolated_home: Path,
                                                              machine: str) -> None:
    from qemuprov.proving import verify

    tested = _kvm_world(monkeypatch, usable=True)
    assert verify.choose_accel(Path("/opt/q/bin/qemu-system-aarch64"), arches.AARCH64, "auto", machine) == "kvm"
    assert tested == [("/opt/q/bin/qemu-system-aarch64", "aarch64")]
    # a guest of the other arch is emulated, and KVM is not even tested for it
    assert verify.choose_accel(Path("/opt/q/bin/qemu-system-x86_64"), arches.X86_64, "auto", machine) == "tcg"
    assert len(tested) == 1


def test_an_x86_64_host_with_broken_kvm_uses_tcg_and_an_explicit_accel_is_kept(
        monkeypatch: pytest.MonkeyPatch, isolated_home: Path) -> None:
    from qemuprov.proving import verify

    tested = _kvm_world(monkeypatch, usable=False)
    assert verify.choose_accel(Path("/usr/bin/qemu-system-x86_64"), arches.X86_64, "auto", "x86_64") == "tcg"
    assert tested == [("/usr/bin/qemu-system-x86_64", "x86_64")]
    assert verify.choose_accel(Path("/usr/bin/qemu-system-aarch64"), arches.AARCH64, "kvm", "x86_64") == "kvm"
    assert verify.choose_accel(Path("/usr/bin/qemu-system-x86_64"), arches.X86_64, "auto", "riscv64") == "tcg"


def test_the_aarch64_kvm_test_guest_runs_to_its_end_under_tcg_and_a_hang_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import struct

    if not Path("/usr/bin/qemu-system-aarch64").exists():
        pytest.fail("needs Debian's qemu-system-arm: the README's test command installs it")

    from qemuprov import arches
    from qemuprov.knowledge import kvm

    qemu = Path("/usr/bin/qemu-system-aarch64")
    control = kvm.test_run(qemu, arches.AARCH64, accel="tcg", limit=30)
    assert control.usable, control.detail
    assert "aarch64 test guest ran to its end" in control.detail
    # the same machine with firmware that only spins (b .), as a broken KVM would leave it: the bound catches it
    monkeypatch.setattr(kvm, "guest_image", lambda arch: struct.pack("<I", 0x14000000).ljust(64 << 10, b"\0"))
    hung = kvm.test_run(qemu, arches.AARCH64, accel="tcg", limit=2)
    assert not hung.usable and "hung under tcg" in hung.detail, hung.detail


def test_arches_say_what_each_room_needs() -> None:
    from qemuprov import arches

    assert arches.host("arm64") is arches.AARCH64 and arches.host("x86_64") is arches.X86_64
    assert arches.host("riscv64") is None
    assert arches.get("aarch64").console == "ttyAMA0" and arches.get("x86_64").deb_arch == "amd64"
    assert arches.X86_64.cross_prefix == "x86_64-linux-gnu-"  # the tool's name, not the package's
    assert arches.X86_64.cross_package == "gcc-x86-64-linux-gnu"


# -- docker context ------------------------------------------------------------------------------------------------


def _context(config_dir: Path, name: str, host: str, current: bool = True) -> None:
    import hashlib
    import json

    meta = config_dir / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps({"Name": name, "Endpoints": {"docker": {"Host": host}}}))
    if current:
        (config_dir / "config.json").write_text(json.dumps({"currentContext": name}))


def test_the_docker_context_names_the_engine_where_docker_host_is_unset(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from qemuprov.infra import engines

    _context(tmp_path, "remote", "tcp://127.0.0.1:23750")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    assert engines.candidate_urls()[0] == "tcp://127.0.0.1:23750"
    monkeypatch.setenv("DOCKER_HOST", "unix:///elsewhere.sock")  # DOCKER_HOST wins, as with the docker CLI
    assert engines.candidate_urls()[0] == "unix:///elsewhere.sock"
    assert "tcp://127.0.0.1:23750" not in engines.candidate_urls()
    monkeypatch.delenv("DOCKER_HOST")
    _context(tmp_path, "other", "unix:///other.sock", current=False)
    monkeypatch.setenv("DOCKER_CONTEXT", "other")  # as does DOCKER_CONTEXT over currentContext
    assert engines.candidate_urls()[0] == "unix:///other.sock"
    monkeypatch.setenv("DOCKER_CONTEXT", "default")
    assert "unix:///other.sock" not in engines.candidate_urls()


def test_a_hostile_docker_config_does_not_hang_engine_discovery(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    from qemuprov.infra import engines

    os.mkfifo(tmp_path / "config.json")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    assert engines.context_host() is None
    (tmp_path / "config.json").unlink()
    (tmp_path / "config.json").symlink_to("/dev/zero")
    assert engines.context_host() is None


# -- removing what someone else made -------------------------------------------------------------------------------


def test_a_tree_of_any_depth_goes_and_nothing_a_link_names(tmp_path: Path) -> None:
    from qemuprov.infra import paths

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("the user's")
    top = tmp_path / "share"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    for _ in range(3000):  # deeper than Python's recursion limit, and longer than PATH_MAX as one path
        os.mkdir("d" * 8, dir_fd=fd)
        child = os.open("d" * 8, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.symlink(str(outside), "link", dir_fd=fd)
    os.mkfifo("fifo", dir_fd=fd)
    os.close(fd)
    (top / "to-outside").symlink_to(outside)
    assert paths.remove_tree(top) == []
    assert not top.exists() and (outside / "keep").read_text() == "the user's"
    link = tmp_path / "link"
    link.symlink_to(outside)
    assert paths.remove_tree(link) == [] and not link.is_symlink() and outside.is_dir()
    assert paths.remove_tree(tmp_path / "missing") == []


def test_a_scratch_dir_is_removed_however_deep_it_got(tmp_path: Path) -> None:
    from qemuprov.infra import paths

    with paths.scratch_dir("qemuprov-test-", tmp_path) as scratch:
        (scratch / "d").mkdir()
        fd = os.open(scratch / "d", os.O_RDONLY)
        for _ in range(1500):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(fd)
    assert not scratch.exists()


def test_side_paths_beside_a_prefix_are_never_ones_another_user_made(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """In a shared, sticky directory another user can make the names qemuprov will use: the staging and the
    swap's paths carry a random part and are made exclusively, never found and reused."""
    from qemuprov.infra import paths

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    prefix = shared / "qemu72"
    monkeypatch.setattr(os, "getpid", lambda: 31337)
    theirs = shared / ".qemuprov-stage-qemu72-31337"  # what the old, predictable name would have been
    theirs.mkdir()
    os.chown(theirs, 4242, 4242)
    made = paths.make_side_dir(prefix, "stage")
    assert made != theirs and made.name.startswith(".qemuprov-stage-qemu72-31337.")
    info = made.stat()
    assert info.st_uid == os.getuid() and (info.st_mode & 0o777) == 0o700
    assert paths.side_path(prefix, "new") != paths.side_path(prefix, "new")
    assert sorted(p.name for p in shared.iterdir()) == sorted([theirs.name, made.name])


# -- an engine that never finishes answering -----------------------------------------------------------------------


@pytest.mark.parametrize("behaviour", ["dribble", "endless"])
def test_engine_discovery_is_bounded_in_time_and_size(tmp_path: Path, behaviour: str) -> None:
    import socket
    import threading
    import time

    from qemuprov.infra import engines

    path = str(tmp_path / "engine.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    stop = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
            while not stop.is_set():
                try:
                    conn.sendall(b"x" if behaviour == "dribble" else b"x" * 65536)
                except OSError:
                    return
                if behaviour == "dribble":
                    time.sleep(0.2)

    threading.Thread(target=serve, daemon=True).start()
    start = time.monotonic()
    found = engines.ping(f"unix://{path}", timeout=2.0)
    took = time.monotonic() - start
    stop.set()
    server.close()
    assert not found.reachable and took < 10, (found, took)
    assert ("did not answer within" if behaviour == "dribble" else "more than") in found.detail, found.detail
