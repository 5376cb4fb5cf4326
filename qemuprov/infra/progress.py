"""The one reporter of long work: step headers, and progress read from what the tools print (ninja's [N/M],
`docker build`'s Step N/M, git's (N/M), cargo's Compiling lines against the crates it will build) or counted by
qemuprov itself (bytes downloaded). A live bar on a terminal; in CI, a line every ten percent."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from typing import Any

LineCallback = Callable[[str], None]

# Each: a pattern over one line of a tool's output, and the groups that hold (done, total).
COUNTERS = (
    (re.compile(r"^\[(\d+)/(\d+)\]"), 1, 2),  # ninja
    (re.compile(r"^Step (\d+)/(\d+) :"), 1, 2),  # docker build (the classic builder, which the SDK drives)
    (re.compile(r"^(?:Receiving|Resolving|Counting|Compressing) \w+:\s+\d+% \((\d+)/(\d+)\)"), 1, 2),  # git
)
CARGO_CRATE = re.compile(r"^\s+Compiling \S+ v")


class Reporter:
    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._bar: Any = None
        self._task: Any = None
        self._last_decile = -1
        self._crates: tuple[int, int] | None = None  # (compiled so far, to compile) during a cargo build
        self._started = time.monotonic()
        self._label = ""

    def step(self, name: str, detail: str = "") -> None:
        self.finish_progress()
        self._label = name
        print(f"==> {name}{': ' + detail if detail else ''}", file=self.stream, flush=True)

    def expect_crates(self, total: int) -> None:
        """The next lines come from cargo, which will compile about `total` crates."""
        self._crates = (0, max(total, 1))

    def line(self, text: str) -> None:
        """A line of a tool's output (git's progress comes with carriage returns: each part is a line)."""
        for part in text.replace("\r", "\n").splitlines():
            self._count(part)

    def _count(self, text: str) -> None:
        for pattern, done, total in COUNTERS:
            match = pattern.match(text)
            if match:
                self.progress(int(match.group(done)), int(match.group(total)))
                return
        if self._crates is not None and CARGO_CRATE.match(text):
            done, total = self._crates[0] + 1, max(self._crates[1], self._crates[0] + 1)
            self._crates = (done, total)
            self.progress(done, total)

    def progress(self, done: int, total: int, unit: str = "") -> None:
        """done of total (steps, or bytes when unit is "MB")."""
        if total <= 0:
            return
        if self.tty:
            self._show_bar(done, total, unit)
            return
        decile = min(done * 10 // total, 10)
        if decile != self._last_decile:
            self._last_decile = decile
            print(f"    {self._amount(done, total, unit)} ({decile * 10}%)", file=self.stream, flush=True)

    def _amount(self, done: int, total: int, unit: str) -> str:
        if unit != "MB":
            return f"{done}/{total}"
        rate = done / max(time.monotonic() - self._started, 1e-3) / 1e6
        return f"{done / 1e6:.1f}/{total / 1e6:.1f} MB, {rate:.1f} MB/s"

    def _show_bar(self, done: int, total: int, unit: str) -> None:
        if self._bar is None:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            columns = (DownloadColumn(), TransferSpeedColumn()) if unit == "MB" else (MofNCompleteColumn(),)
            # labelled with its step, an estimate of the time left, and left on screen as a finished line
            self._bar = Progress(TextColumn(f"    {self._label[:20]:<10}"), BarColumn(), *columns,
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 transient=False, console=_console(self.stream))
            self._bar.start()
            self._task = self._bar.add_task("work", total=total)
        self._bar.update(self._task, completed=done, total=total)

    def finish_progress(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        self._last_decile = -1
        self._crates = None
        self._started = time.monotonic()


def notice(text: str) -> None:
    """A line a user should read but need not act on: something was skipped, or done another way."""
    print(f"qemuprov: note: {text}", file=sys.stderr)


def _console(stream: Any) -> Any:
    import os

    from rich.console import Console

    return Console(file=stream, no_color=bool(os.environ.get("NO_COLOR")))
