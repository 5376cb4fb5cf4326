"""Where a build's time went: the end-of-build lines from a recorded manifest's timings and ccache counts
(golden), the trace of ninja's log, and the live bar's label, estimate and finished line on a terminal."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from qemuprov.commands import timereport
from qemuprov.infra.progress import Reporter
from qemuprov.records.manifest import CcacheStats

# As qemuprov.json recorded them for the DAX fork's x86_64 build here (346 s on a busy machine).
TIMINGS = {"resolve": 0.41, "fetch": 6.2, "builder": 1.3, "configure": 31.8, "build": 296.5, "install": 4.1,
           "finish": 0.3, "probe": 1.9, "commit": 0.2, "total": 346.0}
GOLDEN = [
    "time: build 4.9 min (86%), configure 32 s (9%), fetch 6.2 s (2%), install 4.1 s (1%), probe 1.9 s, "
    "builder 1.3 s, resolve 0.4 s, finish 0.3 s, commit 0.2 s; 5.8 min in all",
    "      [███████████████████████████████████████████▓▓▓▓▓▒░]  █ build  ▓ configure  ▒ fetch  ░ install",
    "ccache: 1410 of 1486 compiles were hits (95%): 30 local, 1380 from the shared ccache",
]


def test_the_end_of_a_build_says_where_its_time_went() -> None:
    lines = timereport.lines(TIMINGS, CcacheStats(1410, 76, 0.95, 1380))
    assert lines == GOLDEN, "\n".join(lines)
    assert timereport.lines({"total": 0.5}, None) == ["time: 0.5 s in all"]
    data = timereport.as_json(TIMINGS, CcacheStats(1410, 76, 0.95, 1380))
    assert data["phases"][0] == {"name": "build", "seconds": 296.5, "share": 0.8569}
    assert data["ccache"] == {"hits": 1410, "misses": 76, "remote_hits": 1380}


def test_ninja_log_becomes_a_trace_on_as_many_lanes_as_ran_at_once(tmp_path: Path) -> None:
    log = tmp_path / ".ninja_log"
    log.write_text("# ninja log v5\n0\t1000\t1\ta.o\th1\n0\t400\t1\tb.o\th2\n450\t900\t1\tc.o\th3\n"
                   "1000\t1200\t1\tqemu-system-x86_64\th4\nbroken line\n500\t700\t1\ta.o\th5\n")
    trace = timereport.ninja_trace(log)
    events = {e["name"]: e for e in trace["traceEvents"]}
    assert set(events) == {"a.o", "b.o", "c.o", "qemu-system-x86_64"}
    assert events["a.o"]["ts"] == 500_000 and events["a.o"]["dur"] == 200_000  # the later build of a.o
    assert {e["tid"] for e in trace["traceEvents"]} == {0, 1} and all(e["ph"] == "X" for e in events.values())
    dest = tmp_path / "trace.json"
    assert timereport.write_trace(log, dest) == 4 and json.loads(dest.read_text())["traceEvents"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_bar_has_a_label_an_estimate_and_stays() -> None:
    screen = _Terminal()
    report = Reporter(screen)
    report.step("build", "2035 targets, -j2")
    for done in (1, 500, 1000, 2035):
        report.line(f"[{done}/2035] Compiling C object libqemu.a.p/x.c.o")
    report.finish_progress()
    shown = screen.getvalue()
    assert "==> build: 2035 targets" in shown and "2035/2035" in shown and "eta" in shown
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", shown)
    last = [ln for ln in plain.replace("\r", "\n").splitlines() if "2035/2035" in ln][-1]
    assert last.strip().startswith("build"), last  # the finished line stays, with its label
