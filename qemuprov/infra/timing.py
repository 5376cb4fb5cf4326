"""The one way qemuprov times its work: named phases (or laps) and the total, rounded to the centisecond, in one
dict that goes into qemuprov.json."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._started = self._lap = time.monotonic()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block under name (a phase that runs twice keeps its last time)."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(time.monotonic() - start, 2)

    def lap(self, name: str) -> None:
        """The time since the last lap (or the start), under name."""
        now = time.monotonic()
        self.timings[name], self._lap = round(now - self._lap, 2), now

    def total(self) -> dict[str, float]:
        """Every phase so far and the total since the start; the same dict, kept up to date."""
        self.timings["total"] = round(time.monotonic() - self._started, 2)
        return self.timings
