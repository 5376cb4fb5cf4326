"""One guest session, for every way qemuprov boots a guest (verify, verify --osv, verify --libvirt, bench): a
scratch directory with the share in it, the virtiofsd daemons and their sockets, QEMU (or a libvirt domain),
the console followed against a deadline, and at the end every process stopped and every file removed, whatever
happened. What the guest says is read by the caller; what it may leave in the share is treated as hostile."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from qemuprov.infra import paths, procs
from qemuprov.infra.procs import stop_group
from qemuprov.proving.verdict import tail_text

SOCKET_TIMEOUT = 10.0  # a virtiofsd makes its socket in milliseconds; a loaded machine gets seconds
HOST_FILE = "from-host.txt"  # what the host puts in the share for the guest to read
DAX_PROBE = "dax-probe.bin"  # the same token at the start of one page: a file any DAX window can map whole
DAX_PROBE_SIZE = 4096
LINE_PREFIX = "QEMUPROV: "  # the guest init's lines on its console; anything else there is the kernel's
FOLLOW_CHUNK = 1 << 20  # a console is read in bounded chunks, however much a guest prints


@dataclass
class Daemon:
    """A virtiofsd of the session: its process, its socket once made, or why it made none."""

    argv: list[str]
    socket: Path
    log: Path
    process: subprocess.Popen[bytes]
    failure: str | None = None  # None: the socket is there

    def last_words(self, count: int = 10) -> list[str]:
        return tail_text(self.log).splitlines()[-count:]


@dataclass
class Session:
    """Made by `session()`; everything it starts is stopped, and its directory removed, when the session ends."""

    work: Path
    share: Path
    _stack: ExitStack
    daemons: list[Daemon] = field(default_factory=list)
    vm: subprocess.Popen[bytes] | None = None
    qemu_log: Path | None = None

    def host_token(self) -> str:
        """A fresh token in the share's from-host.txt, the file the guest must read and write back, and at the
        start of dax-probe.bin, the page-sized file it reads through a DAX window."""
        token = secrets.token_hex(8)
        (self.share / HOST_FILE).write_text(token + "\n")
        (self.share / DAX_PROBE).write_bytes(token.encode().ljust(DAX_PROBE_SIZE, b"\n"))
        return token

    def change_dax_probe(self) -> str | None:
        """Overwrite the probe's token in place, as another program on the host would, while the guest has it
        mapped; the new token, or None where the guest left no regular file there (it is never followed)."""
        token = secrets.token_hex(8)
        try:
            folder = os.open(self.share, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                fd = os.open(DAX_PROBE, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
            finally:
                os.close(folder)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            os.pwrite(fd, token.encode(), 0)
        finally:
            os.close(fd)
        return token

    def log(self, name: str) -> IO[bytes]:
        handle = (self.work / name).open("wb")
        self._stack.callback(handle.close)
        return handle

    def start_daemon(self, argv: list[str], socket: Path, name: str = "virtiofsd") -> Daemon:
        """Start a virtiofsd and wait (bounded) for its socket; one that makes none is returned with its
        failure set, not raised: it fails its own setting, not the session."""
        process = procs.spawn(argv, self.log(f"{name}.log"))
        self._stack.callback(stop_group, process)
        daemon = Daemon(argv, socket, self.work / f"{name}.log", process)
        self.daemons.append(daemon)
        deadline = time.monotonic() + SOCKET_TIMEOUT
        while not socket.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if not socket.exists():
            daemon.failure = "it exited" if process.poll() is not None else "it made no socket in time"
        return daemon

    def start_qemu(self, argv: list[str]) -> subprocess.Popen[bytes]:
        """QEMU with its output in qemu.log; stdin stays open and silent (run.py's line reads the console from
        stdio, and bench's guest is answered there)."""
        self.qemu_log = self.work / "qemu.log"
        self.vm = procs.spawn(argv, self.log("qemu.log"), stdin_pipe=True)
        self._stack.callback(stop_group, self.vm)
        return self.vm

    def on_end(self, callback: Callable[[], object]) -> None:
        """Something else to undo when the session ends (a disk image, a libvirt domain)."""
        self._stack.callback(callback)

    def wait_for_guest(self, timeout: float, console: Console | None = None,
                       on_line: Callable[[str], object] | None = None) -> float:
        """Until the guest's QEMU exits, timeout passes, or a virtiofsd dies (the guest would only hang then);
        on_line hears each of the guest's lines on the console as it comes. The seconds it took."""
        assert self.vm is not None, "no QEMU started"
        start = time.monotonic()
        while time.monotonic() < start + timeout:
            if console is not None and on_line is not None:
                for line in console.new_lines():
                    on_line(line)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.vm.wait(timeout=0.2)
                break
            if any(d.process.poll() is not None for d in self.daemons):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.vm.wait(timeout=2)  # let the guest's last lines reach the console
                break
        return time.monotonic() - start

    def qemu_said(self) -> list[str]:
        """QEMU's own lines (its log less the guest's, where the console is on stdio)."""
        if self.qemu_log is None:
            return []
        return [ln for ln in tail_text(self.qemu_log).splitlines() if not ln.startswith(LINE_PREFIX.strip())]


@contextlib.contextmanager
def session(name: str, share: Path | None = None, shared_with_others: bool = False) -> Iterator[Session]:
    """A guest session in a fresh scratch directory; share: a directory of the caller's to serve (bench keeps its
    data on a disk), else share/ in the scratch directory. shared_with_others: the directory is readable by
    other users (libvirt's QEMU may run as another)."""
    with paths.scratch_dir(f"qemuprov-{name}-") as work, ExitStack() as stack:  # stopped first, then removed
        if shared_with_others:
            work.chmod(0o755)
        if share is None:
            share = work / "share"
            share.mkdir()
        made = Session(work, share, stack)
        yield made


class Console:
    """A console file followed as it grows: the guest init's complete lines, read in bounded chunks."""

    def __init__(self, path: Path, max_lines: int) -> None:
        self.path, self.max_lines = path, max_lines
        self.lines: list[str] = []
        self._seen = 0

    @property
    def full(self) -> bool:
        return len(self.lines) >= self.max_lines

    def new_lines(self) -> list[str]:
        """The guest's QEMUPROV: lines completed since the last call (its other lines are skipped)."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._seen)
                chunk = handle.read(FOLLOW_CHUNK)
        except FileNotFoundError:
            return []
        complete = chunk[:chunk.rfind(b"\n") + 1]
        self._seen += len(complete)
        fresh = [raw.strip() for raw in complete.decode(errors="replace").splitlines()
                 if raw.startswith(LINE_PREFIX)][: self.max_lines - len(self.lines)]
        self.lines += fresh
        return fresh
