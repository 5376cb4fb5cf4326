"""The one place that runs child processes: `run` a short one to completion (explicit environment, a time limit,
an output cap, clear failures), `stream` a long one's lines as they come, `spawn` a daemon into a log file. Every
child gets a process group of its own, so that it is stopped with everything it started."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import selectors
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("qemuprov.procs")


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int | None  # None: timed out
    stdout: str
    stderr: str
    overflowed: bool = False  # printed more than the cap, and was killed for it

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def why(self) -> str:
        """What went wrong, in words: a timeout, a signal, or an exit status."""
        if self.overflowed:
            return f"printed more than {MAX_OUTPUT >> 20} MiB and was stopped"
        if self.returncode is None:
            return "did not finish in time"
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = f"signal {-self.returncode}"
            return f"was killed by {name}"
        return f"exited with status {self.returncode}"


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: PATH, HOME, a C locale, and what the caller adds."""
    env = {key: os.environ[key] for key in ("PATH", "HOME", "TMPDIR", "USER") if key in os.environ}
    env["LC_ALL"] = "C"
    env.update(extra or {})
    return env


MAX_OUTPUT = 8 << 20  # per stream: a probe's help text is tens of KB, a dmesg a few MB


def run(argv: Sequence[str | Path], *, timeout: float, input: str | None = None,
        env: Mapping[str, str] | None = None, cwd: Path | None = None, max_output: int = MAX_OUTPUT) -> Result:
    """Run to completion; never raises for the child's failure, only for a program that cannot start. A child
    that prints more than max_output bytes on a stream is killed (with everything it started), its output kept
    up to the cap: a hostile or broken binary cannot make qemuprov grow without end."""
    args = tuple(str(a) for a in argv)
    log.debug("run: %s", shlex.join(args))
    proc = subprocess.Popen(args, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(env) if env is not None else base_env(), cwd=cwd, start_new_session=True)
    try:
        outputs, status = _collect(proc, input, timeout, max_output)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    # as text mode would: universal newlines (QMP ends its lines with \r\n)
    stdout, stderr = (b"".join(chunks).decode(errors="replace").replace("\r\n", "\n").replace("\r", "\n")
                      for chunks in outputs)
    return Result(args, None if status == "timeout" else proc.returncode, stdout, stderr,
                  overflowed=status == "overflow")


def _collect(proc: subprocess.Popen[bytes], input: str | None, timeout: float,
             cap: int) -> tuple[tuple[list[bytes], list[bytes]], str]:
    """Both streams, read as they come, within the time limit and the cap: (stdout, stderr), and how it ended:
    "exit", "timeout" or "overflow"."""
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout
    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    sizes = dict.fromkeys(chunks, 0)
    pending = (input or "").encode()
    with selectors.DefaultSelector() as selector:
        for stream in (proc.stdout, proc.stderr):
            selector.register(stream, selectors.EVENT_READ)
        if proc.stdin is not None:
            if pending:
                os.set_blocking(proc.stdin.fileno(), False)
                selector.register(proc.stdin, selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
        while any(key.fileobj is not proc.stdin for key in selector.get_map().values()):
            left = deadline - time.monotonic()
            if left <= 0:
                _kill_group(proc)
                return (chunks[proc.stdout.fileno()], chunks[proc.stderr.fileno()]), "timeout"
            for key, _ in selector.select(min(left, 1.0)):
                if key.fileobj is proc.stdin:
                    try:
                        written = os.write(key.fd, pending[:1 << 16])
                    except BrokenPipeError:
                        written = len(pending)
                    pending = pending[written:]
                    if not pending:
                        selector.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                data = os.read(key.fd, 1 << 16)
                if not data:
                    selector.unregister(key.fileobj)
                    continue
                room = cap - sizes[key.fd]
                chunks[key.fd].append(data[:room])
                sizes[key.fd] += len(data)
                if sizes[key.fd] > cap:
                    _kill_group(proc)
                    return (chunks[proc.stdout.fileno()], chunks[proc.stderr.fileno()]), "overflow"
    if proc.stdin is not None and not proc.stdin.closed:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
    try:
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return (chunks[proc.stdout.fileno()], chunks[proc.stderr.fileno()]), "timeout"
    return (chunks[proc.stdout.fileno()], chunks[proc.stderr.fileno()]), "exit"


MAX_LINE = 1 << 20  # a child that never ends a line is cut into lines of this size, not held whole


class StreamTimeout(TimeoutError):
    """A streamed child that ran past its time limit (it was stopped with its group)."""


def stream(argv: Sequence[str | Path], *, on_line: Callable[[str], None], cwd: Path | None = None,
           env: Mapping[str, str] | None = None, groups: RunningGroups | None = None, grace: float = 10.0,
           timeout: float | None = None) -> int:
    """Run a long child (a compile, a git fetch), handing each line of its output (stderr merged into stdout;
    a carriage return ends a line, as progress meters use it) to on_line as it comes; its exit status. A Ctrl-C
    or any failure, in the child's reading or in on_line, stops the whole process group, TERM then KILL after
    `grace` seconds. env None: qemuprov's own (git needs the user's proxies and ssh agent). groups: where the
    group is remembered while it runs, so a build killed meanwhile leaves nothing running for long. timeout:
    past it the group is killed and StreamTimeout raised."""
    proc = subprocess.Popen([str(a) for a in argv], cwd=cwd, env=dict(env) if env is not None else None,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    assert proc.stdout is not None
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _kill_group_only(proc)

    watchdog = threading.Timer(timeout, expire) if timeout else None
    try:
        if watchdog is not None:
            watchdog.daemon = True
            watchdog.start()
        if groups is not None:
            groups.remember(proc.pid)
        pending = b""
        while chunk := os.read(proc.stdout.fileno(), 65536):
            data = pending + chunk
            held = data.endswith(b"\r")  # the \n of a \r\n may be in the next chunk
            *lines, pending = _LINE_END.split(data[:-1] if held else data)
            pending += b"\r" if held else b""
            while len(pending) > MAX_LINE:
                lines.append(pending[:MAX_LINE])
                pending = pending[MAX_LINE:]
            for line in lines:
                on_line(line.decode(errors="replace"))
        if pending:
            on_line(pending.decode(errors="replace"))
        status = proc.wait()
        if expired.is_set():
            raise StreamTimeout(f"{argv[0]} ran longer than {timeout:g} s")
        return status
    except BaseException:
        with signals_deferred():
            stop_group(proc, grace)
        raise
    finally:
        if watchdog is not None:
            watchdog.cancel()
        proc.stdout.close()
        if groups is not None:
            groups.forget(proc.pid)


_LINE_END = re.compile(rb"\r\n|[\r\n]")


def spawn(argv: Sequence[str | Path], log: IO[bytes], *, stdin_pipe: bool = False) -> subprocess.Popen[bytes]:
    """Start a daemon (virtiofsd, a guest's QEMU) writing into log, in a process group of its own: stop it with
    stop_group. stdin_pipe: an open, silent stdin (OSv's run.py reads the console from stdio)."""
    return subprocess.Popen([str(a) for a in argv], stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_group_only(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the group, without waiting (from a watchdog thread, while another waits)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """The whole group: a wrapper script's children would otherwise outlive it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done (cleaning up, swapping an install in), then act: a second
    Ctrl-C cannot leave a container or half a swap behind. Start no child inside: it would inherit the mask."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def stop_group(proc: subprocess.Popen[Any] | None, grace: float = 5.0) -> None:
    """Stop a child started with start_new_session=True and everything it started: TERM, then KILL."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class RunningGroups:
    """The process groups of a build's running steps, one file each, so that the next build can stop what a
    build killed with SIGKILL left running (its steps run in sessions of their own and would go on)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def remember(self, pgid: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / str(pgid)).write_text(_start_time(pgid) or "")

    def forget(self, pgid: int) -> None:
        (self.directory / str(pgid)).unlink(missing_ok=True)

    def stop_orphans(self) -> list[int]:
        """Kill every group recorded here; call it only where no other build can be using the directory (under
        the build lock). A recorded leader whose start time differs is a reused pid, and is left alone."""
        stopped = []
        for record in sorted(self.directory.glob("[0-9]*")) if self.directory.is_dir() else []:
            pgid = int(record.name)
            started = _start_time(pgid)
            if started is None or started == record.read_text():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                    stopped.append(pgid)
                _wait_group_gone(pgid)
            record.unlink(missing_ok=True)
        return stopped


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat); None: no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _wait_group_gone(pgid: int, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
