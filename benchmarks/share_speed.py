#!/usr/bin/env python3
"""How fast the share is, and what the settings do, measured by `qemuprov bench` on Debian's QEMU 7.2 (its C
virtiofsd) and on any build given (a DAX build of the virtio-fs-dev branch, or the suite's), per arch, in one
run; and the published figures of the same comparisons beside them.

Published (the same workload shapes; their figures are absolute, ours are read as ratios within one run):
  OSv virtio-fs thesis (Xenakis 2020, fio 3.23, one job, cache=none, one thread, 4 GiB window):
    DAX over plain virtio-fs, sequential read  6.1x (OSv 217 -> 1333 MB/s), 6.6x (Linux 166 -> 1100)
    DAX over plain virtio-fs, random read      5.7x
  Goyal's virtiofs-tests (2020-03, 4 KiB blocks, psync):
    DAX over plain virtio-fs, sequential read  18.4x (35 -> 643 MiB/s)
    a DAX window smaller than the data, random read  0.10x of no DAX (28.7 against 285 MB/s)

Usage: benchmarks/share_speed.py [BUILD …] [--arch A,B] [--json FILE]
  BUILD: an install name or prefix (`qemuprov list`); Debian's /usr/bin QEMU is always measured too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import results_file
from build_speed import REPO

DEBIAN_QEMU = {"x86_64": Path("/usr/bin/qemu-system-x86_64"), "aarch64": Path("/usr/bin/qemu-system-aarch64")}
DEBIAN_VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")
PUBLISHED = {
    "dax_seqread": "6.1x OSv, 6.6x Linux (thesis); 18.4x (Goyal)",
    "dax_randread": "5.7x (thesis)",
    "small_window_randread": "0.10x (Goyal: 1 GiB window)",
    "cache_none_seqread": "-",
    "one_thread_randread": "no pool beat 64 threads on most workloads (Goyal)",
    "virtiofs_over_9p_seqread": "-",
}


def bench(*target: str, arch: str) -> tuple[dict[str, Any], float]:
    """One `qemuprov bench` of one arch: its report, and how long the whole command took."""
    command = [sys.executable, "-m", "qemuprov", "bench", *target, "--arch", arch, "--json"]
    print("$ " + " ".join(command), flush=True)
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1) or not done.stdout.strip().startswith("["):
        raise SystemExit(f"bench failed ({done.returncode}): {done.stderr[-2000:]}")
    (report,) = json.loads(done.stdout)
    return report, round(time.monotonic() - started, 1)


def median(report: dict[str, Any], setting: str, measure: str) -> float | None:
    row = next((s for s in report["settings"] if s["name"] == setting and s["ok"]), None)
    return row["results"][measure]["median"] if row and measure in row["results"] else None


def ratio(report: dict[str, Any], setting: str, measure: str, base: str = "virtio-fs") -> float | None:
    """setting's median over base's, measured in the same boot."""
    over, under = median(report, setting, measure), median(report, base, measure)
    return round(over / under, 2) if over and under else None


def comparisons(report: dict[str, Any]) -> dict[str, float | None]:
    windows = sorted((s for s in report["settings"] if s["window"] and s["ok"]), key=lambda s: s["window"])
    biggest = windows[-1]["name"] if windows else ""
    smallest = windows[0]["name"] if len(windows) > 1 else ""
    return {"dax_seqread": ratio(report, biggest, "seqread") if biggest else None,
            "dax_randread": ratio(report, biggest, "randread") if biggest else None,
            "small_window_randread": ratio(report, smallest, "randread") if smallest else None,
            "cache_none_seqread": next((ratio(report, n, "seqread") for n in ("cache=none", "cache=never")
                                        if ratio(report, n, "seqread")), None),
            "one_thread_randread": ratio(report, "1 thread", "randread"),
            "virtiofs_over_9p_seqread": ratio(report, "virtio-fs", "seqread", base="9p")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", nargs="*", metavar="BUILD")
    parser.add_argument("--arch", default="x86_64,aarch64")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "share_speed.json")
    args = parser.parse_args()
    runs: dict[str, dict[str, Any]] = {}
    for arch in args.arch.split(","):
        targets = [("debian-7.2", ["--qemu", str(DEBIAN_QEMU[arch]), "--virtiofsd", str(DEBIAN_VIRTIOFSD)])]
        targets += [(Path(build).name, [build]) for build in args.builds]
        for name, target in targets:
            report, seconds = bench(*target, arch=arch)
            runs[f"{name} {arch}"] = {"accel": report["accel"], "seconds": seconds, "reading": report["reading"],
                                      "work": report["work"], "comparisons": comparisons(report),
                                      "settings": report["settings"]}
    width = max(len(name) for name in runs) + 2
    print(f"\n{'comparison':<28}" + "".join(f"{run:>{width}}" for run in runs) + "  published")
    for key in PUBLISHED:
        cells = "".join(f"{_cell(run['comparisons'][key]):>{width}}" for run in runs.values())
        print(f"{key:<28}{cells}  {PUBLISHED[key]}")
    print(f"{'seconds (the whole bench)':<28}" + "".join(f"{run['seconds']:>{width}}" for run in runs.values()))
    for name, run in runs.items():
        print(f"{name} ({run['accel']}): {run['reading']}")
    results_file.write(args.json, {"runs": {n: {k: v for k, v in r.items() if k != "settings"} | {
        "medians": {s["name"]: {m: x["median"] for m, x in s["results"].items()} for s in r["settings"]}}
        for n, r in runs.items()}, "published": PUBLISHED})


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


if __name__ == "__main__":
    main()
