"""The one guest session: what it starts is stopped and what it makes is removed, whatever happens; a daemon that
makes no socket fails alone; the console is followed line by line, only the guest init's lines, and bounded."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from qemuprov.proving import boot
from qemuprov.proving.boot import Console


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_everything_started_is_stopped_and_removed_even_on_error() -> None:
    with pytest.raises(RuntimeError), boot.session("unit") as guest:
        work = guest.work
        sock = guest.work / "vfs.sock"
        # a "virtiofsd" that makes its socket, then a child of its own, and never leaves
        daemon = guest.start_daemon(["python3", "-c", f"import socket,time,subprocess; s=socket.socket(socket.AF_UNIX);"
                                     f"s.bind({str(sock)!r}); subprocess.Popen(['sleep','300']); time.sleep(300)"],
                                    sock)
        assert daemon.failure is None and guest.host_token() in (guest.share / "from-host.txt").read_text()
        vm = guest.start_qemu(["sleep", "300"])
        raise RuntimeError("the caller failed half way")
    assert not work.exists()
    assert daemon.process.poll() is not None and vm.poll() is not None
    assert not _alive(daemon.process.pid)


def test_a_daemon_without_a_socket_fails_alone() -> None:
    with boot.session("unit") as guest:
        gone = guest.start_daemon(["sh", "-c", "echo cannot open the shared dir >&2; exit 1"], guest.work / "a.sock",
                                  "first")
        fine_sock = guest.work / "b.sock"
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(fine_sock))  # made by someone: the second daemon's wait ends at once
        fine = guest.start_daemon(["sleep", "30"], fine_sock, "second")
        assert gone.failure == "it exited" and gone.last_words() == ["cannot open the shared dir"]
        assert fine.failure is None
        server.close()


def test_the_console_is_followed_by_complete_guest_lines_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / "console"
    console = Console(path, max_lines=3)
    assert console.new_lines() == []  # no file yet
    path.write_bytes(b"[    0.1] Linux version 6.12\r\nQEMUPROV: mounted\nQEMUPROV: rea")
    assert console.new_lines() == ["QEMUPROV: mounted"]
    with path.open("ab") as out:
        out.write(b"d 1234\n" + b"QEMUPROV: x\n" * 100)
    assert console.new_lines() == ["QEMUPROV: read 1234", "QEMUPROV: x"]
    assert console.full and console.new_lines() == []


def test_the_probe_the_guest_had_mapped_is_changed_in_place_and_never_through_its_link(tmp_path: Path) -> None:
    with boot.session("unit") as guest:
        token = guest.host_token()
        probe = guest.share / boot.DAX_PROBE
        assert probe.read_bytes().startswith(token.encode()) and probe.stat().st_size == boot.DAX_PROBE_SIZE
        inode = probe.stat().st_ino
        changed = guest.change_dax_probe()
        assert changed and changed != token and probe.read_bytes().startswith(changed.encode())
        assert probe.stat().st_ino == inode and probe.stat().st_size == boot.DAX_PROBE_SIZE  # in place, same size
        # a guest that left a link (to a file of the host's) or a FIFO there gets nothing written through it
        victim = tmp_path / "victim"
        victim.write_text("the host's own file\n")
        probe.unlink()
        probe.symlink_to(victim)
        assert guest.change_dax_probe() is None and victim.read_text() == "the host's own file\n"
        probe.unlink()
        os.mkfifo(probe)
        assert guest.change_dax_probe() is None
