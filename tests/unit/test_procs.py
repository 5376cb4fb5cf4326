"""procs.stream, the one way a long child runs: its lines as they come, and a Ctrl-C that stops its whole group."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from qemuprov.infra import procs


def test_lines_come_split_on_newlines_and_carriage_returns_with_stderr_merged() -> None:
    seen: list[str] = []
    # \r\n split across two writes must not make an empty line; a bare \r ends one (git's progress)
    script = "printf 'a\\r'; sleep 0.2; printf '\\nb 10%%\\rb 100%%\\n'; echo err >&2; printf tail"
    status = procs.stream(["sh", "-c", script], on_line=seen.append)
    assert status == 0
    assert seen == ["a", "b 10%", "b 100%", "err", "tail"]


def test_an_endless_line_comes_in_pieces() -> None:
    seen: list[str] = []
    procs.stream(["sh", "-c", f"head -c {procs.MAX_LINE * 2 + 5} /dev/zero | tr '\\0' x"], on_line=seen.append)
    assert [len(line) for line in seen] == [procs.MAX_LINE, procs.MAX_LINE, 5]


def test_the_exit_status_is_the_childs() -> None:
    assert procs.stream(["sh", "-c", "exit 3"], on_line=lambda _: None) == 3


def test_a_failure_in_the_reader_stops_the_child_and_what_it_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild"
    script = f"sleep 300 & echo $! > {pid_file}; echo started; wait"

    def stop(line: str) -> None:
        if line == "started":
            raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        procs.stream(["sh", "-c", script], on_line=stop, grace=2.0)
    assert time.monotonic() - started < 30
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the sleep the child started outlived the interrupted stream"


def test_a_ctrl_c_while_waiting_for_output_stops_the_group(tmp_path: Path) -> None:
    groups = procs.RunningGroups(tmp_path / "running")
    remembered: list[str] = []
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, []), "an earlier test left Ctrl-C blocked"
    main = threading.main_thread().ident
    assert main is not None

    def ctrl_c_once_it_runs() -> None:
        # Once the group is remembered (a big process, late in the suite, has taken over 0.5 s to start the
        # child), and to the main thread, where Ctrl-C interrupts the read.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (groups.directory.is_dir() and os.listdir(groups.directory)):
            time.sleep(0.05)
        remembered.extend(os.listdir(groups.directory) if groups.directory.is_dir() else [])
        signal.pthread_kill(main, signal.SIGINT)

    timer = threading.Thread(target=ctrl_c_once_it_runs)
    # As qemuprov's main installs it: a suite started in the background (nohup, a CI wrapper) inherits SIGINT
    # ignored, and Python then leaves it ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            procs.stream(["sleep", "300"], on_line=lambda _: None, groups=groups, grace=2.0)
        timer.join()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(remembered) == 1, "the running group was not remembered"
    assert list(groups.directory.iterdir()) == [], "the group was not forgotten after it was stopped"
    assert not _alive(int(remembered[0]))


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
