"""Where a build's time went, for the user who waited: each phase's time and share as a bar, and ccache's hit rate
(local and shared), from what qemuprov.json records; `--trace FILE` writes the compile units' times from ninja's
own log as a trace Chrome's and Perfetto's viewers open."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from qemuprov.records.manifest import CcacheStats

BAR = 50
SHADES = "█▓▒░#=+:"  # one per phase, largest first, so a plain terminal tells them apart
NINJA_LOG_CAP = 64 << 20


def phases(timings: dict[str, float]) -> list[tuple[str, float]]:
    """The phases with their seconds, largest first (total left out)."""
    return sorted(((name, seconds) for name, seconds in timings.items() if name != "total"),
                  key=lambda item: -item[1])


def lines(timings: dict[str, float], ccache: CcacheStats | None) -> list[str]:
    total = timings.get("total") or sum(s for _, s in phases(timings)) or 1.0
    shown = [(name, seconds) for name, seconds in phases(timings) if seconds >= 0.05]
    said = ", ".join(f"{name} {_seconds(seconds)}" + (f" ({seconds / total:.0%})" if seconds / total >= 0.01
                                                      else "") for name, seconds in shown)
    out = [f"time: {said}; {_seconds(total)} in all" if said else f"time: {_seconds(total)} in all"]
    bar, legend = "", []
    for (name, seconds), shade in zip(shown, SHADES, strict=False):
        cells = round(seconds / total * BAR)
        if cells:
            bar += shade * cells
            legend.append(f"{shade} {name}")
    if bar:
        out.append(f"      [{bar[:BAR].ljust(BAR)}]  " + "  ".join(legend))
    if ccache is not None and ccache.hits + ccache.misses:
        calls = ccache.hits + ccache.misses
        local = ccache.hits - ccache.remote_hits
        out.append(f"ccache: {ccache.hits} of {calls} compiles were hits ({ccache.hits / calls:.0%}): {local} "
                   f"local, {ccache.remote_hits} from the shared ccache")
    return out


def _seconds(value: float) -> str:
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def as_json(timings: dict[str, float], ccache: CcacheStats | None) -> dict[str, Any]:
    total = timings.get("total") or 1.0
    return {"phases": [{"name": n, "seconds": s, "share": round(s / total, 4)} for n, s in phases(timings)],
            "total": timings.get("total"),
            "ccache": None if ccache is None else {"hits": ccache.hits, "misses": ccache.misses,
                                                   "remote_hits": ccache.remote_hits}}


def ninja_trace(ninja_log: Path) -> dict[str, Any]:
    """ninja's .ninja_log (v5: start ms, end ms, mtime, output, hash per line) as Chrome's trace event format:
    one complete event per output, laid on as many lanes as ran at once."""
    with ninja_log.open("rb") as handle:  # its last NINJA_LOG_CAP bytes: a long-lived build tree's log only grows
        handle.seek(max(0, os.fstat(handle.fileno()).st_size - NINJA_LOG_CAP))
        text = handle.read(NINJA_LOG_CAP).decode(errors="replace")
    entries: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) >= 4 and fields[0].isdigit() and fields[1].isdigit():
            entries[fields[3]] = (int(fields[0]), int(fields[1]))  # a later build of the same output wins
    lanes: list[int] = []  # when each lane is free again
    events = []
    for output, (start, end) in sorted(entries.items(), key=lambda item: item[1]):
        lane = next((i for i, free in enumerate(lanes) if free <= start), len(lanes))
        if lane == len(lanes):
            lanes.append(end)
        lanes[lane] = end
        events.append({"name": output, "cat": "ninja", "ph": "X", "ts": start * 1000, "dur": (end - start) * 1000,
                       "pid": 1, "tid": lane})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_trace(ninja_log: Path, dest: Path) -> int:
    trace = ninja_trace(ninja_log)
    dest.write_text(json.dumps(trace))
    return len(trace["traceEvents"])
