"""Timing of named phases, rounded to the centisecond, in one dict that goes into qemuprov.json."""

from __future__ import annotations

import time


class Laps:
    """Each lap's time since the last one (or since the start), under the lap's name."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.timings[name], self._clock = round(now - self._clock, 2), now
